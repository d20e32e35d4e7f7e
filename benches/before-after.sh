#!/usr/bin/env bash
# One certmq binary under the same loads, for before/after comparisons of a
# change on the message and connect paths: QoS 0 and QoS 1 throughput (3
# runs each; 4 publishers, 1 subscriber, 100,000 messages) and connects at
# concurrency 32 (2 runs of 5,000). JSON lines on stdout.
#
#   cargo build --release --bins
#   benches/before-after.sh target/release/certmq new > new.jsonl
#
# Starts the broker in a temporary directory (development PKI) on
# 127.0.0.1:18883 / 18080 (loopback only), stops it at the end. Uses
# target/release/certmq-load unless LOAD is set.
set -euo pipefail
bin=$(realpath "$1"); label=$2
load=$(realpath "${LOAD:-target/release/certmq-load}")
work=$(mktemp -d /tmp/certmq-before-after.XXXXXX)
cd "$work"
CERTMQ__MQTT__LISTEN=127.0.0.1:18883 CERTMQ__ADMIN__LISTEN=127.0.0.1:18080 \
CERTMQ__MQTT__CONNECTIONS_PER_SECOND_PER_IP=0 CERTMQ__MQTT__MAX_CONNECTIONS=25000 \
CERTMQ__LOG__LEVEL=warn "$bin" serve >out 2>err &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do [ -f data/admin-access-key.json ] && break; sleep 0.1; done
sleep 0.5
L="$load --target 127.0.0.1:18883 --server-ca certs/dev/ca.pem --device-ca-cert certs/dev/ca.pem --device-ca-key certs/dev/ca.key --devices-dir $work/devs --quiet --label $label --broker-pid $pid"
for _ in 1 2 3; do
    $L publish --qos 0 --messages 100000 --publishers 4
    $L publish --qos 1 --messages 100000 --publishers 4
done
for _ in 1 2; do
    $L connect --count 5000 --concurrency 32
done
