#!/usr/bin/env bash
# tests/bench/proxy-bench.sh - bearerd's token-stamping proxy against nginx
# (reverse proxy, upstream keepalive, static proxy_set_header Authorization),
# squid and tinyproxy (forward proxies adding the header), all in one run
# against the same upstream (nginx, 1 worker, `return 200` of 128 bytes):
# small-body keep-alive requests with wrk at 1, 64 and 256 connections.
# Prints req/s, p50/p99, the proxy's CPU µs per request (utime+stime from
# /proc/PID/stat, children included) and ratios against nginx.  Not part of
# scripts/check.
#
#   tests/bench/proxy-bench.sh              # as root it apt-get installs what is missing
#   PDUR=2 tests/bench/proxy-bench.sh       # quicker
#
# Knobs: PDUR (s per case, default 5), CONCS (default "1 64 256"), BASE_PORT
# (default 18180, uses 6 ports), BUILD_DIR (default build-bench, set up with
# -Dbuildtype=release if missing), SKIP_SQUID=1, SKIP_TINYPROXY=1.
# Loopback only.  Everything started here is stopped by PID and the temporary
# folder removed on exit.
set -uo pipefail
export LC_ALL=C

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
PDUR=${PDUR:-5}
CONCS=${CONCS:-"1 64 256"}
BASE_PORT=${BASE_PORT:-18180}
BUILD=${BUILD_DIR:-build-bench}
SKIP_SQUID=${SKIP_SQUID:-0}
SKIP_TINYPROXY=${SKIP_TINYPROXY:-0}

