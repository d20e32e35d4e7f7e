#!/usr/bin/env bash
# What lifecycle events cost the connect path (issue 14 point 4): one
# certmq binary, connects at concurrency 32 with the broker's CPU per
# connect (certmq-load connect --broker-pid), 3 runs with nobody subscribed
# to $certmq/events/#, then 3 runs with a back end (mosquitto_sub, the dev
# PKI's app certificate) subscribed and reading them. Each connection
# makes 2 events (connected, disconnected); the warm-up's first
# connections make a third (registered). JSON lines on stdout, with
# "events": "none" | "subscribed" and "received" (events the back end got).
#
#   cargo build --release --bins
#   benches/events-cost.sh "$CARGO_TARGET_DIR"/release/certmq with-events > events-cost.jsonl
#   benches/events-cost.sh /tmp/certmq-before-events before-events >> events-cost.jsonl   # no subscriber runs only
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=$(realpath "$1"); label=$2
load=$(realpath "${LOAD:-${CARGO_TARGET_DIR:-$root/target}/release/certmq-load}")
n=${N:-5000}
work=$(mktemp -d /tmp/certmq-events-cost.XXXXXX)
cd "$work"
{
    "$root/benches/load-policies.sh"
    cat <<'TOML'

[[authz.policies]]
name = "event-backend"
rules = [{ effect = "allow", actions = ["subscribe"], topics = ["$certmq/events/#"] }]

[[authz.attach]]
policies = ["event-backend"]
common_name = "app"
TOML
} >certmq.toml
CERTMQ__MQTT__LISTEN=127.0.0.1:0 CERTMQ__ADMIN__LISTEN=127.0.0.1:0 \
CERTMQ__MQTT__CONNECTIONS_PER_SECOND_PER_IP=0 CERTMQ__MQTT__MAX_CONNECTIONS=25000 \
CERTMQ__LOG__LEVEL=warn "$bin" serve --config certmq.toml >out 2>err &
pid=$!
sub=""
trap 'kill $pid $sub 2>/dev/null || true' EXIT
for _ in $(seq 200); do [ -f data/listen.json ] && break; sleep 0.05; done
port=$(python3 -c "import json;print(json.load(open('data/listen.json'))['mqtt'].rsplit(':',1)[1])")
L() {
    "$load" --target "127.0.0.1:$port" --server-ca certs/dev/ca.pem --device-ca-cert certs/dev/ca.pem \
        --device-ca-key certs/dev/ca.key --devices-dir "$work/devs" --quiet --label "$label" \
        --broker-pid "$pid" "$@"
}
tag() { python3 -c "import json,sys
for l in sys.stdin:
    r=json.loads(l); r['events']='$1'
    if '$2': r['received']=int(open('$2').read().count('\n'))
    print(json.dumps(r))"; }
L connect --count 400 --concurrency 32 >/dev/null
for _ in 1 2 3; do L connect --count "$n" --concurrency 32 | tag none ""; done
if ! grep -a -q 'certmq/events' "$bin"; then exit 0; fi
mosquitto_sub -h localhost -p "$port" --cafile certs/dev/ca.pem --cert certs/dev/app.pem \
    --key certs/dev/app.key -V mqttv5 -q 1 -i events-backend -t '$certmq/events/#' >events.log 2>sub.err &
sub=$!
for _ in $(seq 100); do grep -q '"connected"' events.log 2>/dev/null && break; L connect --count 1 --concurrency 1 >/dev/null; sleep 0.05; done
for _ in 1 2 3; do
    : >events.log
    L connect --count "$n" --concurrency 32 >run.json
    sleep 1
    tag subscribed events.log <run.json
done
