# Sourced by the bench scripts that start a broker per round (connect-cpu.sh,
# burst.sh, paho-interop.sh). In the current directory, which holds certmq.toml
# (load-policies.sh): `fresh_broker BIN` starts BIN on the development PKI
# and loopback ports it picks itself, with any CERTMQ__* settings given on
# the call, and sets `pid` and `mqtt`; `L ...` runs certmq-load ($load)
# against it with the device pool in $work/devs and the label $label;
# `stop_broker` stops it.

fresh_broker() {
    rm -rf data
    CERTMQ__MQTT__LISTEN=127.0.0.1:0 CERTMQ__ADMIN__LISTEN=127.0.0.1:0 \
    CERTMQ__MQTT__CONNECTIONS_PER_SECOND_PER_IP=0 CERTMQ__MQTT__MAX_CONNECTIONS=25000 \
    CERTMQ__LOG__LEVEL=warn "$1" serve --config certmq.toml >out 2>err &
    pid=$!
    for _ in $(seq 200); do [ -f data/listen.json ] && break; sleep 0.05; done
    mqtt=$(python3 -c "import json;print(json.load(open('data/listen.json'))['mqtt'])")
}

L() {
    "$load" --target "$mqtt" --server-ca certs/dev/ca.pem --device-ca-cert certs/dev/ca.pem \
        --device-ca-key certs/dev/ca.key --devices-dir "$work/devs" --threads 1 --quiet \
        --label "$label" --broker-pid "$pid" "$@"
}

stop_broker() {
    kill "$pid"
    wait "$pid" 2>/dev/null || true
}