P_UP=$BASE_PORT
P_NGX=$((BASE_PORT + 1))
P_TP=$((BASE_PORT + 2))
P_SQ=$((BASE_PORT + 3))
P_BF=$((BASE_PORT + 4)) # bearerd forward proxy
P_BB=$((BASE_PORT + 5)) # bearerd base-URL listener

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# ------------------------------------------------------------ packages --
need=()
command -v nginx >/dev/null || need+=(nginx-light)
command -v wrk >/dev/null || need+=(wrk)
[ "$SKIP_SQUID" = 1 ] || command -v squid >/dev/null || need+=(squid)
[ "$SKIP_TINYPROXY" = 1 ] || command -v tinyproxy >/dev/null || need+=(tinyproxy)
if [ ${#need[@]} -gt 0 ]; then
	if [ "$(id -u)" = 0 ]; then
		log "installing ${need[*]}"
		if ! apt-get update -qq || ! DEBIAN_FRONTEND=noninteractive \
			apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null; then
			log "apt-get failed"
			exit 1
		fi
		# the packages' own services are not wanted
		for s in squid tinyproxy nginx; do
			systemctl stop "$s" 2>/dev/null || service "$s" stop 2>/dev/null || true
		done
	else
		log "missing ${need[*]}: run as root or install them"
		exit 1
	fi
fi
command -v squid >/dev/null || SKIP_SQUID=1
command -v tinyproxy >/dev/null || SKIP_TINYPROXY=1

# --------------------------------------------------------------- build --
cd "$ROOT" || exit 1
if [ ! -d "$BUILD" ]; then
	meson setup "$BUILD" -Dbuildtype=release -Dman=disabled >/dev/null || exit 1
fi
ninja -C "$BUILD" daemon/bearerd client/bearerctl >/dev/null || exit 1
BEARERD=$ROOT/$BUILD/daemon/bearerd

for p in $P_UP $P_NGX $P_TP $P_SQ $P_BF $P_BB; do
	if ss -Htln "sport = :$p" | grep -q .; then
		log "port $p already in use; set BASE_PORT"
		exit 1
	fi
done

RUN=$(mktemp -d /tmp/proxybench.XXXXXX)
chmod 755 "$RUN"
mkdir -p "$RUN/tmp"

declare -A SRV_PID
cleanup() {
	local n p
	for n in "${!SRV_PID[@]}"; do kill -TERM "${SRV_PID[$n]}" 2>/dev/null; done
	for _ in $(seq 1 50); do
		p=0
		for n in "${!SRV_PID[@]}"; do kill -0 "${SRV_PID[$n]}" 2>/dev/null && p=1; done
		[ $p = 0 ] && break
		sleep 0.1
	done
	for n in "${!SRV_PID[@]}"; do kill -KILL "${SRV_PID[$n]}" 2>/dev/null; done
	wait 2>/dev/null
	rm -rf "$RUN"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

srv_pids() {
	echo "${SRV_PID[$1]}"
	ps -o pid= --ppid "${SRV_PID[$1]}" 2>/dev/null
}
cpu_ticks() {
	local sum=0 p f
	for p in $(srv_pids "$1"); do
		f=$(cut -d' ' -f14,15 "/proc/$p/stat" 2>/dev/null) || continue
		[ -n "$f" ] && sum=$((sum + ${f% *} + ${f#* }))
	done
	echo "$sum"
}
CLK_TCK=$(getconf CLK_TCK)

wait_ready() {
	for _ in $(seq 1 100); do
		curl -s -o /dev/null --max-time 1 "$@" && return 0
		sleep 0.1
	done
	return 1
}

# ------------------------------------------------------------- configs --
# nginx and squid stamp a static token as long as the one bearerd stamps.
TOKEN=$(head -c 900 /dev/urandom | base64 -w0 | tr '+/' '-_' | head -c 1100)
SMALL_BODY=$(printf 'upstream-ok %0116d\n' 0) # 128 bytes

nginx_common() {
	cat <<EOF
worker_processes 1;
worker_rlimit_nofile 16384;
pid $RUN/$1.pid;
error_log $RUN/$1.err warn;
daemon off;
events { worker_connections 8192; }
http {
    access_log off;
    server_tokens off;
    keepalive_requests 100000000;
    keepalive_timeout 120s;
    client_body_temp_path $RUN/tmp/$1-cb;
    proxy_temp_path $RUN/tmp/$1-px;
    fastcgi_temp_path $RUN/tmp/$1-fc;
    uwsgi_temp_path $RUN/tmp/$1-uw;
    scgi_temp_path $RUN/tmp/$1-sc;
EOF
}

{
	nginx_common upstream
	cat <<EOF
    server {
        listen 127.0.0.1:$P_UP backlog=4096;
        location = /small { default_type text/plain; return 200 '$SMALL_BODY'; }
        location = /check { default_type text/plain; return 200 '\$http_authorization'; }
    }
}
EOF
} >"$RUN/upstream.conf"

{
	nginx_common rproxy
	cat <<EOF
    upstream up { server 127.0.0.1:$P_UP; keepalive 256; }
    server {
        listen 127.0.0.1:$P_NGX backlog=4096;
        location / {
            proxy_pass http://up;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Authorization "Bearer $TOKEN";
        }
    }
}
EOF
} >"$RUN/rproxy.conf"

cat >"$RUN/tinyproxy.conf" <<EOF
Port $P_TP
Listen 127.0.0.1
Timeout 120
MaxClients 2048
LogFile "$RUN/tinyproxy.log"
LogLevel Error
PidFile "$RUN/tinyproxy.pid"
Allow 127.0.0.1
DisableViaHeader Yes
AddHeader "Authorization" "Bearer $TOKEN"
EOF

mkdir -p "$RUN/squid"
chown proxy:proxy "$RUN/squid" 2>/dev/null
cat >"$RUN/squid.conf" <<EOF
http_port 127.0.0.1:$P_SQ
visible_hostname bench.invalid
acl lo src 127.0.0.1/32
http_access allow lo
http_access deny all
cache deny all
cache_mem 8 MB
access_log none
cache_store_log none
cache_log $RUN/squid/cache.log
pid_filename $RUN/squid/squid.pid
coredump_dir $RUN/squid
pinger_enable off
workers 1
max_filedescriptors 16384
shutdown_lifetime 1 seconds
via off
forwarded_for transparent
client_persistent_connections on
server_persistent_connections on
request_header_add Authorization "Bearer $TOKEN" all
EOF

cat >"$RUN/bearerd.conf" <<EOF
[bearerd]
socket = $RUN/bearerd.sock
log_level = warning

[identity "dev"]
source = dev
roles = Sample.Read Sample.Write

[audience "bench"]
identity = dev
resource = api://bench
prefetch = yes

[proxy]
listen = 127.0.0.1:$P_BF
max_connections = 4096

[route "bench"]
match = 127.0.0.1:$P_UP
audience = bench
upstream = http://127.0.0.1:$P_UP
listen = 127.0.0.1:$P_BB
overwrite = yes
EOF

# wrk sends absolute-form requests to forward proxies through this script
cat >"$RUN/absuri.lua" <<EOF
wrk.path = "http://127.0.0.1:$P_UP/small"
wrk.headers["Host"] = "127.0.0.1:$P_UP"
EOF

# ------------------------------------------------------------- servers --
ulimit -n 65536 2>/dev/null
nginx -p "$RUN" -e "$RUN/upstream.err" -c "$RUN/upstream.conf" &
SRV_PID[upstream]=$!
nginx -p "$RUN" -e "$RUN/rproxy.err" -c "$RUN/rproxy.conf" &
SRV_PID[nginx]=$!
if [ "$SKIP_TINYPROXY" != 1 ]; then
	tinyproxy -d -c "$RUN/tinyproxy.conf" >"$RUN/tinyproxy.out" 2>&1 &
	SRV_PID[tinyproxy]=$!
fi
if [ "$SKIP_SQUID" != 1 ]; then
	squid -N -f "$RUN/squid.conf" >"$RUN/squid.out" 2>&1 &
	SRV_PID[squid]=$!
fi
"$BEARERD" -c "$RUN/bearerd.conf" >"$RUN/bearerd.log" 2>&1 &
SRV_PID[bearerd]=$!

wait_ready "http://127.0.0.1:$P_UP/small" || { log "upstream did not start"; exit 1; }
wait_ready "http://127.0.0.1:$P_NGX/small" || { log "nginx did not start"; exit 1; }
wait_ready "http://127.0.0.1:$P_BB/small" || { log "bearerd did not start"; cat "$RUN/bearerd.log"; exit 1; }
if [ "$SKIP_TINYPROXY" != 1 ] && ! wait_ready -x "http://127.0.0.1:$P_TP" "http://127.0.0.1:$P_UP/small"; then
	log "tinyproxy did not start; going on without it"
	SKIP_TINYPROXY=1
fi
if [ "$SKIP_SQUID" != 1 ] && ! wait_ready -x "http://127.0.0.1:$P_SQ" "http://127.0.0.1:$P_UP/small"; then
	log "squid did not start; going on without it"
	SKIP_SQUID=1
fi

# every proxy really stamps
check() {
	local what=$1
	shift
	case "$(curl -s --max-time 5 "$@")" in
	"Bearer "?*) log "check: $what stamps a Bearer token" ;;
	*) log "check: $what did NOT stamp a token"; exit 1 ;;
	esac
}
check "nginx" "http://127.0.0.1:$P_NGX/check"
check "bearerd base-URL" "http://127.0.0.1:$P_BB/check"
check "bearerd forward" -x "http://127.0.0.1:$P_BF" "http://127.0.0.1:$P_UP/check"
[ "$SKIP_TINYPROXY" = 1 ] || check "tinyproxy" -x "http://127.0.0.1:$P_TP" "http://127.0.0.1:$P_UP/check"
[ "$SKIP_SQUID" = 1 ] || check "squid" -x "http://127.0.0.1:$P_SQ" "http://127.0.0.1:$P_UP/check"
BEARER_LEN=$(curl -s "http://127.0.0.1:$P_BB/check" | wc -c)

# ---------------------------------------------------------------- runs --
declare -A RPS P50 P99 CPU ERR
# run NAME CPU-SERVER URL CONC [LUA]
run() {
	local name=$1 srv=$2 url=$3 c=$4 lua=${5:-} t=2 out c0 c1 n
	[ "$c" -le 1 ] && t=1
	out=$RUN/wrk-$name-$c.txt
	c0=$(cpu_ticks "$srv")
	timeout $((PDUR + 20)) wrk -t"$t" -c"$c" -d"${PDUR}s" --timeout 5s --latency \
		${lua:+-s "$lua"} "$url" >"$out" 2>&1
	c1=$(cpu_ticks "$srv")
	n=$(awk '/requests in/ { print $1 }' "$out")
	RPS[$name,$c]=$(awk '/^Requests\/sec:/ { printf "%.0f", $2 }' "$out")
	read -r "P50[$name,$c]" "P99[$name,$c]" < <(awk '
		function ms(v) { if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0; if (v ~ /s$/) return v * 1000; return v }
		$1 == "50%" { a = ms($2) } $1 == "99%" { b = ms($2) }
		END { printf "%.3f %.3f\n", a, b }' "$out")
	CPU[$name,$c]=$(awk -v a="$c0" -v b="$c1" -v n="${n:-0}" -v hz="$CLK_TCK" \
		'BEGIN { if (n > 0) printf "%.1f", (b - a) * 1e6 / hz / n; else print "-" }')
	ERR[$name,$c]=$(awk '/Non-2xx/ { s += $NF } /Socket errors/ { gsub(",", ""); s += $4 + $6 + $8 + $10 } END { print s + 0 }' "$out")
	log "$(printf '%-16s c=%-3s %8s req/s  p50 %7s ms  p99 %7s ms  cpu %6s us/req  errors %s' \
		"$name" "$c" "${RPS[$name,$c]:-0}" "${P50[$name,$c]}" "${P99[$name,$c]}" "${CPU[$name,$c]}" "${ERR[$name,$c]}")"
}

NAMES="nginx bearerd-base bearerd-forward"
[ "$SKIP_SQUID" = 1 ] || NAMES="$NAMES squid"
[ "$SKIP_TINYPROXY" = 1 ] || NAMES="$NAMES tinyproxy"
for c in $CONCS; do
	for name in $NAMES; do
		case $name in
		nginx) run nginx nginx "http://127.0.0.1:$P_NGX/small" "$c" ;;
		bearerd-base) run bearerd-base bearerd "http://127.0.0.1:$P_BB/small" "$c" ;;
		bearerd-forward) run bearerd-forward bearerd "http://127.0.0.1:$P_BF/" "$c" "$RUN/absuri.lua" ;;
		squid) run squid squid "http://127.0.0.1:$P_SQ/" "$c" "$RUN/absuri.lua" ;;
		tinyproxy) run tinyproxy tinyproxy "http://127.0.0.1:$P_TP/" "$c" "$RUN/absuri.lua" ;;
		esac
	done
