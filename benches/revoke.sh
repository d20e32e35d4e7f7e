#!/usr/bin/env bash
# InactivateDeviceCertificate among many sessions, against one certmq
# binary: ROUNDS times a fresh broker (development PKI, loopback ports it
# picks itself), OTHERS other sessions each subscribed to its own filter,
# then COUNT devices connected and inactivated one at a time (certmq-load
# `revoke`: call to answer, call to the socket closed). One JSON line per
# round. Run two binaries alternately to compare them:
#
#   cargo build --release --bins
#   for _ in 1 2 3; do
#       ROUNDS=1 benches/revoke.sh /tmp/certmq-before before
#       ROUNDS=1 benches/revoke.sh /tmp/certmq-after after
#   done > revoke.jsonl
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
. "$root/benches/fresh-broker.sh"
bin=$(realpath "$1"); label=$2
load=$(realpath "${LOAD:-${CARGO_TARGET_DIR:-$root/target}/release/certmq-load}")
rounds=${ROUNDS:-3}; others=${OTHERS:-10000}; count=${COUNT:-200}
work=$(mktemp -d /tmp/certmq-revoke.XXXXXX)
trap 'kill "${pid:-}" 2>/dev/null || true; rm -rf "$work"' EXIT
cd "$work"
"$root/benches/load-policies.sh" >certmq.toml
for _ in $(seq "$rounds"); do
    fresh_broker "$bin"
    for _ in $(seq 200); do [ -f data/admin-access-key.json ] && break; sleep 0.05; done
    admin=$(python3 -c "import json;print(json.load(open('data/listen.json'))['admin'])")
    CERTMQ_ACCESS_KEY_ID=$(sed -n 's/.*"id": "\(.*\)".*/\1/p' data/admin-access-key.json)
    CERTMQ_ACCESS_KEY_SECRET=$(sed -n 's/.*"secret": "\(.*\)".*/\1/p' data/admin-access-key.json)
    export CERTMQ_ACCESS_KEY_ID CERTMQ_ACCESS_KEY_SECRET
    L --spread revoke --admin "$admin" --others "$others" --count "$count" --subscribe
    stop_broker
done
