#!/usr/bin/env bash
# Server CPU per connect against the in-memory handshake, in one run (issue
# 12: "server CPU per connect <= 1.5x the in-memory handshake"). The
# machine's speed moves by a factor of two from one day to the next, so the
# two are measured alternately, minutes apart: the in-memory handshake
# (`cargo bench --bench handshake`, server side only, four variants), then
# the broker (`certmq-load connect --broker-pid`, 3.1.1, concurrency 32,
# N connects from a pool of 200 device certificates, after a warm-up that
# registers them) twice: on its defaults, which issue a TLS 1.3 session
# ticket at every full handshake (label LABEL), and with
# `tls.session_cache_size = 0` (label LABEL-no-tickets); ROUNDS times. JSON
# lines on stdout: {"measure": "handshake", "variant", "us"} and
# certmq-load's connect results.
#
#   cargo build --release --bins
#   cp "$CARGO_TARGET_DIR"/release/certmq /tmp/certmq-under-test   # cargo bench rebuilds release/certmq
#   benches/connect-cpu.sh /tmp/certmq-under-test label > connect-cpu.jsonl
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
. "$root/benches/fresh-broker.sh"
bin=$(realpath "$1"); label=$2
target_dir=${CARGO_TARGET_DIR:-$root/target}
load=$(mktemp /tmp/certmq-load.XXXXXX)
cp "$target_dir/release/certmq-load" "$load"
chmod +x "$load"
n=${N:-10000}
rounds=${ROUNDS:-3}
work=$(mktemp -d /tmp/certmq-connect-cpu.XXXXXX)

handshake() {
    # criterion's bencher format: "test <name> ... bench: <ns> ns/iter (+/- <ns>)"
    (cd "$root" && cargo bench -q --bench handshake -- "server side" --warm-up-time 2 \
        --measurement-time 5 --output-format bencher 2>/dev/null) |
        python3 -c "import json,re,sys
for l in sys.stdin:
    m = re.match(r'test mutual TLS 1.3 handshake, server side/(.*) \.\.\. bench: +([0-9,]+) ns/iter', l)
    if m:
        print(json.dumps({'measure': 'handshake', 'label': '$label', 'variant': m.group(1),
                          'us': int(m.group(2).replace(',', '')) / 1000}))"
}

connects() {
    local label=$1 cache=$2
    cd "$work"
    "$root/benches/load-policies.sh" >certmq.toml
    CERTMQ__TLS__SESSION_CACHE_SIZE=$cache fresh_broker "$bin"
    L connect --count 400 --concurrency 32 >/dev/null
    L connect --count "$n" --concurrency 32
    stop_broker
    cd "$root"
}

(cd "$root" && cargo bench -q --bench handshake --no-run >/dev/null 2>&1)
for _ in $(seq "$rounds"); do
    handshake
    connects "$label" 4096
    connects "$label-no-tickets" 0
done
handshake
rm -rf "$work" "$load"
