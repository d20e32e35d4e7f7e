#!/usr/bin/env bash
# Publish throughput with topic authorization on the embedded default
# policies (each publisher in its own namespace, the subscriber with the
# fleet application's policy) against every topic allowed by one rule, in
# the same run, alternating: QoS 0, 4 publishers -> 1 subscriber, 100,000
# messages of 64 bytes, 3 runs of each. JSON lines on stdout.
#
#   cargo build --release --bins
#   benches/authz-throughput.sh > authz.jsonl
#
# Brokers listen on 127.0.0.1:18883 / 18080 (loopback only).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(realpath target/release/certmq 2>/dev/null || realpath "${CARGO_TARGET_DIR:-target}/release/certmq")
load=$(realpath "${LOAD:-${CARGO_TARGET_DIR:-target}/release/certmq-load}")
work=$(mktemp -d /tmp/certmq-authz-bench.XXXXXX)
cat >"$work/default.toml" <<'TOML'
[[authz.attach]]
policies = ["fleet-application"]
common_name = "load-000000"
TOML
cat >"$work/allow-all.toml" <<'TOML'
[authz]
default_policies = ["allow-all"]
dev_pki_app_policies = []
[[authz.policies]]
name = "allow-all"
rules = [{ effect = "allow", actions = ["publish", "subscribe"], topics = ["#"] }]
TOML
run() {
    local label=$1 config=$2
    (
        cd "$work"
        CERTMQ__MQTT__LISTEN=127.0.0.1:18883 CERTMQ__ADMIN__LISTEN=127.0.0.1:18080 \
        CERTMQ__MQTT__CONNECTIONS_PER_SECOND_PER_IP=0 CERTMQ__LOG__LEVEL=warn \
        "$bin" serve --config "$config" >out 2>err &
        pid=$!
        trap 'kill $pid 2>/dev/null || true' EXIT
        for _ in $(seq 100); do [ -f data/listen.json ] && break; sleep 0.1; done
        "$load" --target 127.0.0.1:18883 --server-ca certs/dev/ca.pem --device-ca-cert certs/dev/ca.pem \
            --device-ca-key certs/dev/ca.key --devices-dir "$work/devs" --quiet --label "$label" --broker-pid $pid \
            publish --qos 0 --messages 100000 --publishers 4
        kill $pid; wait $pid || true
    )
}
for _ in 1 2 3; do
    run default-policies "$work/default.toml"
    run allow-all "$work/allow-all.toml"
done
