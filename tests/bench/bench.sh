#!/usr/bin/env bash
# tests/bench/bench.sh - bearerd against the targets of DESIGN.md
# "Performance targets", in one run (about 2 minutes):
#
#  1. cache hit over the Unix socket: h2load --h1 at c=1 and c=64 against
#     bearerd (GET /v1/token/demo) and nginx (1 worker, `return 200` with a
#     body of exactly bearerd's length), alternating; req/s, server CPU
#     µs/request (utime+stime from /proc/PID/stat), ratios bearerd/nginx;
#  2. memory: bearerd's RssAnon and VmRSS idle, then with 10,000 cached
#     dynamic resources and 1,000 open connections.
#
#   tests/bench/bench.sh                # as root it apt-get installs what is missing
#   DUR=3 ROUNDS=1 N_AUD=1000 tests/bench/bench.sh   # smoke test
#
# Knobs: DUR (s per h2load case, default 10, plus 1 s warm-up), ROUNDS (c=64
# and c=1 pairs, default 2), N_AUD (default 10000), N_CONN (default 1000),
# BUILD_DIR (default build-bench, set up with -Dbuildtype=release if missing).
# Loopback and Unix sockets only.  Everything started here is stopped by PID
# and the temporary folder removed on exit.  Exit status 1 on any failed
# request or failed step.
set -uo pipefail
export LC_ALL=C

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
DUR=${DUR:-10}
ROUNDS=${ROUNDS:-2}
N_AUD=${N_AUD:-10000}
N_CONN=${N_CONN:-1000}
BUILD=${BUILD_DIR:-build-bench}
cd "$ROOT" || exit 1

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf 'bench: FAILED: %s\n' "$*" >&2; exit 1; }

# ------------------------------------------------------------ tools, build --
. scripts/deps.sh
pkgs=("${BUILD_PACKAGES[@]}" curl)
command -v nginx >/dev/null 2>&1 || pkgs+=(nginx-light)
command -v h2load >/dev/null 2>&1 || pkgs+=(nghttp2-client)
[ -x /usr/bin/python3 ] || pkgs+=(python3)
need_packages "${pkgs[@]}" || die "missing packages"
PY=/usr/bin/python3

if [ ! -f "$BUILD/build.ninja" ]; then
	log "meson setup $BUILD -Dbuildtype=release"
	meson setup "$BUILD" -Dbuildtype=release >/dev/null || die "meson setup"
