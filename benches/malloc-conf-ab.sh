#!/usr/bin/env bash
# One release binary, two jemalloc settings, alternating (ROUNDS times):
# connects (10,000 at concurrency 32), QoS 0 and QoS 1 publish (4 -> 1,
# 100,000 messages) and fan-in QoS 1 (1,000 -> 1, 200,000 messages), a
# fresh broker each time. The second setting is given through
# _RJEM_MALLOC_CONF, which overrides what src/main.rs compiles in.
#
#   cargo build --release --bins
#   benches/malloc-conf-ab.sh background_thread:false > ab.jsonl
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
other=$1
target_dir=${CARGO_TARGET_DIR:-$root/target}
bin=$target_dir/release/certmq
load=$target_dir/release/certmq-load
rounds=${ROUNDS:-2}
one() { # label, then the environment for the broker
    local label=$1; shift
    local work
    work=$(mktemp -d /tmp/certmq-malloc-ab.XXXXXX)
    cd "$work"
    "$root/benches/load-policies.sh" >certmq.toml
    env "$@" CERTMQ__MQTT__LISTEN=127.0.0.1:0 CERTMQ__ADMIN__LISTEN=127.0.0.1:0 \
        CERTMQ__MQTT__CONNECTIONS_PER_SECOND_PER_IP=0 CERTMQ__MQTT__MAX_CONNECTIONS=25000 \
        CERTMQ__LOG__LEVEL=warn "$bin" serve --config certmq.toml >out 2>err &
    local pid=$!
    for _ in $(seq 200); do [ -f data/listen.json ] && break; sleep 0.05; done
    local port
    port=$(python3 -c "import json;print(json.load(open('data/listen.json'))['mqtt'].rsplit(':',1)[1])")
    L() {
        "$load" --target "127.0.0.1:$port" --server-ca certs/dev/ca.pem --device-ca-cert certs/dev/ca.pem \
            --device-ca-key certs/dev/ca.key --devices-dir "$work/devs" --threads 1 --quiet \
            --broker-pid "$pid" --label "$label" "$@"
    }
    L connect --count 400 --concurrency 32 >/dev/null
    L connect --count 10000 --concurrency 32
    L publish --qos 0 --messages 100000 --publishers 4
    L publish --qos 1 --messages 100000 --publishers 4
    L fan-in --qos 1 --messages 200000 --publishers 1000
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    cd /
    rm -rf "$work"
}
for _ in $(seq "$rounds"); do
    one compiled-in CERTMQ_MALLOC_AB=1
    one "$other" "_RJEM_MALLOC_CONF=$other"
done
