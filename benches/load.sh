#!/usr/bin/env bash
# Load benchmark, side by side on this machine, one worker each:
#   nginx-200    nginx answering `return 200` (the floor of an HTTP/1.1 answer)
#   nginx-proxy  nginx reverse-proxying to nginx-200
#   tg-token     tokengate's POST /api/v1/token with the seed's request
#   tg-proxy     tokengate forwarding to nginx-200
# Each is driven by wrk with the same settings, in alternating rounds; the script prints the
# median requests/s, p50 and p99 per target and the ratios, then tokengate's RSS with 1,000
# keep-alive connections open under load. Everything it starts is on 127.0.0.1 and is stopped
# on exit; its run time is bounded by ROUNDS x 4 x DURATION plus the RSS run.
#
#   bash benches/load.sh                       # ROUNDS=3 DURATION=5 CONNECTIONS=50
#   ROUNDS=5 DURATION=10 bash benches/load.sh
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS="${ROUNDS:-3}"
DURATION="${DURATION:-5}"
CONNECTIONS="${CONNECTIONS:-50}"
RSS_CONNECTIONS="${RSS_CONNECTIONS:-1000}"

need=()
command -v nginx >/dev/null || need+=(nginx)
command -v wrk >/dev/null || need+=(wrk)
if [ "${#need[@]}" -gt 0 ]; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
bash .ci/setup
cargo build --release --locked --quiet --bin tokengate
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "nothing listens on $1" >&2; return 1
}

P200=$(free_port); PPROXY=$(free_port); PTG=$(free_port); PADMIN=$(free_port)

nginx_conf() { # name, server block
  mkdir -p "$work/$1"
  cat > "$work/$1/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $work/$1/nginx.pid;
error_log $work/$1/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  upstream backend { server 127.0.0.1:$P200; keepalive 128; }
  $2
}
EOF
}
nginx_conf n200 "server { listen 127.0.0.1:$P200; location / { return 200 'upstream says hi'; } }"
nginx_conf nproxy "server { listen 127.0.0.1:$PPROXY; location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection \"\"; } }"
nginx -c "$work/n200/nginx.conf" -p "$work/n200" -e "$work/n200/error.log" & pids+=($!)
nginx -c "$work/nproxy/nginx.conf" -p "$work/nproxy" -e "$work/nproxy/error.log" & pids+=($!)

cat > "$work/tokengate.yaml" <<EOF
tokengate:
  secret: load-benchmark-secret-load-benchmark-0000
  rate_limit: {mints: 0}
  access_log: false
  log: warn
EOF
TOKENGATE_LISTEN="127.0.0.1:$PTG" TOKENGATE_ADMIN_LISTEN="127.0.0.1:$PADMIN" \
TOKENGATE_UPSTREAM="127.0.0.1:$P200" TOKENGATE_THREADS=1 \
  ./target/release/tokengate -c "$work/tokengate.yaml" > /dev/null 2>"$work/tokengate.log" & pids+=($!)
TG_PID=$!
for p in "$P200" "$PPROXY" "$PTG"; do wait_port "$p"; done

TOKEN=$(./target/release/tokengate -c "$work/tokengate.yaml" sign --user-id f551a1cb-930e-4501-87a9-f51a0718da3e --ttl 1h)
cat > "$work/token.lua" <<EOF
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.headers["Authorization"] = 'Token token="$TOKEN"'
wrk.body = "permission=%7B%22abilities%22%3A%7B%22album_id%22%3A%7B%22Access%22%3A%7B%22see%22%3Atrue%2C%22image_list%22%3Atrue%2C%22image_upload%22%3Atrue%2C%22image_delete%22%3Atrue%2C%22fullscreen%22%3Atrue%2C%22image_caption%22%3Atrue%7D%7D%2C%22tags%22%3A%7B%22auto_tag%22%3A%22test%22%7D%7D%2C%22Id%22%3A%22album_id%22%7D"
-- Count non-2xx answers: a benchmark of refusals would measure the wrong thing.
done = function(summary, latency, requests)
  io.write(string.format("non2xx %d\n", summary.errors.status))
end
EOF
cat > "$work/get.lua" <<'EOF'
done = function(summary, latency, requests)
  io.write(string.format("non2xx %d\n", summary.errors.status))
