#!/usr/bin/env bash
# scripts/bench.d/cluster.sh — throughput of two halites + two masters (the cluster lab, through
# its HTTP HAProxy) against one halite + one master (a one-master lab), same workloads, same run.
#
#   ONE_BASE=22500 CLUSTER_BASE=22700 scripts/bench.d/cluster.sh [seconds]
#
# Both labs must be up (scripts/lab start; LAB_TOPOLOGY=cluster scripts/lab start with its
# halites). A halite for the one-master lab is started here on its rest_wsgi port (B+1) and
# stopped at the end. Workloads (as in scripts/bench): W4 wheel key.list_all, W1 local_async
# test.ping (last: it leaves the minions a backlog), each with 8 concurrent connections.
# Prints one JSON line per measurement (http-load's report) and the load average around it.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
T=${CARGO_TARGET_DIR:-$ROOT/target}/debug
SECS=${1:-10}
ONE_BASE=${ONE_BASE:?ONE_BASE: PORT_BASE of a running one-master lab}
CLUSTER_BASE=${CLUSTER_BASE:?CLUSTER_BASE: PORT_BASE of the running cluster lab}
[[ -x $T/halite && -x $T/http-load ]] || { echo "build first: cargo build -p halite -p bench" >&2; exit 2; }

eval "$(PORT_BASE=$ONE_BASE "$ROOT/scripts/lab" env 2>/dev/null)"
one_cfg=$SALT_MASTER_CONFIG
HALITE_LOG=warn "$T/halite" --config "$one_cfg" </dev/null >/tmp/bench-cluster-one-halite.log 2>&1 &
one_pid=$!
trap 'kill "$one_pid" 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:$((ONE_BASE + 1))/health/ready" && break; sleep 0.2; done

creds='"eauth": "auto", "username": "saltdev", "password": "x"'
declare -A BODY=(
  [W4]="[{\"client\": \"wheel\", \"fun\": \"key.list_all\", $creds}]"
  [W1]="[{\"client\": \"local_async\", \"tgt\": \"*\", \"fun\": \"test.ping\", $creds}]"
)
declare -A CHECK=([W4]=key:data [W1]=jid)
for w in W4 W1; do
  for setup in one cluster; do
    if [[ $setup == one ]]; then url=http://127.0.0.1:$((ONE_BASE + 1))/; else url=http://127.0.0.1:$((CLUSTER_BASE + 1))/; fi
    load0=$(cut -d' ' -f1 /proc/loadavg)
    out=$("$T/http-load" --url "$url" --body "${BODY[$w]}" -c 8 -d "$SECS" --check "${CHECK[$w]}" --label "$w-$setup")
    echo "{\"workload\": \"$w\", \"setup\": \"$setup\", \"loadavg_before\": $load0, \"loadavg_after\": $(cut -d' ' -f1 /proc/loadavg), \"report\": $out}"
  done
done
