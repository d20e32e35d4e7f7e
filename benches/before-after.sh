#!/usr/bin/env bash
# One certmq binary under the loads of the message and connect paths, for
# before/after comparisons of a change (two binaries, same machine, same
# load generator, one after the other). JSON lines on stdout.
#
#   cargo build --release --bins
#   benches/before-after.sh /path/to/certmq-before before > before.jsonl
#   benches/before-after.sh "$CARGO_TARGET_DIR"/release/certmq after > after.jsonl
#   QUICK=1 benches/before-after.sh ...      # smaller counts, a smoke run
#
# The loads: QoS 0 and QoS 1 throughput, 4 publishers -> 1 subscriber (3
# runs each); fan-in (1,000 publishers -> 1 subscriber) and fan-out (1
# publisher -> 1,000 subscribers of one topic), QoS 0 and 1; connects at
# concurrency 32 with the broker's CPU per connect (2 runs), and a burst at
# concurrency 1,000; revocation
# with 10,000 other sessions, each subscribed to its own filter; the mass
# drop of 10,000 sessions under one CA; and first, memory per idle
# connection.
#
# The broker starts in a temporary directory on its development PKI, on
# loopback ports it picks itself (data/listen.json), with the policies the
# loads need (written below), and stops at the end. Uses the
# certmq-load next to this checkout's release build unless LOAD is set.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=$(realpath "$1"); label=$2
load=$(realpath "${LOAD:-${CARGO_TARGET_DIR:-$root/target}/release/certmq-load}")
work=$(mktemp -d /tmp/certmq-before-after.XXXXXX)
cd "$work"
"$root/benches/load-policies.sh" >certmq.toml
CERTMQ__MQTT__LISTEN=127.0.0.1:0 CERTMQ__ADMIN__LISTEN=127.0.0.1:0 \
CERTMQ__MQTT__CONNECTIONS_PER_SECOND_PER_IP=0 CERTMQ__MQTT__MAX_CONNECTIONS=25000 \
CERTMQ__LOG__LEVEL=warn "$bin" serve --config certmq.toml >out 2>err &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
for _ in $(seq 200); do [ -f data/listen.json ] && [ -f data/admin-access-key.json ] && break; sleep 0.05; done
listen() { python3 -c "import json;print(json.load(open('data/listen.json'))['$1'])"; }
mqtt=$(listen mqtt); admin=$(listen admin)
export CERTMQ_ACCESS_KEY_ID CERTMQ_ACCESS_KEY_SECRET
CERTMQ_ACCESS_KEY_ID=$(sed -n 's/.*"id": "\(.*\)".*/\1/p' data/admin-access-key.json)
CERTMQ_ACCESS_KEY_SECRET=$(sed -n 's/.*"secret": "\(.*\)".*/\1/p' data/admin-access-key.json)

if [ -n "${QUICK:-}" ]; then
    n_msgs=20000; n_fan=200; n_conn=1000; n_others=1000; n_revoke=50; n_mass=1000; n_hold=1000
else
    n_msgs=100000; n_fan=1000; n_conn=5000; n_others=10000; n_revoke=200; n_mass=10000; n_hold=5000
fi
L() {
    "$load" --target "$mqtt" --server-ca certs/dev/ca.pem --device-ca-cert certs/dev/ca.pem \
        --device-ca-key certs/dev/ca.key --devices-dir "$work/devs" --quiet --label "$label" \
        --broker-pid "$pid" "$@"
}
# Warm-up: the first connection of each device registers it.
L --pool $((n_fan + 1)) connect --count $((n_fan + 1)) --concurrency 32 >/dev/null
# Memory first, before other loads have grown the broker's heap.
L --spread hold --count $n_hold --concurrency 64
for _ in 1 2 3; do
    L publish --qos 0 --messages $n_msgs --publishers 4
    L publish --qos 1 --messages $n_msgs --publishers 4
done
for qos in 0 1; do
    L fan-in --qos $qos --messages $((n_msgs * 2)) --publishers $n_fan
    L fan-out --qos $qos --messages 1000 --subscribers $n_fan
done
for _ in 1 2; do
    L connect --count $n_conn --concurrency 32
done
# A reconnect burst: 1,000 connects in flight at once, more than a small
# accept queue holds (a dropped SYN is retried after a second: p99 ~1 s).
L connect --count $n_conn --concurrency 1000
L --spread revoke --admin "$admin" --others $n_others --count $n_revoke --subscribe
L --spread mass-drop --admin "$admin" --count $n_mass
