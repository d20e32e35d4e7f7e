#!/usr/bin/env bash
# A reconnect burst, as after an outage, against one certmq binary: ROUNDS
# times a fresh broker (development PKI, loopback ports it picks itself),
# 400 connects that register the pool's 200 devices, then COUNT connects
# with CONCURRENCY in flight at once. One JSON line per round: certmq-load's
# connect result plus `listen_overflows`, the kernel's TcpExtListenOverflows
# during the burst (nstat, from iproute2): a SYN the accept queue has no
# room for is dropped, and the client retries it a second later.
#
#   cargo build --release --bins
#   ROUNDS=4 benches/burst.sh "$CARGO_TARGET_DIR"/release/certmq label > burst.jsonl
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
. "$root/benches/fresh-broker.sh"
bin=$(realpath "$1"); label=$2
load=$(realpath "${LOAD:-${CARGO_TARGET_DIR:-$root/target}/release/certmq-load}")
rounds=${ROUNDS:-4}; count=${COUNT:-5000}; concurrency=${CONCURRENCY:-1000}
command -v nstat >/dev/null || { echo "burst.sh needs nstat (Debian: iproute2)" >&2; exit 1; }
work=$(mktemp -d /tmp/certmq-burst.XXXXXX)
trap 'rm -rf "$work"' EXIT
cd "$work"
"$root/benches/load-policies.sh" >certmq.toml
for _ in $(seq "$rounds"); do
    fresh_broker "$bin"
    L connect --count 400 --concurrency 32 >/dev/null
    nstat -n >/dev/null
    L connect --count "$count" --concurrency "$concurrency" >result.json
    overflows=$(nstat -z TcpExtListenOverflows 2>/dev/null | awk '/TcpExtListenOverflows/ {print $2}')
    stop_broker
    python3 -c "import json,sys; d=json.load(open('result.json')); d['listen_overflows']=int('${overflows:-0}'); print(json.dumps(d))"
done
