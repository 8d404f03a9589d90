#!/usr/bin/env bash
# bench/run.sh — compare the dispatcher (pool mode) with an in-process
# net/http baseline and with the process-hop floor (bench/floor), using wrk
# against 127.0.0.1 only.
#
# Usage: bench/run.sh [--rounds N] [--duration Ns] [--conns N] [--threads N]
#                     [--warmup Ns] [--pool-size N] [--compare REV] [--out FILE]
# The same settings can be given as environment variables: ROUNDS (3),
# DURATION (8s), CONNS (32), THREADS (1), WARMUP (1s), POOL_SIZE (2),
# COMPARE, OUT. DISPATCHER_FLAGS adds flags to the dispatcher's command line
# (for example DISPATCHER_FLAGS="--pipeline 1" to measure without
# pipelining). SERVERS picks the servers ("inproc floor dispatcher
# dispatcher-nolog"; also floor-mux, floor-coalesce), WORKLOADS the
# workloads ("hello echo"). COMPARE=REV also runs the dispatcher built at
# git revision REV (old, old-nolog).
#
# The markdown report goes to stdout (and to FILE with --out); progress goes
# to stderr. See bench/README.md.
set -euo pipefail

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-8s}
CONNS=${CONNS:-32}
THREADS=${THREADS:-1}
WARMUP=${WARMUP:-1s}
POOL_SIZE=${POOL_SIZE:-2}
SERVERS=${SERVERS:-inproc floor dispatcher dispatcher-nolog}
WORKLOADS=${WORKLOADS:-hello echo}
COMPARE=${COMPARE:-}
OUT=${OUT:-}
READY_TIMEOUT=${READY_TIMEOUT:-20}   # seconds for a server to answer
STOP_TIMEOUT=${STOP_TIMEOUT:-15}     # seconds for a server to exit on SIGTERM

usage() { sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
	case $1 in
	--rounds) ROUNDS=$2; shift 2 ;;
	--duration) DURATION=$2; shift 2 ;;
	--conns) CONNS=$2; shift 2 ;;
	--threads) THREADS=$2; shift 2 ;;
	--warmup) WARMUP=$2; shift 2 ;;
	--pool-size) POOL_SIZE=$2; shift 2 ;;
	--compare) COMPARE=$2; shift 2 ;;
	--out) OUT=$2; shift 2 ;;
	-h | --help) usage; exit 0 ;;
	*) echo "run.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
	esac
done

log() { printf '[bench %s] %s\n' "$(date +%T)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

posint() {
	case $1 in '' | *[!0-9]*) die "$2 must be a positive integer, got '$1'" ;; esac
	[ "$1" -gt 0 ] || die "$2 must be positive, got '$1'"
}
# Durations are whole seconds, with or without an "s" suffix.
DUR_S=${DURATION%s}
WARM_S=${WARMUP%s}
posint "$DUR_S" "DURATION (whole seconds, like 8s)"
posint "$WARM_S" "WARMUP (whole seconds, like 1s)"
posint "$ROUNDS" ROUNDS
posint "$CONNS" CONNS
posint "$THREADS" THREADS
posint "$POOL_SIZE" POOL_SIZE
for s in $SERVERS; do
	case $s in
	inproc | floor | floor-mux | floor-coalesce | dispatcher | dispatcher-nolog) ;;
	*) die "SERVERS: unknown server '$s' (inproc, floor, floor-mux, floor-coalesce, dispatcher, dispatcher-nolog)" ;;
	esac
done
[ -n "${SERVERS// /}" ] || die "SERVERS is empty"
for w in $WORKLOADS; do
	case $w in hello | echo) ;; *) die "WORKLOADS: unknown workload '$w' (hello, echo)" ;; esac
done
[ -n "${WORKLOADS// /}" ] || die "WORKLOADS is empty"
if [ -n "$COMPARE" ]; then
	for s in $SERVERS; do
		case $s in dispatcher | dispatcher-nolog) SERVERS="$SERVERS old${s#dispatcher}" ;; esac
	done
fi

BENCH_DIR=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$BENCH_DIR/.." && pwd)

# --- wrk -------------------------------------------------------------------
if ! command -v wrk >/dev/null 2>&1; then
	[ "$(id -u)" = 0 ] || die "wrk is not installed; run: sudo apt-get install -y wrk"
	log "installing wrk"
	export DEBIAN_FRONTEND=noninteractive
	if ! apt-get install -y -qq wrk >/dev/null 2>&1; then
		timeout 300 apt-get update -qq >/dev/null 2>&1 || true
		timeout 300 apt-get install -y -qq wrk >/dev/null || die "apt-get install wrk failed"
	fi
