#!/usr/bin/env bash
# certmq beside Eclipse Mosquitto, from scratch, on this machine: builds
# certmq and its load generator, installs Mosquitto (Debian package) if
# missing, starts both brokers on free loopback ports with the same
# (development) PKI, runs the same load generator against each, stops them,
# and writes one JSON object per run to benches/results/side-by-side.jsonl.
#
#   benches/side-by-side.sh            # everything (about 5 minutes)
#   QUICK=1 benches/side-by-side.sh    # smaller counts, for a smoke run
#
# Mosquitto is configured as docs/BENCHMARKS.md says: require_certificate
# true, use_identity_as_username true, set_tcp_nodelay true, TLS 1.3.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

if ! command -v mosquitto >/dev/null 2>&1; then
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
    $sudo apt-get update
    $sudo apt-get install -y mosquitto
fi
cargo build --release --bin certmq --bin certmq-load
certmq="${CARGO_TARGET_DIR:-$root/target}/release/certmq"
load="${CARGO_TARGET_DIR:-$root/target}/release/certmq-load"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

work=$(mktemp -d /tmp/certmq-side-by-side.XXXXXX)
chmod 755 "$work"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

mqtt_port=$(free_port)
admin_port=$(free_port)
mosq_port=$(free_port)

# certmq on its embedded defaults (development PKI), tuned only for a load
# test from one address, with the policies the loads need
# (benches/load-policies.sh: the publish subscriber and the fan-out
# publisher, CN load-000000, get the fleet application's reach; every
# device may subscribe to the fan-out topic).
"$root/benches/load-policies.sh" >"$work/certmq.toml"
(
    cd "$work"
    CERTMQ__MQTT__LISTEN=127.0.0.1:$mqtt_port \
    CERTMQ__ADMIN__LISTEN=127.0.0.1:$admin_port \
    CERTMQ__MQTT__CONNECTIONS_PER_SECOND_PER_IP=0 \
    CERTMQ__MQTT__MAX_CONNECTIONS=25000 \
    CERTMQ__LOG__LEVEL=warn \
    exec "$certmq" serve --config certmq.toml >"$work/certmq.out" 2>"$work/certmq.err"
) &
certmq_pid=$!
pids+=("$certmq_pid")
for _ in $(seq 100); do [ -f "$work/data/admin-access-key.json" ] && break; sleep 0.1; done
sleep 0.5

# Mosquitto on the same PKI (copies it can read after dropping privileges).
mkdir -p "$work/mosquitto"
cp "$work/certs/dev/ca.pem" "$work/certs/dev/server.pem" "$work/certs/dev/server.key" "$work/mosquitto/"
chmod 0755 "$work/mosquitto"
chmod 0644 "$work/mosquitto/"*
cat >"$work/mosquitto/mosquitto.conf" <<EOF
per_listener_settings true
listener $mosq_port 127.0.0.1
cafile $work/mosquitto/ca.pem
certfile $work/mosquitto/server.pem
keyfile $work/mosquitto/server.key
require_certificate true
use_identity_as_username true
tls_version tlsv1.3
set_tcp_nodelay true
allow_anonymous true
EOF
mosquitto -c "$work/mosquitto/mosquitto.conf" >"$work/mosquitto.log" 2>&1 &
mosq_pid=$!
pids+=("$mosq_pid")
sleep 1

export CERTMQ_ACCESS_KEY_ID CERTMQ_ACCESS_KEY_SECRET
CERTMQ_ACCESS_KEY_ID=$(sed -n 's/.*"id": "\(.*\)".*/\1/p' "$work/data/admin-access-key.json")
CERTMQ_ACCESS_KEY_SECRET=$(sed -n 's/.*"secret": "\(.*\)".*/\1/p' "$work/data/admin-access-key.json")

if [ -n "${QUICK:-}" ]; then
    n_connect=1000; n_serial=200; n_hold=1000; n_msgs=20000; n_fan=200; n_others=1000; n_revoke=50; n_mass=1000; n_scale=2000
else
    n_connect=10000; n_serial=1000; n_hold=5000; n_msgs=100000; n_fan=1000; n_others=10000; n_revoke=200; n_mass=10000; n_scale=19000
fi

results="$root/benches/results"
mkdir -p "$results"
out="$results/side-by-side.jsonl"
: >"$out"
common=(--server-ca "$work/certs/dev/ca.pem" --device-ca-cert "$work/certs/dev/ca.pem"
    --device-ca-key "$work/certs/dev/ca.key" --devices-dir "$work/devices" --threads 1 --quiet)
run() {
    echo "== $*" >&2
    "$load" "${common[@]}" "$@" | tee -a "$out"
}

for broker in certmq mosquitto; do
    if [ "$broker" = certmq ]; then port=$mqtt_port; pid=$certmq_pid; else port=$mosq_port; pid=$mosq_pid; fi
    target=(--target 127.0.0.1:$port --broker-pid "$pid" --label "$broker")
    # Warm-up: the first connection of each device registers it (certmq).
    run "${target[@]}" connect --count 400 --concurrency 32 >/dev/null
    run "${target[@]}" connect --count $n_connect --concurrency 32
    run "${target[@]}" connect --count $n_serial --concurrency 1
    run "${target[@]}" --mqtt 5 connect --count $n_connect --concurrency 32
    run "${target[@]}" hold --count $n_hold --concurrency 64
    run "${target[@]}" publish --qos 0 --messages $n_msgs --publishers 4
    run "${target[@]}" publish --qos 1 --messages $n_msgs --publishers 4
    for qos in 0 1; do
        run "${target[@]}" fan-in --qos $qos --messages $((n_msgs * 2)) --publishers $n_fan
        run "${target[@]}" fan-out --qos $qos --messages 1000 --subscribers $n_fan
    done
done

# certmq only: revocation through the admin API, and scale.
target=(--target 127.0.0.1:$mqtt_port --broker-pid "$certmq_pid" --label certmq --spread)
# Revocation with every other session subscribed to its own filter (one
# device certificate per session).
run "${target[@]}" revoke --admin 127.0.0.1:$admin_port --others $n_others --count $n_revoke --subscribe
run "${target[@]}" mass-drop --admin 127.0.0.1:$admin_port --count $n_mass
# A legitimate device's connect latency among 1,000 connections that never
# start TLS and 200 stalled mid-handshake.
run "${target[@]}" connect --count 500 --concurrency 1 --stall-tcp 1000 --stall-handshake 200
run "${target[@]}" hold --count $n_scale --concurrency 64

echo "results: $out" >&2