fi
ninja -C "$BUILD" >/dev/null || die "build"
BEARERD=$ROOT/$BUILD/daemon/bearerd
BUILDTYPE=$($PY -c 'import json, sys
for o in json.load(open(sys.argv[1])):
    if o["name"] == "buildtype": print(o["value"])' "$BUILD/meson-info/intro-buildoptions.json" 2>/dev/null)

# 1,000 connections on each side plus h2load's
[ "$(ulimit -n)" -ge 4096 ] || ulimit -n 4096 2>/dev/null || ulimit -n "$(ulimit -Hn)"
[ "$(ulimit -n)" -gt $((N_CONN + 64)) ] || die "open-files limit $(ulimit -n) too low for N_CONN=$N_CONN"

# ---------------------------------------------------------------- cleanup --
RUN=$(mktemp -d /tmp/bearerd-bench.XXXXXX) || exit 1
chmod 755 "$RUN"
declare -A SRV_PID # name -> main pid
HOLD_PID=
cleanup() {
	local n alive
	[ -n "${HOLD_PID:-}" ] && kill -TERM "$HOLD_PID" 2>/dev/null
	for n in "${!SRV_PID[@]}"; do kill -TERM "${SRV_PID[$n]}" 2>/dev/null; done
	for _ in $(seq 1 50); do
		alive=0
		for n in "${!SRV_PID[@]}"; do kill -0 "${SRV_PID[$n]}" 2>/dev/null && alive=1; done
		[ $alive = 0 ] && break
		sleep 0.1
	done
	for n in "${!SRV_PID[@]}"; do kill -KILL "${SRV_PID[$n]}" 2>/dev/null; done
	wait 2>/dev/null
	rm -rf "$RUN"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

srv_pids() { # main pid and its direct children (nginx's worker)
	echo "${SRV_PID[$1]}"
	ps -o pid= --ppid "${SRV_PID[$1]}" 2>/dev/null
}
CLK_TCK=$(getconf CLK_TCK)
cpu_ticks() { # utime+stime, all threads, all processes of a server
	local sum=0 p f
	for p in $(srv_pids "$1"); do
		f=$(cut -d' ' -f14,15 "/proc/$p/stat" 2>/dev/null) || continue
		[ -n "$f" ] && sum=$((sum + ${f% *} + ${f#* }))
	done
	echo "$sum"
}
mem() { # "RssAnon VmRSS" in KiB of bearerd
	awk '/^RssAnon:/ { a = $2 } /^VmRSS:/ { r = $2 } END { print a, r }' "/proc/${SRV_PID[bearerd]}/status"
}
alive() { kill -0 "${SRV_PID[$1]}" 2>/dev/null || die "$1 exited (log: $(tail -5 "$RUN/$1.log" 2>/dev/null))"; }
wait_ok() { # PATH SOCKET: until a 200 (up to 10 s)
	for _ in $(seq 1 100); do
		[ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 --unix-socket "$2" "http://localhost$1")" = 200 ] && return 0
		sleep 0.1
	done
	return 1
}

T_START=$(date +%s)
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
STEAL0=$(awk '/^cpu / { print $9, $2+$3+$4+$5+$6+$7+$8+$9 }' /proc/stat)

# ----------------------------------------------------------------- bearerd --
B_SOCK=$RUN/bearerd.sock
BEARERD_SOCKET=$B_SOCK "$BEARERD" --dev >"$RUN/bearerd.log" 2>&1 &
SRV_PID[bearerd]=$!
wait_ok /v1/token/demo "$B_SOCK" || die "bearerd did not answer /v1/token/demo: $(cat "$RUN/bearerd.log")"
sleep 0.5
read -r MEM0_ANON MEM0_RSS < <(mem)

read -r B_CODE B_BODY B_HEAD < <(curl -s -o "$RUN/bearerd.body" -w '%{http_code} %{size_download} %{size_header}\n' \
	--unix-socket "$B_SOCK" http://localhost/v1/token/demo)
[ "$B_CODE" = 200 ] || die "bearerd /v1/token/demo: $B_CODE"
grep -q '"access_token":"' "$RUN/bearerd.body" || die "bearerd body has no access_token"

# ------------------------------------------------------------------- nginx --
# A JSON body of exactly bearerd's length, deterministic, with no character
# nginx would interpret inside '...'.
N_BODY=$(awk -v n="$B_BODY" 'BEGIN {
	srand(20261126); a = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
	pre = "{\"access_token\":\""; suf = "\",\"token_type\":\"Bearer\",\"expires_in\":3599}";
	s = ""; for (i = length(pre) + length(suf); i < n; i++) s = s substr(a, int(rand() * 64) + 1, 1);
	printf "%s%s%s", pre, s, suf }')
mkdir -p "$RUN/tmp"
cat >"$RUN/nginx.conf" <<EOF
worker_processes 1;
worker_rlimit_nofile 16384;
pid $RUN/nginx.pid;
error_log $RUN/nginx.log warn;
daemon off;
events { worker_connections 8192; }
http {
    access_log off;
    server_tokens off;
    keepalive_requests 100000000;
    keepalive_timeout 120s;
    client_body_temp_path $RUN/tmp/cb;
    proxy_temp_path $RUN/tmp/px;
    fastcgi_temp_path $RUN/tmp/fc;
    uwsgi_temp_path $RUN/tmp/uw;
    scgi_temp_path $RUN/tmp/sc;
    server {
        listen unix:$RUN/nginx.sock backlog=4096;
        location = /v1/token/demo {
            default_type application/json;
            return 200 '$N_BODY';
        }
        location / { return 404; }
    }
}
EOF
nginx -p "$RUN" -e "$RUN/nginx.log" -c "$RUN/nginx.conf" &
SRV_PID[nginx]=$!
N_SOCK=$RUN/nginx.sock
wait_ok /v1/token/demo "$N_SOCK" || die "nginx did not start: $(cat "$RUN/nginx.log")"
read -r N_CODE N_LEN N_HEAD < <(curl -s -o /dev/null -w '%{http_code} %{size_download} %{size_header}\n' \
	--unix-socket "$N_SOCK" http://localhost/v1/token/demo)
[ "$N_CODE" = 200 ] && [ "$N_LEN" = "$B_BODY" ] || die "nginx body: $N_CODE, $N_LEN bytes (want $B_BODY)"
log "bodies: bearerd $B_BODY B (+$B_HEAD B head), nginx $N_LEN B (+$N_HEAD B head)"

# ------------------------------------------------------------- cache hits --
# h2_case SERVER CONC -> appends "server conc rps cpu_us ticks reqs" to $RUN/rows
h2_case() {
	local srv=$1 c=$2 t=1 out c0 c1 rps done_ ok fail err tmo s2xx
	[ "$c" -gt 1 ] && t=2
	out=$RUN/h2load-$srv-c$c.txt
	alive "$srv"
	c0=$(cpu_ticks "$srv")
	timeout $((DUR + 30)) h2load --h1 -t"$t" -c"$c" -D "$DUR" --warm-up-time=1 \
		--base-uri="unix:$RUN/$srv.sock" http://localhost/v1/token/demo >"$out" 2>&1
	local rc=$?
	c1=$(cpu_ticks "$srv")
	# "finished in 11.00s, 45678.90 req/s, ..." (main phase only)
	rps=$(awk '/^finished in/ { v = $4; gsub(",", "", v); printf "%.0f", v }' "$out")
	# "requests: N total, N started, N done, N succeeded, N failed, N errored, N timeout"
	read -r done_ ok fail err tmo < <(awk '/^requests:/ { print $6, $8, $10, $12, $14 }' "$out")
	# "status codes: N 2xx, N 3xx, N 4xx, N 5xx"
	s2xx=$(awk '/^status codes:/ { print $3 }' "$out")
	if [ $rc -ne 0 ] || [ -z "$rps" ] || [ "${ok:-0}" -le 0 ] || [ "${fail:-1}" -ne 0 ] ||
		[ "${err:-1}" -ne 0 ] || [ "${tmo:-1}" -ne 0 ] || [ "${s2xx:-0}" -ne "$ok" ] || [ "$done_" -ne "$ok" ]; then
		cat "$out" >&2
		die "$srv c=$c: h2load exit $rc; $done_ done, $ok succeeded, ${s2xx:-?} 2xx, $fail failed, $err errored, $tmo timeout"
	fi
	# CPU covers the 1 s warm-up + DUR s; requests the main phase: scale by
	# DUR/(DUR+1), as bench-anchors/run_baseline.sh does.
	local us
	us=$(awk -v a="$c0" -v b="$c1" -v n="$ok" -v hz="$CLK_TCK" -v d="$DUR" \
		'BEGIN { printf "%.2f", (b - a) * d / (d + 1) * 1e6 / hz / n }')
	log "$(printf '%-7s c=%-3s %7s req/s  %6s us/req  (%s requests, all 2xx)' "$srv" "$c" "$rps" "$us" "$ok")"
	echo "$srv $c $rps $us $((c1 - c0)) $ok" >>"$RUN/rows"
}
: >"$RUN/rows"
log "cache hit, ${DUR} s per case (+1 s warm-up); $ROUNDS rounds, order alternating"
for r in $(seq 1 "$ROUNDS"); do
	for c in 1 64; do
		if [ $((r % 2)) = 1 ]; then h2_case nginx $c; h2_case bearerd $c
		else h2_case bearerd $c; h2_case nginx $c; fi
	done
done

# ------------------------------------------------------------------ memory --
log "memory: $N_AUD dynamic resources (the dev source signs each one), then $N_CONN connections"
alive bearerd
timeout 120 $PY "$HERE/conns.py" fill "$B_SOCK" "$N_AUD" 4 >"$RUN/fill.txt" 2>&1 ||
	die "filling the cache: $(cat "$RUN/fill.txt")"
FILL_MSG=$(cat "$RUN/fill.txt")
log "$FILL_MSG"
sleep 0.5
read -r MEM1_ANON MEM1_RSS < <(mem)

fd_base=$(ls "/proc/${SRV_PID[bearerd]}/fd" | wc -l)
coproc HOLDER { exec timeout 120 $PY "$HERE/conns.py" hold "$B_SOCK" "$N_CONN" 2>&1; }
HOLD_PID=$HOLDER_PID
hold_expect() { # wait for a line starting with $1 from the holder
	local line
	IFS= read -r -t 60 -u "${HOLDER[0]}" line || die "connection holder: no answer (wanted '$1')"
	[ "${line#"$1"}" != "$line" ] || die "connection holder: $line"
}
hold_expect open
# connections still in the accept queue cost bearerd nothing: wait until it
# holds them all (its fds: the ones before + N_CONN)
for _ in $(seq 1 100); do
	nfd=$(ls "/proc/${SRV_PID[bearerd]}/fd" | wc -l)
	[ "$nfd" -ge $((fd_base + N_CONN)) ] && break
	sleep 0.1
done
[ "$nfd" -ge $((fd_base + N_CONN)) ] || die "bearerd holds only $nfd fds (before: $fd_base) with $N_CONN connections open"
sleep 0.5
read -r MEM2_ANON MEM2_RSS < <(mem)
echo req >&"${HOLDER[1]}"
hold_expect requested
sleep 0.5
read -r MEM3_ANON MEM3_RSS < <(mem)
echo quit >&"${HOLDER[1]}"
wait "$HOLD_PID" 2>/dev/null
HOLD_PID=
alive bearerd
N_CACHED=$(timeout 30 $PY "$HERE/conns.py" count "$B_SOCK" api://bench-resource-) || die "reading /v1/status"
[ "$N_CACHED" = "$N_AUD" ] || die "bearerd lists $N_CACHED bench resources, want $N_AUD (evicted?)"

# ------------------------------------------------------------------ report --
T_END=$(date +%s)
STEAL1=$(awk '/^cpu / { print $9, $2+$3+$4+$5+$6+$7+$8+$9 }' /proc/stat)
STEAL=$(awk -v a="$STEAL0" -v b="$STEAL1" 'BEGIN { split(a, x, " "); split(b, y, " ");
	t = y[2] - x[2]; if (t > 0) printf "%.1f", (y[1] - x[1]) * 100 / t; else print "?" }')
# aggregate per server and concurrency: mean req/s; CPU = all ticks / all requests
agg() { # server conc -> "rps cpu_us"
	awk -v s="$1" -v c="$2" -v hz="$CLK_TCK" -v d="$DUR" '$1 == s && $2 == c { n++; r += $3; t += $5; q += $6 }
		END { printf "%.0f %.2f\n", r / n, t * d / (d + 1) * 1e6 / hz / q }' "$RUN/rows"
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
verdict() { # value limit -> "ok" / "MISSED by X %"
	awk -v v="$1" -v l="$2" 'BEGIN { if (v <= l) print "ok"; else printf "**missed by %.0f %%**", (v - l) * 100 / l }'
}

echo
echo "## bearerd bench $(date -u +%Y-%m-%dT%H:%MZ)"
echo
echo "- host: $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), kernel $(uname -r); loadavg at start $LOAD_START; CPU steal ${STEAL} %; wall $((T_END - T_START)) s"
echo "- bearerd $("$BEARERD" -V 2>&1 | head -1), build dir $BUILD (buildtype ${BUILDTYPE:-?}); $(nginx -v 2>&1 | sed 's/.*: //'); $(h2load --version 2>&1 | head -1)"
echo "- GET /v1/token/demo over a Unix socket, h2load --h1 (-t1 at c=1, -t2 at c=64), ${DUR} s + 1 s warm-up per case, keep-alive;"
echo "  body $B_BODY B for both (heads: bearerd $B_HEAD B, nginx $N_HEAD B); nginx 1 worker, \`return 200\`, access_log off"
echo
echo "| server | conc | run | req/s | server CPU µs/req |"
echo "|---|---:|---:|---:|---:|"
awk '{ k = $1 " " $2; n[k]++; printf "| %s | %s | %d | %s | %s |\n", $1, $2, n[k], $3, $4 }' "$RUN/rows"
echo
echo "| cache hit | bearerd req/s | nginx req/s | ratio | bearerd µs/req | nginx µs/req | ratio |"
echo "|---|---:|---:|---:|---:|---:|---:|"
SUMMARY=()
for c in 1 64; do
	read -r br bc < <(agg bearerd $c)
	read -r nr nc < <(agg nginx $c)
	rr=$(ratio "$br" "$nr")
	cr=$(ratio "$bc" "$nc")
	echo "| c=$c | $br | $nr | $rr | $bc | $nc | $cr |"
	SUMMARY+=("cache-hit c=$c: bearerd $br req/s, nginx $nr req/s, ratio $rr; CPU/req bearerd $bc µs, nginx $nc µs, ratio $cr")
	[ "$c" = 64 ] && { T_RPS=$rr; T_CPU=$cr; }
done
echo
echo "| bearerd memory | RssAnon KiB | VmRSS KiB | target RssAnon |"
echo "|---|---:|---:|---|"
echo "| idle (after start and one token) | $MEM0_ANON | $MEM0_RSS | ≤ 4096: $(verdict "$MEM0_ANON" 4096) |"
echo "| + $N_AUD dynamic resources cached | $MEM1_ANON | $MEM1_RSS | |"
echo "| + $N_CONN connections open, idle (never used) | $MEM2_ANON | $MEM2_RSS | ≤ 32768: $(verdict "$MEM2_ANON" 32768) |"
echo "| + one request on each of them, idle in keep-alive | $MEM3_ANON | $MEM3_RSS | ≤ 32768: $(verdict "$MEM3_ANON" 32768) |"
echo
echo "Fill: $FILL_MSG (4 keep-alive connections); /v1/status afterwards lists $N_CACHED of them."
echo "Targets at c=64: req/s ratio ≥ 1.00 ($(awk -v r="$T_RPS" 'BEGIN { print (r >= 1) ? "ok" : "missed" }')), CPU/req ratio ≤ 1.00 ($(awk -v r="$T_CPU" 'BEGIN { print (r <= 1) ? "ok" : "missed" }'))."
echo
printf '%s\n' "${SUMMARY[@]}"
echo "memory: idle RssAnon $MEM0_ANON KiB (VmRSS $MEM0_RSS), ${N_AUD} audiences + ${N_CONN} conns RssAnon $MEM2_ANON KiB (VmRSS $MEM2_RSS), after one request each RssAnon $MEM3_ANON KiB (VmRSS $MEM3_RSS)"
