#!/usr/bin/env bash
# What ending sessions at certificate expiry costs (issue 14 point 3): the
# broker's RSS with 10,000 idle mTLS sessions (`hold`) and its CPU per
# connect (`connect`, 10,000 handshakes at concurrency 32), for the release
# binary and, when BEFORE names one, for a binary without the feature, on
# the same machine, one after the other. A fresh broker per run (embedded
# defaults, one development PKI). JSON lines on stdout.
#
#   cargo build --release --bins
#   BEFORE=/path/to/older/certmq benches/expiry-cost.sh > expiry-cost.jsonl
set -euo pipefail
cd "$(dirname "$0")/.."
n=${N:-10000}
bin=$(realpath "${CARGO_TARGET_DIR:-target}/release/certmq")
load=$(realpath "${CARGO_TARGET_DIR:-target}/release/certmq-load")
work=$(mktemp -d /tmp/certmq-expiry.XXXXXX)
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

run() { # label, binary, mode args...
    local label=$1 binary=$2; shift 2
    local dir="$work/$label-$1"
    mkdir -p "$dir"
    if [ -d "$work/pki" ]; then mkdir -p "$dir/certs" && cp -r "$work/pki" "$dir/certs/dev"; fi
    (
        cd "$dir"
        CERTMQ__MQTT__LISTEN=127.0.0.1:0 CERTMQ__ADMIN__LISTEN=127.0.0.1:0 \
        CERTMQ__MQTT__CONNECTIONS_PER_SECOND_PER_IP=0 CERTMQ__LOG__LEVEL=warn \
        exec "$binary" serve >"$dir/out" 2>"$dir/err"
    ) &
    pid=$!
    for _ in $(seq 200); do [ -f "$dir/data/listen.json" ] && break; sleep 0.05; done
    [ -d "$work/pki" ] || cp -r "$dir/certs/dev" "$work/pki"
    local port
    port=$(python3 -c "import json;print(json.load(open('$dir/data/listen.json'))['mqtt'].rsplit(':',1)[1])")
    "$load" --target "127.0.0.1:$port" --server-ca "$dir/certs/dev/ca.pem" \
        --device-ca-cert "$dir/certs/dev/ca.pem" --device-ca-key "$dir/certs/dev/ca.key" \
        --devices-dir "$work/devices" --pool "$n" --broker-pid "$pid" --label "$label" \
        --quiet --threads 1 "$@"
    kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""
}

for round in 1 2; do
    for variant in after ${BEFORE:+before}; do
        binary=$bin
        [ "$variant" = before ] && binary=$BEFORE
        run "$variant" "$binary" hold --count "$n" --hold-secs 3 --after-close-secs 1
        run "$variant" "$binary" connect --count "$n" --concurrency 32
    done
done