done

# -------------------------------------------------------------- report --
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a + 0 > 0 && b + 0 > 0) printf "%.2f", a / b; else print "-" }'; }
echo
echo "## Proxy with token stamping: 128-byte responses, keep-alive, wrk, ${PDUR} s per case"
echo
echo "$(nproc) CPUs, $(uname -r); $(nginx -v 2>&1 | sed 's/.*: //'); wrk $(wrk -v 2>&1 | awk 'NR == 1 { print $2 }');" \
	"Authorization header: ${BEARER_LEN} bytes from bearerd, $((${#TOKEN} + 7)) static elsewhere."
echo "CPU = the proxy's own user+system CPU per request. Ratios are against nginx at the same concurrency."
echo
echo "| proxy | conc | req/s | p50 ms | p99 ms | CPU µs/req | req/s vs nginx | CPU vs nginx | errors |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
for c in $CONCS; do
	for name in $NAMES; do
		echo "| $name | $c | ${RPS[$name,$c]:-0} | ${P50[$name,$c]} | ${P99[$name,$c]} | ${CPU[$name,$c]} |" \
			"$(ratio "${RPS[$name,$c]:-0}" "${RPS[nginx,$c]:-0}") | $(ratio "${CPU[$name,$c]}" "${CPU[nginx,$c]}") | ${ERR[$name,$c]} |"
	done
done
echo
echo "tinyproxy closes every client connection after one response (wrk counts each as a socket error)."
