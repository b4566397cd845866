#!/usr/bin/env bash
# The per-request floor, in figures that do not move with the machine's noise: user-space
# instructions (callgrind), heap allocations (DHAT's block count) and system calls (strace) per
# keep-alive forward, for the bare Pingora proxy (examples/bare_pingora.rs) and tokengate's
# proxy, both in front of nginx `return 200` with a pooled upstream connection. Each vendored
# Pingora change is measured with it alone, before and after (vendor/README.md).
#
# Instructions and allocations: the server runs under valgrind twice, `ab -k` sends N1 and then
# N2 requests, and the difference of the two totals is divided by N2 - N1, so start-up and
# shutdown cancel out. System calls: strace attached to every thread while ab sends N2.
# Everything runs on 127.0.0.1 and stops by itself.
#
#   bash benches/floor.sh [TARGET...]     # targets: pingora tokengate (default: both)
#   env: N1=500 N2=3000 CONC=10 SKIP_BUILD=1
#        BARE=path (another build of the bare proxy, e.g. against the published Pingora crates)
#        BODY=form: each request a 20-byte url-encoded POST (what tokengate reads ahead and
#        scans for `_method` before anything goes upstream), instead of a GET
set -euo pipefail
cd "$(dirname "$0")/.."
N1=${N1:-500}; N2=${N2:-3000}; CONC=${CONC:-10}
targets=("$@"); [ ${#targets[@]} -gt 0 ] || targets=(pingora tokengate)
for tool in valgrind ab nginx strace; do
  command -v "$tool" >/dev/null || { echo "floor.sh needs $tool (apt: valgrind apache2-utils nginx strace)" >&2; exit 2; }
done
[ -n "${SKIP_BUILD:-}" ] || cargo build --release --locked --quiet --bin tokengate --example bare_pingora

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -INT "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
# shellcheck source=benches/common.sh
. benches/common.sh

read -r up port admin <<<"$(free_ports 3)"
mkdir -p "$work/nginx"
cat > "$work/nginx/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  keepalive_requests 1000000;
  server { listen 127.0.0.1:$up; location / { return 200 'upstream says hi'; } }
}
EOF
nginx -c "$work/nginx/nginx.conf" -p "$work/nginx" -e "$work/nginx/error.log" & pids+=($!)
wait_port "$up"

# tokengate's settings; the bare proxy ignores them. Exported, as valgrind does not follow `env`.
export TOKENGATE_LISTEN=127.0.0.1:$port TOKENGATE_ADMIN_LISTEN=127.0.0.1:$admin \
  TOKENGATE_UPSTREAM=127.0.0.1:$up TOKENGATE_SECRET=floor-benchmark-secret-floor-benchmark-0 \
  TOKENGATE_THREADS=1 TOKENGATE_ACCESS_LOG=false TOKENGATE_LOG=error
server_cmd() { # target -> the command that serves it on $port
  case $1 in
    pingora) echo "${BARE:-./target/release/examples/bare_pingora} 127.0.0.1:$port 127.0.0.1:$up" ;;
    tokengate) echo "./target/release/tokengate" ;;
    *) echo "unknown target $1 (pingora, tokengate)" >&2; return 2 ;;
  esac
}

body=()
if [ "${BODY:-}" = form ]; then
  printf 'caption=a&photo=1234' >"$work/body"
  body=(-p "$work/body" -T application/x-www-form-urlencoded)
fi

load() { # requests
  ab -q -k "${body[@]}" -n "$1" -c "$CONC" "http://127.0.0.1:$port/x" >"$work/ab.out" 2>&1 || true
  local bad
  bad=$(awk '/Failed requests|Non-2xx/ {s += $NF} END {print s + 0}' "$work/ab.out")
  [ "$bad" = 0 ] || { echo "$bad failed or non-2xx requests" >&2; cat "$work/ab.out" >&2; return 1; }
}

stop() { # pid
  kill -INT "$1" 2>/dev/null || true
  for _ in $(seq 150); do kill -0 "$1" 2>/dev/null || break; sleep 0.2; done
  kill -KILL "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}

valgrind_total() { # tool, requests, command... -> the tool's total for that run
  local tool=$1 n=$2 vg out; shift 2
  out=--callgrind-out-file="$work/cg.%p"; [ "$tool" = dhat ] && out=--dhat-out-file=/dev/null
  # shellcheck disable=SC2086
  valgrind --tool="$tool" "$out" $* >"$work/server.log" 2>&1 &
  vg=$!
  wait_port "$port"
  load "$n"
  stop "$vg"
  if [ "$tool" = callgrind ]; then
    cat "$work"/cg.* | awk '/^summary:/ {s += $2} END {print s}'
    rm -f "$work"/cg.*
  else
    # "==PID== Total:     1,234 bytes in 56 blocks"
    awk '/Total:/ && /blocks/ {gsub(",", "", $(NF-1)); print $(NF-1); exit}' "$work/server.log"
  fi
}

per_request() { # tool, command...
  local a b
  a=$(valgrind_total "$1" "$N1" "${@:2}")
  b=$(valgrind_total "$1" "$N2" "${@:2}")
  awk -v a="$a" -v b="$b" -v n=$((N2 - N1)) 'BEGIN {printf "%.1f", (b - a) / n}'
}

syscalls() { # command...
  local pid st
  # shellcheck disable=SC2086
  $* >/dev/null 2>&1 &
  pid=$!
  wait_port "$port"
  load 100 # opens and pools the upstream connections
  strace -f -c -o "$work/strace" -p "$pid" 2>/dev/null &
  st=$!
  sleep 1 # strace attaches to each thread after it starts; there is no signal for "attached to all"
  load "$N2"
  kill -INT "$st"; wait "$st" 2>/dev/null || true
  stop "$pid"
  awk -v n="$N2" '$NF ~ /^[a-z_0-9]+$/ && $4 ~ /^[0-9]+$/ && $NF != "total" {s += $4}
    END {printf "%.2f", s / n}' "$work/strace"
}

printf '%-10s %14s %12s %10s\n' target instructions allocations syscalls
for t in "${targets[@]}"; do
  cmd=$(server_cmd "$t")
  ir=$(per_request callgrind "$cmd")
  al=$(per_request dhat "$cmd")
  sc=$(syscalls "$cmd")
  printf '%-10s %14s %12s %10s\n' "$t" "$ir" "$al" "$sc"
done
