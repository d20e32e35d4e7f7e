#!/usr/bin/env bash
# The Eclipse Paho interoperability suite (github.com/eclipse/paho.mqtt.testing,
# interoperability/client_test.py for MQTT 3.1.1 and client_test5.py for
# MQTT 5) against a fresh broker, through benches/mtls-tunnel.py (the suite
# speaks plain MQTT; certmq has no plaintext port). Every connection of the
# suite presents the development PKI's device-1 certificate; the broker runs
# with a policy that lets it publish and subscribe anywhere outside `$`
# topics, and with `mqtt.max_keep_alive_secs = 60`, the server keep alive
# the suite expects. Not part of `cargo test`: the suite is not on a package
# registry. Each test runs on its own, with a timeout (TEST_TIMEOUT, 120 s);
# prints how many of each suite's tests passed and which failed; the whole
# output goes to $out_dir (default: a temporary directory).
#
#   git clone https://github.com/eclipse/paho.mqtt.testing /tmp/paho.mqtt.testing
#   cargo build --release
#   benches/paho-interop.sh /tmp/paho.mqtt.testing "$CARGO_TARGET_DIR"/release/certmq
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
. "$root/benches/fresh-broker.sh"
[ $# -ge 1 ] || { echo "usage: $0 PAHO_MQTT_TESTING_CHECKOUT [CERTMQ_BINARY]" >&2; exit 2; }
suite=$1/interoperability
[ -f "$suite/client_test5.py" ] || { echo "no $suite/client_test5.py: give the path of a paho.mqtt.testing checkout" >&2; exit 2; }
suite=$(realpath "$suite")
bin=${2:-${CARGO_TARGET_DIR:-$root/target}/release/certmq}
[ -x "$bin" ] || { echo "no broker binary $bin: build it (cargo build --release) or give its path" >&2; exit 2; }
bin=$(realpath "$bin")
out_dir=${out_dir:-$(mktemp -d /tmp/certmq-paho.XXXXXX)}
mkdir -p "$out_dir"
work=$(mktemp -d /tmp/certmq-paho-broker.XXXXXX)
cd "$work"
cat >certmq.toml <<'TOML'
[mqtt]
max_keep_alive_secs = 60

[authz]
default_policies = ["interop"]
dev_pki_app_policies = ["interop"]

[[authz.policies]]
name = "interop"
rules = [
  { effect = "allow", actions = ["publish", "subscribe"], topics = ["#"] },
]
TOML

pid=; tunnel=
cleanup() {
    [ -n "$tunnel" ] && kill "$tunnel" 2>/dev/null
    [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

for version in 3.1.1 5; do
    script=client_test.py; [ "$version" = 5 ] && script=client_test5.py
    rm -f tunnel.port
    fresh_broker "$bin"
    python3 "$root/benches/mtls-tunnel.py" "${mqtt%:*}" "${mqtt##*:}" certs/dev/ca.pem \
        certs/dev/device-1.pem certs/dev/device-1.key >tunnel.port 2>"$out_dir/tunnel-$version.log" &
    tunnel=$!
    for _ in $(seq 100); do [ -s tunnel.port ] && break; sleep 0.05; done
    # Each test on its own, in the suite's order, against the same broker,
    # with a timeout: a test that waits for something the broker never
    # sends (a DISCONNECT, say) fails instead of stalling the run.
    # client_test.py hands its own -p on to unittest, which refuses it: run
    # a copy that does not.
    sed 's/^    unittest.main()$/    unittest.main(argv=sys.argv[:1] + [a for a in sys.argv[1:] if a.startswith("Test.")])/' \
        "$suite/$script" >"$work/$script"
    passed=0; total=0; failed=()
    for test in $(sed -n 's/^ *def \(test[A-Za-z0-9_]*\)(self.*/\1/p' "$suite/$script"); do
        total=$((total + 1))
        if (cd "$suite" && PYTHONPATH="$suite" timeout "${TEST_TIMEOUT:-120}" python3 "$work/$script" \
                -p "$(cat "$work/tunnel.port")" "Test.$test") >>"$out_dir/suite-$version.out" 2>&1; then
            passed=$((passed + 1))
        else
            failed+=("$test")
        fi
    done
    echo "MQTT $version ($script): $passed of $total passed${failed:+; failed: ${failed[*]}}"
    kill "$tunnel"; tunnel=
    stop_broker; pid=
    cp err "$out_dir/broker-$version.log"
done
echo "output: $out_dir"
