#!/usr/bin/env bash
# Runs each fuzz target for a bounded time (default 10 minutes each) with
# cargo-fuzz (libFuzzer; needs a nightly toolchain: `rustup toolchain install
# nightly`, `cargo install cargo-fuzz`). Two targets run at a time.
#
#   fuzz/run.sh                       # all three, 600 s each
#   FUZZ_SECONDS=60 fuzz/run.sh mqtt_decode
#
# A crash leaves its input in fuzz/artifacts/<target>/: fix it, then copy the
# input to fuzz/regressions/<target>/ so that `cargo test` replays it.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${FUZZ_SECONDS:-600}"
targets=("$@")
if [ "${#targets[@]}" -eq 0 ]; then targets=(mqtt_decode admin_request device_cert); fi
cargo +nightly fuzz build -O "${targets[@]/#/}" >/dev/null 2>&1 || cargo +nightly fuzz build -O
mkdir -p fuzz/logs
run() {
    local target=$1
    mkdir -p "fuzz/corpus/$target"
    cargo +nightly fuzz run -O "$target" "fuzz/corpus/$target" "fuzz/seeds/$target" "fuzz/regressions/$target" -- \
        -max_total_time="$seconds" -rss_limit_mb=4096 -print_final_stats=1 >"fuzz/logs/$target.log" 2>&1
    echo "$target: $(grep -E '^Done [0-9]+ runs' "fuzz/logs/$target.log" || tail -1 "fuzz/logs/$target.log")"
}
pids=()
for target in "${targets[@]}"; do
    run "$target" &
    pids+=($!)
    if [ "${#pids[@]}" -ge 2 ]; then wait "${pids[0]}"; pids=("${pids[@]:1}"); fi
done
wait