fi
command -v curl >/dev/null 2>&1 || die "curl is required"

# --- cleanup ---------------------------------------------------------------
TMP=$(mktemp -d "${TMPDIR:-/tmp}/bench.XXXXXX")
SERVER_PID=""

# Processes of the session a server leads (it is started with setsid, so its
# pid is the session id; the dispatcher's workers lead their own process
# groups but stay in that session).
session_pids() {
	local sid=$1 f rest
	for f in /proc/[0-9]*/stat; do
		{ read -r rest <"$f"; } 2>/dev/null || continue
		rest=${rest##*) }
		# state ppid pgrp session ...
		set -- $rest
		[ "${4:-}" = "$sid" ] && { f=${f#/proc/}; echo "${f%/stat}"; }
	done
	return 0
}

# Context switches (voluntary and not) of every thread of every process in
# a session.
session_ctxsw() {
	local sid=$1 pid total=0 k v _
	for pid in $(session_pids "$sid"); do
		for f in /proc/"$pid"/task/*/status; do
			while read -r k v _; do
				case $k in voluntary_ctxt_switches: | nonvoluntary_ctxt_switches:) total=$((total + v)) ;; esac
			done <"$f" 2>/dev/null || true
		done
	done
	echo "$total"
}

# CPU clock ticks (utime+stime+cutime+cstime) of every process in a session.
session_ticks() {
	local sid=$1 f rest total=0
	for f in /proc/[0-9]*/stat; do
		{ read -r rest <"$f"; } 2>/dev/null || continue
		rest=${rest##*) }
		set -- $rest
		# fields after "pid (comm) ": 1 state 2 ppid 3 pgrp 4 session ...
		# 12 utime 13 stime 14 cutime 15 cstime
		[ "${4:-}" = "$sid" ] && total=$((total + ${12} + ${13} + ${14} + ${15}))
	done
	echo "$total"
}

# CPU clock ticks (utime+stime) of one process: the server itself, without
# its workers.
proc_ticks() {
	local rest
	{ read -r rest <"/proc/$1/stat"; } 2>/dev/null || { echo 0; return; }
	rest=${rest##*) }
	set -- $rest
	echo $((${12} + ${13}))
}

# alive PID: the process exists and is not a zombie waiting to be reaped.
alive() {
	local st
	{ read -r st <"/proc/$1/stat"; } 2>/dev/null || return 1
	st=${st##*) }
	[ "${st%% *}" != Z ]
}

stop_server() {
	local pid=$SERVER_PID i p
	[ -n "$pid" ] || return 0
	SERVER_PID=""
	kill -TERM "$pid" 2>/dev/null || true
	for ((i = 0; i < STOP_TIMEOUT * 10; i++)); do
		alive "$pid" || break
		sleep 0.1
	done
	# Whatever is left of the session (the server if it ignored SIGTERM, and
	# any worker that outlived it).
	for p in $(session_pids "$pid"); do
		kill -KILL "$p" 2>/dev/null || true
	done
	wait "$pid" 2>/dev/null || true
}

cleanup() {
	local rc=$?
	trap - EXIT INT TERM HUP PIPE
	stop_server
	rm -rf "$TMP"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP
trap 'exit 141' PIPE

# --- build -----------------------------------------------------------------
log "building into $TMP"
(
	cd "$REPO"
	timeout 600 go build -o "$TMP/dispatcher" ./cmd/dispatcher
	timeout 600 go build -o "$TMP/hello" ./examples/hello
	timeout 600 go build -o "$TMP/echo" ./testdata/workers/echo
	timeout 600 go build -o "$TMP/inproc" ./bench/inproc
	timeout 600 go build -o "$TMP/floor" ./bench/floor
	timeout 600 go build -o "$TMP/wrkparse" ./bench/wrkparse
) || die "build failed"
if [ -n "$COMPARE" ]; then
	log "building the dispatcher at $COMPARE"
	mkdir -p "$TMP/old-src" "$TMP/old"
	(
		git -C "$REPO" archive "$COMPARE" | tar -x -C "$TMP/old-src"
		cd "$TMP/old-src"
		timeout 600 go build -o "$TMP/old/" ./cmd/dispatcher ./examples/hello ./testdata/workers/echo
	) || die "could not build $COMPARE"
	COMPARE_COMMIT=$(git -C "$REPO" rev-parse --short "$COMPARE")
fi

head -c 4096 /dev/zero | tr '\0' x >"$TMP/body4k"

# --- servers ---------------------------------------------------------------
# start_server SERVER WORKLOAD: start it on a free loopback port; sets
# SERVER_PID and PORT.
start_server() {
	local server=$1 workload=$2 attempt worker lo bindir=$TMP nolog=()
	case $server in old*) bindir=$TMP/old ;; esac
	case $server in *-nolog) nolog=(--access-log=false) ;; esac
	worker=$bindir/hello
	[ "$workload" = echo ] && worker=$bindir/echo
	lo=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
	[ "$lo" -gt 11000 ] || lo=32768
	for attempt in 1 2 3 4 5; do
		# Below the ephemeral range, so wrk's own sockets never hold it.
		PORT=$((10000 + (RANDOM * 32768 + RANDOM) % (lo - 11000)))
		if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
			continue # taken
		fi
		: >"$TMP/server.log"
		case $server in
		inproc)
			setsid "$TMP/inproc" --listen "127.0.0.1:$PORT" >>"$TMP/server.log" 2>&1 &
			;;
		floor | floor-mux | floor-coalesce)
			local mode=${server#floor-}
			[ "$mode" = floor ] && mode=pairs
			setsid "$TMP/floor" -listen "127.0.0.1:$PORT" -children "$POOL_SIZE" -mode "$mode" >>"$TMP/server.log" 2>&1 &
			;;
		dispatcher | dispatcher-nolog | old | old-nolog)
			# Defaults, as users run it: the access log on, to a file.
			setsid "$bindir/dispatcher" --workers "$worker" --listen "127.0.0.1:$PORT" --admin-listen "" \
				--pool-size "$POOL_SIZE" "${nolog[@]}" ${DISPATCHER_FLAGS:-} >>"$TMP/server.log" 2>&1 &
			;;
		*) die "unknown server $server" ;;
		esac
		SERVER_PID=$!
		if wait_ready "$PORT"; then
			return 0
		fi
		log "$server did not come up on port $PORT (attempt $attempt):"
		sed 's/^/    /' "$TMP/server.log" | tail -n 20 >&2
		stop_server
	done
	die "could not start $server"
}

wait_ready() {
	local port=$1 deadline=$((SECONDS + READY_TIMEOUT))
	while [ "$SECONDS" -lt "$deadline" ]; do
		alive "$SERVER_PID" || return 1
		if curl -fsS -o /dev/null --max-time 1 "http://127.0.0.1:$port/" 2>/dev/null; then
			return 0
		fi
		sleep 0.1
	done
	return 1
}

# check_server WORKLOAD: one request by hand, to make sure wrk measures the
# right thing.
check_server() {
	case $1 in
	hello)
		[ "$(curl -fsS --max-time 5 "http://127.0.0.1:$PORT/")" = "hello world" ] ||
			die "GET / did not answer 'hello world'"
		;;
	echo)
		curl -fsS --max-time 5 -H 'Content-Type: application/octet-stream' \
			--data-binary "@$TMP/body4k" -o "$TMP/echoed" "http://127.0.0.1:$PORT/echo" ||
			die "POST /echo failed"
		cmp -s "$TMP/body4k" "$TMP/echoed" || die "POST /echo did not echo the 4 KiB body"
		;;
	esac
}

# run_wrk WORKLOAD SECONDS OUTFILE
run_wrk() {
	local workload=$1 secs=$2 out=$3 path=/ script=()
	if [ "$workload" = echo ]; then
		path=/echo
		script=(-s "$BENCH_DIR/post4k.lua")
	fi
	timeout $((secs + 30)) wrk -t"$THREADS" -c"$CONNS" -d"${secs}s" --latency \
		"${script[@]}" "http://127.0.0.1:$PORT$path" >"$out" 2>&1
}

# --- rounds ----------------------------------------------------------------
RESULTS=$TMP/results.tsv
printf 'round\tserver\tworkload\trps\tp50_ms\tp99_ms\tnon2xx\tsockerr\tcpu_ticks\telapsed_ms\tclk_tck\tctxsw\tfront_ticks\n' >"$RESULTS"
CLK_TCK=$(getconf CLK_TCK)
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
COMBOS=()
for workload in $WORKLOADS; do
	for s in $SERVERS; do COMBOS+=("$s $workload"); done
done
START=$SECONDS

log "$ROUNDS rounds x ${#COMBOS[@]} runs x (${WARM_S}s warm-up + ${DUR_S}s), wrk -t$THREADS -c$CONNS"
for ((round = 1; round <= ROUNDS; round++)); do
	# Interleaved, and every other round in reverse, so drift on a noisy
	# machine does not favour one server.
	order=("${COMBOS[@]}")
	if ((round % 2 == 0)); then
		order=()
		for ((i = ${#COMBOS[@]} - 1; i >= 0; i--)); do order+=("${COMBOS[i]}"); done
	fi
	for combo in "${order[@]}"; do
		read -r server workload <<<"$combo"
		start_server "$server" "$workload"
		check_server "$workload"
		run_wrk "$workload" "$WARM_S" "$TMP/warmup.out" || die "warm-up wrk failed: $(tail -n 5 "$TMP/warmup.out")"
		x0=$(session_ctxsw "$SERVER_PID")
		c0=$(session_ticks "$SERVER_PID")
		f0=$(proc_ticks "$SERVER_PID")
		t0=$(date +%s%N)
		run_wrk "$workload" "$DUR_S" "$TMP/wrk.out" || die "wrk failed: $(tail -n 5 "$TMP/wrk.out")"
		t1=$(date +%s%N)
		f1=$(proc_ticks "$SERVER_PID")
		c1=$(session_ticks "$SERVER_PID")
		x1=$(session_ctxsw "$SERVER_PID")
		alive "$SERVER_PID" || die "$server exited during the run: $(tail -n 20 "$TMP/server.log")"
		cp "$TMP/wrk.out" "$TMP/wrk-$round-$server-$workload.out"
		parsed=$("$TMP/wrkparse" parse "$TMP/wrk.out") || die "could not parse wrk output: $(cat "$TMP/wrk.out")"
		printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$server" "$workload" "$parsed" \
			"$((c1 - c0))" "$(((t1 - t0) / 1000000))" "$CLK_TCK" "$((x1 - x0))" "$((f1 - f0))" >>"$RESULTS"
		IFS=$'\t' read -r rps p50 p99 non2xx sockerr <<<"$parsed"
		log "round $round $server/$workload: $rps req/s, p50 ${p50}ms, p99 ${p99}ms, non-2xx $non2xx, socket errors $sockerr"
		stop_server
	done
done

# --- report ----------------------------------------------------------------
report() {
	local commit dirty=""
	commit=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)
	[ -z "$(git -C "$REPO" status --porcelain 2>/dev/null)" ] || dirty=" (working tree has uncommitted changes)"
	echo "## dispatcher (pool mode) vs in-process net/http"
	echo
	echo "- Date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
	echo "- Machine: nproc=$(nproc), $(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | sed 's/.*: //' || echo 'unknown CPU'), $(awk '/MemTotal/ {printf "%.0f GiB RAM", $2/1048576}' /proc/meminfo), Linux $(uname -r); $(go version | sed 's/^go version //'); $(wrk --version 2>&1 | head -n1 | cut -d' ' -f1-2)"
	echo "- Load average (1/5/15 min): $LOAD_BEFORE before, $(cut -d' ' -f1-3 /proc/loadavg) after (2 cores; anything much above ~1 means other work competed with the benchmark)"
	echo "- Commit: $commit$dirty"
	echo "- Settings: $ROUNDS rounds, interleaved; each run on a fresh server: ${WARM_S}s warm-up, then \`wrk -t$THREADS -c$CONNS -d${DUR_S}s --latency\` against 127.0.0.1"
	echo "- Servers: \`inproc\` = bench/inproc (net/http in one process); \`floor\` = bench/floor -children $POOL_SIZE (net/http handing each request to a child process as one raw frame each way: the least a process hop costs; \`floor-mux\`: -mode mux, requests multiplexed on one socket per child; \`floor-coalesce\`: -mode coalesce, frames ready for the same socket written together); \`dispatcher\` = cmd/dispatcher --pool-size $POOL_SIZE ${DISPATCHER_FLAGS:+$DISPATCHER_FLAGS }at its defaults (access log on, written to a file), with worker examples/hello (hello) or testdata/workers/echo (echo); \`dispatcher-nolog\` = the same with --access-log=false${COMPARE:+; \`old\`, \`old-nolog\` = the same two at $COMPARE ($COMPARE_COMMIT)}"
	echo "- Workloads: hello = GET / (\"hello world\\n\"); echo = POST /echo with a 4 KiB body (bench/post4k.lua)"
	echo "- Server CPU % = CPU time of the server and its worker processes during the measured run, in % of one core (the machine has $(nproc) cores, shared with wrk); CPU µs/req = that CPU time divided by the requests served; front µs/req = the same for the server process alone (the dispatcher without its workers; the floor's front; all of inproc); ctx sw/req = context switches of all their threads (voluntary and not) per request"
	echo
	"$TMP/wrkparse" table "$RESULTS"
	echo
	echo "Total time: $((SECONDS - START))s"
}
if [ -n "$OUT" ]; then
	mkdir -p "$(dirname "$OUT")"
	report | tee "$OUT"
else
	report
fi