end
EOF

declare -A URL SCRIPT
URL[nginx-200]="http://127.0.0.1:$P200/images"; SCRIPT[nginx-200]="$work/get.lua"
URL[nginx-proxy]="http://127.0.0.1:$PPROXY/images"; SCRIPT[nginx-proxy]="$work/get.lua"
URL[tg-token]="http://127.0.0.1:$PTG/api/v1/token"; SCRIPT[tg-token]="$work/token.lua"
URL[tg-proxy]="http://127.0.0.1:$PTG/images"; SCRIPT[tg-proxy]="$work/get.lua"
TARGETS=(nginx-200 nginx-proxy tg-token tg-proxy)

# wrk's latency lines read like "50%  1.23ms"; normalise to microseconds.
to_us() { awk '{ v=$1; u=v; gsub(/[0-9.]/,"",u); gsub(/[a-z]/,"",v);
  if (u=="us") print v; else if (u=="ms") print v*1000; else if (u=="s") print v*1000000; else print v }'; }

for round in $(seq "$ROUNDS"); do
  for t in "${TARGETS[@]}"; do
    out=$(timeout $((DURATION + 10)) wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency -s "${SCRIPT[$t]}" "${URL[$t]}")
    non2xx=$(awk '/^non2xx/ {print $2}' <<<"$out")
    if [ "${non2xx:-0}" != "0" ]; then echo "$t: $non2xx non-2xx answers" >&2; echo "$out" >&2; exit 1; fi
    rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
    p50=$(awk '$1=="50%" {print $2}' <<<"$out" | to_us)
    p99=$(awk '$1=="99%" {print $2}' <<<"$out" | to_us)
    echo "$t $rps $p50 $p99" >> "$work/results"
    printf 'round %d %-12s %10.0f req/s  p50 %8.0f us  p99 %8.0f us\n' "$round" "$t" "$rps" "$p50" "$p99"
  done
done

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
declare -A RPS P50 P99
for t in "${TARGETS[@]}"; do
  RPS[$t]=$(awk -v t="$t" '$1==t {print $2}' "$work/results" | median)
  P50[$t]=$(awk -v t="$t" '$1==t {print $3}' "$work/results" | median)
  P99[$t]=$(awk -v t="$t" '$1==t {print $4}' "$work/results" | median)
done

# RSS with many keep-alive connections open, under load through the proxy.
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$TG_PID/status"; }
timeout $((DURATION + 10)) wrk -t1 -c"$RSS_CONNECTIONS" -d"${DURATION}s" "${URL[tg-proxy]}" > "$work/rss.out" &
wrk_pid=$!
peak=0
while kill -0 "$wrk_pid" 2>/dev/null; do
  r=$(rss_kib); [ "$r" -gt "$peak" ] && peak=$r
  sleep 0.2
done
wait "$wrk_pid" || true

echo
echo "median of $ROUNDS rounds, ${DURATION}s each, wrk -t1 -c$CONNECTIONS, one worker per server, $(nproc) cores"
printf '%-12s %12s %10s %10s\n' target req/s p50_us p99_us
for t in "${TARGETS[@]}"; do printf '%-12s %12.0f %10.0f %10.0f\n' "$t" "${RPS[$t]}" "${P50[$t]}" "${P99[$t]}"; done
echo
awk -v a="${RPS[tg-token]}" -v b="${RPS[nginx-200]}" 'BEGIN {printf "token endpoint req/s / nginx return-200 req/s   %.2f  (target >= 0.6)\n", a/b}'
awk -v a="${RPS[tg-proxy]}" -v b="${RPS[nginx-proxy]}" 'BEGIN {printf "proxy req/s / nginx proxy req/s                 %.2f  (target >= 1.0)\n", a/b}'
awk -v a="${P99[tg-proxy]}" -v b="${P99[nginx-proxy]}" 'BEGIN {printf "proxy p99 / nginx proxy p99                     %.2f  (target <= 1.0)\n", a/b}'
echo "tokengate peak RSS with $RSS_CONNECTIONS keep-alive connections under load: $((peak / 1024)) MiB (target <= 32)"
