#!/usr/bin/env bash
# Sizing figures: hello-world requests/s through the dispatcher as cores
# (taskset on the dispatcher and its workers), --pool-size and --concurrency
# change, against the in-process server on the same cores. wrk runs on all
# cores, unpinned. Prints a markdown table.
#
#   bash bench/scaling.sh            # 5 s per run
#   DURATION=10s bash bench/scaling.sh
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-5s}
CONNS=${CONNS:-32}
command -v wrk >/dev/null || { echo "scaling: wrk is needed (apt-get install wrk)" >&2; exit 2; }
command -v taskset >/dev/null || { echo "scaling: taskset is needed (util-linux)" >&2; exit 2; }
TMP=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$TMP"' EXIT
go build -o "$TMP/" ./cmd/dispatcher ./examples/hello ./bench/inproc ./bench/wrkparse

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
ready() { for _ in $(seq 200); do curl -fsS -o /dev/null "http://127.0.0.1:$1/" 2>/dev/null && return 0; sleep 0.05; done; return 1; }
measure() { # CPUS NAME CMD...
	local cpus=$1 name=$2; shift 2
	local p; p=$(port)
	taskset -c "$cpus" "$@" --listen "127.0.0.1:$p" >/dev/null 2>&1 &
	local pid=$!
	ready "$p" || { echo "scaling: $name did not start" >&2; exit 1; }
	wrk -t1 -c"$CONNS" -d1s "http://127.0.0.1:$p/" >/dev/null 2>&1
	wrk -t1 -c"$CONNS" -d"$DURATION" --latency "http://127.0.0.1:$p/" >"$TMP/wrk.out" 2>&1
	kill "$pid"; wait "$pid" 2>/dev/null || true
	local rps; rps=$("$TMP/wrkparse" parse "$TMP/wrk.out" | cut -f1)
	printf '| %s | %s | %.0f |\n' "$cpus" "$name" "$rps"
}
echo "## Scaling (wrk -t1 -c$CONNS, $DURATION per run, $(nproc) CPUs, load $(cut -d' ' -f1 /proc/loadavg) at start)"
echo
echo "| cores | server | req/s |"
echo "|---|---|--:|"
D=("$TMP/dispatcher" --workers "$TMP/hello" --admin-listen "" --access-log=false)
for cpus in 0 0,1; do
	measure "$cpus" "in-process" "$TMP/inproc"
	measure "$cpus" "dispatcher --pool-size 1" "${D[@]}" --pool-size 1
	measure "$cpus" "dispatcher --pool-size 2" "${D[@]}" --pool-size 2
	measure "$cpus" "dispatcher --pool-size 4" "${D[@]}" --pool-size 4
	measure "$cpus" "dispatcher --pool-size 1 --concurrency 4" "${D[@]}" --pool-size 1 --concurrency 4
	measure "$cpus" "dispatcher --pool-size 2 --pipeline 1" "${D[@]}" --pool-size 2 --pipeline 1
done
