#!/usr/bin/env bash
# Memory under device churn (issue 12): N distinct devices (distinct
# certificates and client ids) each connect once, subscribe to their own
# devices/<CN>/cmd and disconnect; the broker's RSS and VmData before and
# after, for clean sessions and for persistent ones after their expiry.
# A fresh broker (release build, embedded defaults, development PKI) for
# each run. JSON lines on stdout.
#
#   cargo build --release --bins
#   benches/churn.sh > churn.jsonl            # N=20000
#   N=2000 benches/churn.sh                   # a smoke run
#   EXPIRY=1 benches/churn.sh                 # persistent sessions expiring after 1 s
#   ONLY=persistent benches/churn.sh          # the persistent run only
#
# Loopback only; the broker listens on ports it picks (listen.json).
set -euo pipefail
cd "$(dirname "$0")/.."
n=${N:-20000}
bin=$(realpath "${CARGO_TARGET_DIR:-target}/release/certmq")
load=$(realpath "${CARGO_TARGET_DIR:-target}/release/certmq-load")
work=$(mktemp -d /tmp/certmq-churn.XXXXXX)
devices="$work/devices"
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null || true; }
trap cleanup EXIT

run() { # label, mqtt level, expiry secs, settle secs
    local dir="$work/$1"
    mkdir -p "$dir"
    # The development PKI is made once and shared (the device pool is
    # issued by its CA).
    if [ -d "$work/pki" ]; then mkdir -p "$dir/certs" && cp -r "$work/pki" "$dir/certs/dev"; fi
    (
        cd "$dir"
        CERTMQ__MQTT__LISTEN=127.0.0.1:0 CERTMQ__ADMIN__LISTEN=127.0.0.1:0 \
        CERTMQ__MQTT__CONNECTIONS_PER_SECOND_PER_IP=0 CERTMQ__LOG__LEVEL=warn \
        exec "$bin" serve >"$dir/out" 2>"$dir/err"
    ) &
    pid=$!
    for _ in $(seq 200); do [ -f "$dir/data/listen.json" ] && break; sleep 0.05; done
    [ -d "$work/pki" ] || cp -r "$dir/certs/dev" "$work/pki"
    local port
    port=$(python3 -c "import json;print(json.load(open('$dir/data/listen.json'))['mqtt'].rsplit(':',1)[1])")
    "$load" --target "127.0.0.1:$port" --server-ca "$dir/certs/dev/ca.pem" \
        --device-ca-cert "$dir/certs/dev/ca.pem" --device-ca-key "$dir/certs/dev/ca.key" \
        --devices-dir "$devices" --pool "$n" --mqtt "$2" --broker-pid "$pid" --label "$1" \
        --quiet --threads 1 churn --concurrency 32 --expiry-secs "$3" --settle-secs "$4" \
        --warm-up "${WARM_UP:-1000}"
    kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""
}

# Once, to issue the device certificates (not measured).
# Settled 15 s after the last device left: well past the allocator's decay
# time for freed pages (1 s, src/main.rs).
settle=${SETTLE:-15}
run warm-up 4 0 0 >/dev/null
if [ "${ONLY:-}" != persistent ]; then
    run clean-3.1.1 4 0 "$settle"
    run clean-5 5 0 "$settle"
fi
expiry=${EXPIRY:-5}
run "persistent-5-expired-after-${expiry}s" 5 "$expiry" "$settle"
