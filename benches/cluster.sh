#!/usr/bin/env bash
# Three certmq nodes on one PostgreSQL registry (issue 13), on loopback:
#
# 1. cross-node drop: OTHERS live sessions spread over the three nodes,
#    COUNT devices connected to node C inactivated one by one through node
#    A's admin API; the time from sending each call to C closing the
#    device's socket (and to A's answer);
# 2. catch-up after a partition: node C stopped (SIGSTOP) for at least
#    PARTITION seconds while CHANGES registry changes are made on node A
#    (inactivate / activate; they answer once C's lease has run out), then
#    resumed (SIGCONT): the time until C has applied every change, and
#    until its /readyz answers 200 again.
#
# A throwaway PostgreSQL cluster (Debian's postgresql; initdb into a
# temporary directory, a Unix socket there, fsync on), release binaries,
# one shared development PKI. JSON lines on stdout.
#
#   cargo build --release --bins
#   benches/cluster.sh > cluster.jsonl            # OTHERS=9800 COUNT=200 CHANGES=2000
#   OTHERS=1000 COUNT=50 CHANGES=200 benches/cluster.sh   # a smoke run
set -euo pipefail
cd "$(dirname "$0")/.."
others=${OTHERS:-9800}
count=${COUNT:-200}
changes=${CHANGES:-2000}
partition=${PARTITION:-5}
bin=$(realpath "${CARGO_TARGET_DIR:-target}/release/certmq")
load=$(realpath "${CARGO_TARGET_DIR:-target}/release/certmq-load")
pgbin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -x "$pgbin/initdb" ] || { echo "PostgreSQL is not installed (apt-get install postgresql)" >&2; exit 1; }
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
work=$(mktemp -d /tmp/certmq-cluster.XXXXXX)
chmod 755 "$work"
as=()
mkdir "$work/pg"
if [ "$(id -u)" -eq 0 ]; then chown postgres: "$work/pg"; as=(runuser -u postgres --); fi
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -CONT "$p" 2>/dev/null || true; kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    "${as[@]}" "$pgbin/pg_ctl" -D "$work/pg/data" -m fast -w stop >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
"${as[@]}" "$pgbin/initdb" -D "$work/pg/data" -A trust -U postgres -E UTF8 >/dev/null
"${as[@]}" "$pgbin/pg_ctl" -D "$work/pg/data" -l "$work/pg/log" \
    -o "-c listen_addresses='' -k $work/pg -c max_connections=100" -w start >/dev/null
"${as[@]}" "$pgbin/psql" -h "$work/pg" -U postgres -qc "CREATE DATABASE cluster" >/dev/null
url="host=$work/pg user=postgres dbname=cluster"
psql() { "${as[@]}" "$pgbin/psql" -h "$work/pg" -U postgres -d cluster -Atc "$1"; }

key_id=LTAI5tClusterBench0001
key_secret=cluster-bench-secret-0123456789
cat >"$work/certmq.toml" <<TOML
[mqtt]
connections_per_second_per_ip = 0
max_connections = 20000

[tls]
dev_pki_dir = "$work/pki"

[storage]
backend = "postgres"

[[admin.access_keys]]
id = "$key_id"
secret = "$key_secret"
account = "local"
actions = ["mq:*"]

[admin.rate_limits]
default = 1000000
InactivateDeviceCertificate = 1000000
TOML

free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
declare -A mqtt admin pid
for node in a b c; do
    mqtt[$node]=$(free_port); admin[$node]=$(free_port)
    mkdir -p "$work/$node"
    (
        cd "$work/$node"
        CERTMQ__CLUSTER__NODE_ID=node-$node CERTMQ__STORAGE__POSTGRES_URL="$url" \
        CERTMQ__MQTT__LISTEN=127.0.0.1:${mqtt[$node]} CERTMQ__ADMIN__LISTEN=127.0.0.1:${admin[$node]} \
        CERTMQ__LOG__LEVEL=warn exec "$bin" serve --config "$work/certmq.toml" >"$work/$node/out" 2>"$work/$node/err"
    ) &
    pid[$node]=$!
    pids+=("${pid[$node]}")
    for _ in $(seq 300); do [ -f "$work/$node/data/listen.json" ] && break; sleep 0.05; done
    [ -f "$work/$node/data/listen.json" ] || { cat "$work/$node/err" >&2; exit 1; }
done

export CERTMQ_ACCESS_KEY_ID=$key_id CERTMQ_ACCESS_KEY_SECRET=$key_secret
common=(--server-ca "$work/pki/ca.pem" --device-ca-cert "$work/pki/ca.pem"
    --device-ca-key "$work/pki/ca.key" --devices-dir "$work/devices" --quiet --threads 2)

# 1. Cross-node drop.
"$load" "${common[@]}" --target 127.0.0.1:${mqtt[a]} --also-target 127.0.0.1:${mqtt[b]} \
    --also-target 127.0.0.1:${mqtt[c]} --pool $((others + count)) --label cross-node-drop \
    revoke --admin 127.0.0.1:${admin[a]} --others "$others" --count "$count" \
    --revoked-at 127.0.0.1:${mqtt[c]}

# 2. Catch-up after a partition.
kill -STOP "${pid[c]}"
stopped=$(date +%s.%N)
"$load" "${common[@]}" --target 127.0.0.1:${mqtt[a]} --pool "$count" --label partitioned \
    changes --admin 127.0.0.1:${admin[a]} --count "$changes" >"$work/changes.json"
while python3 -c "import sys,time; sys.exit(0 if time.time() - $stopped < $partition else 1)"; do sleep 0.1; done
head=$(psql "SELECT seq FROM change_seq")
# The clock starts before SIGCONT (the poller's start-up counts against
# the node, not for it).
resumed=$(date +%s.%N)
kill -CONT "${pid[c]}"
python3 - "$head" "${admin[c]}" "$changes" "$stopped" "$work/changes.json" "$resumed" <<'PY'
import json, sys, time, urllib.request
head, port, changes, stopped = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
made = json.load(open(sys.argv[5]))
resumed = float(sys.argv[6])
def get(path):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=1) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, ""
    except Exception:
        return 0, ""
# The node has applied every change; then it is ready again (its /readyz
# may still say 200 in the first moments after SIGCONT, before it notices
# its lease ran out: only an answer after the catch-up counts).
applied_at = ready_at = None
while time.time() - resumed < 30 and applied_at is None:
    _, text = get("/metrics")
    for line in text.splitlines():
        if line.startswith("certmq_cluster_applied_seq ") and int(float(line.split()[1])) >= head:
            applied_at = time.time()
    time.sleep(0.005)
while applied_at is not None and time.time() - resumed < 30 and ready_at is None:
    if get("/readyz")[0] == 200:
        ready_at = time.time()
    time.sleep(0.005)
ms = lambda t: None if t is None else round((t - resumed) * 1000, 1)
print(json.dumps({
    "mode": "catch-up", "label": "partitioned", "changes": changes,
    "changes_per_second_while_partitioned": made["changes_per_second"],
    "partition_s": round(resumed - stopped, 2),
    "resume_to_applied_ms": ms(applied_at), "resume_to_ready_ms": ms(ready_at),
}))
PY
