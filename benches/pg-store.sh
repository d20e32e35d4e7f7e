#!/usr/bin/env bash
# The registry on PostgreSQL: first-connection auto-registration (30,000
# devices, 256 at a time, as benches/store.rs measures it for SQLite),
# against a throwaway PostgreSQL cluster on this machine (Debian's
# postgresql package; initdb into a temporary directory, a Unix socket
# there, fsync on, default settings otherwise), stopped at the end. As root
# the server runs as the postgres user. One JSON object on stdout.
#
#   benches/pg-store.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
[ -x "$bin/initdb" ] || { echo "PostgreSQL is not installed (apt-get install postgresql)" >&2; exit 1; }
dir=$(mktemp -d /tmp/certmq-pg-bench.XXXXXX)
as=()
if [ "$(id -u)" -eq 0 ]; then chown postgres: "$dir"; as=(runuser -u postgres --); fi
"${as[@]}" "$bin/initdb" -D "$dir/data" -A trust -U postgres -E UTF8 >/dev/null
"${as[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/log" -o "-c listen_addresses='' -k $dir" -w start >/dev/null
trap '"${as[@]}" "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null; rm -rf "$dir"' EXIT
"${as[@]}" "$bin/psql" -h "$dir" -U postgres -qc "CREATE DATABASE bench" >/dev/null
POSTGRES_URL="host=$dir user=postgres dbname=bench" cargo bench --bench store
