#!/bin/bash
# logflood.sh DISPATCHER HOSTILE LOG PORT [QUERY]: runs the dispatcher with
# one hostile worker (testdata/workers/hostile), its log to the file LOG,
# asks the worker for /flood?QUERY (default mb=5: 5 MiB of two-byte lines,
# one write each) and prints the worker's report, the dispatcher's CPU
# time over the flood (from /proc/PID/stat, once it stops growing: the
# dispatcher has read everything) and the size of its log.
# Results: bench/results/2026-12-07-log-flood.md.
set -eu
BIN=$1 HOSTILE=$2 LOG=$3 PORT=$4 QUERY=${5:-mb=5}
"$BIN" --workers "$HOSTILE" --pool-size 1 --listen 127.0.0.1:"$PORT" --admin-listen "" --timeout 10m 2>"$LOG" &
D=$!
trap 'kill $D 2>/dev/null || true' EXIT
for _ in $(seq 100); do grep -q "dispatcher listening" "$LOG" && break; sleep 0.1; done
cpu() { awk '{print $14+$15}' /proc/"$1"/stat; }
c0=$(cpu $D)
t0=$(date +%s.%N)
body=$(curl -s -m 600 "http://127.0.0.1:$PORT/flood?$QUERY")
prev=-1 cur=$(cpu $D)
while [ "$cur" != "$prev" ]; do prev=$cur; sleep 0.5; cur=$(cpu $D); done
t1=$(date +%s.%N)
echo "$(basename "$BIN"): $body dispatcher_cpu_ms=$(( (cur - c0) * 10 )) wall_s=$(echo "$t1 - $t0" | bc) log_bytes=$(stat -c %s "$LOG") log_lines=$(wc -l < "$LOG")"
