#!/usr/bin/env bash
# The load benchmark on every protocol a gateway speaks to its clients, side by side, one worker
# each, all in front of nginx `return 200` over plaintext HTTP/1.1:
#   tg-proxy      tokengate forwarding without a token
#   tg-auth       tokengate forwarding with a valid HS256 token (verify, identity, X-token)
#   pingora       bare Pingora 0.9 (examples/bare_pingora.rs), h2c and TLS listeners
#   haproxy       HAProxy 2.6 reverse proxy
#   haproxy-jwt   HAProxy verifying the same token with jwt_verify (as benches/load.sh)
#   nginx         nginx reverse proxy (keepalive_requests high: its default of 1,000 closes h2
#                 connections and spoils the count)
# Columns, CPU µs per request (or per connection for handshakes) of the server's whole process
# tree, median of ROUNDS alternating rounds:
#   https1     HTTPS/1.1, wrk -t1 -c50, keep-alive
#   h2         HTTP/2 over TLS (ALPN), h2load -c10 -m10
#   h2c        HTTP/2 with prior knowledge, h2load -c10 -m10
#   full       a full TLS 1.3 handshake and one request (openssl s_time -new)
#   resumed    a resumed handshake and one request (openssl s_time -reuse)
#   rss        peak RSS (MiB) with RSS_CONNECTIONS keep-alive TLS connections under load
#   tls_rps    req/s at RSS_CONNECTIONS TLS connections
# ECDSA P-256 certificate, TLS 1.3 wherever the client allows it. Everything is on 127.0.0.1
# and stops on exit; the run is bounded by ROUNDS x 6 targets x 5 loads x DURATION.
#
#   bash benches/protocols.sh               # ROUNDS=3 DURATION=5 REQUESTS=200000
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS="${ROUNDS:-3}"
DURATION="${DURATION:-5}"
REQUESTS="${REQUESTS:-200000}"
RSS_CONNECTIONS="${RSS_CONNECTIONS:-1000}"
SECRET=load-benchmark-secret-load-benchmark-0000

for tool in nginx haproxy wrk h2load openssl; do
  command -v "$tool" >/dev/null || { echo "protocols.sh needs $tool (apt: nginx haproxy wrk nghttp2-client openssl)" >&2; exit 2; }
done
[ -n "${SKIP_BUILD:-}" ] || cargo build --release --locked --quiet --bin tokengate --example bare_pingora
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
TICKS=$(getconf CLK_TCK)

# shellcheck source=benches/common.sh
. benches/common.sh
scratch

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=localhost \
  -addext subjectAltName=IP:127.0.0.1,DNS:localhost \
  -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
cat "$work/cert.pem" "$work/key.pem" > "$work/both.pem"

read -r P200 TG TG_TLS TG_ADMIN BARE BARE_TLS HA HA_TLS HAJ HAJ_TLS NG NG_H2C NG_TLS <<<"$(free_ports 13)"

nginx_conf n200 "server { listen 127.0.0.1:$P200; location / { return 200 'upstream says hi'; } }"
nginx_conf nginx "ssl_certificate $work/cert.pem;
  ssl_certificate_key $work/key.pem;
  ssl_protocols TLSv1.3;
  ssl_session_cache shared:tls:10m;
  server {
    listen 127.0.0.1:$NG;
    listen 127.0.0.1:$NG_H2C http2;
    listen 127.0.0.1:$NG_TLS ssl http2;
    location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection \"\"; }
  }"
nginx -c "$work/n200/nginx.conf" -p "$work/n200" -e "$work/n200/error.log" & pids+=($!)
nginx -c "$work/nginx/nginx.conf" -p "$work/nginx" -e "$work/nginx/error.log" 2>/dev/null & pids+=($!); NG_PID=$!

tls_bind() { echo "  bind 127.0.0.1:$1 ssl crt $work/both.pem alpn h2,http/1.1 ssl-min-ver TLSv1.3"; }
haproxy_conf haproxy "$HA" "$(tls_bind "$HA_TLS")" ""
haproxy_conf haproxy-jwt "$HAJ" "$(tls_bind "$HAJ_TLS")" "$(haproxy_jwt_rules)"
haproxy -db -f "$work/haproxy.cfg" & pids+=($!); HA_PID=$!
haproxy -db -f "$work/haproxy-jwt.cfg" & pids+=($!); HAJ_PID=$!

./target/release/examples/bare_pingora "127.0.0.1:$BARE" "127.0.0.1:$P200" \
  "127.0.0.1:$BARE_TLS" "$work/cert.pem" "$work/key.pem" >/dev/null 2>&1 & pids+=($!); BARE_PID=$!

cat > "$work/tokengate.yaml" <<EOF
tokengate:
  secret: $SECRET
  rate_limit: {mints: 0}
  access_log: false
  log: warn
  h2c: true
  tls: {listen: 127.0.0.1:$TG_TLS, certificates: [{cert: $work/cert.pem, key: $work/key.pem}]}
EOF
TOKENGATE_LISTEN="127.0.0.1:$TG" TOKENGATE_ADMIN_LISTEN="127.0.0.1:$TG_ADMIN" \
TOKENGATE_UPSTREAM="127.0.0.1:$P200" TOKENGATE_THREADS=1 \
  ./target/release/tokengate -c "$work/tokengate.yaml" > /dev/null 2>"$work/tokengate.log" & pids+=($!)
TG_PID=$!
for p in "$P200" "$TG" "$TG_TLS" "$BARE" "$BARE_TLS" "$HA" "$HA_TLS" "$HAJ" "$HAJ_TLS" "$NG" "$NG_H2C" "$NG_TLS"; do
  wait_port "$p"
done
TOKEN=$(./target/release/tokengate -c "$work/tokengate.yaml" sign --user-id f551a1cb-930e-4501-87a9-f51a0718da3e --ttl 1h)
AUTH="Authorization: Bearer $TOKEN"

wrk_scripts "$TOKEN"

TARGETS=(tg-proxy tg-auth pingora haproxy haproxy-jwt nginx)
declare -A PLAIN TLSP H2CP PID HEADER
PLAIN=([tg-proxy]=$TG [tg-auth]=$TG [pingora]=$BARE [haproxy]=$HA [haproxy-jwt]=$HAJ [nginx]=$NG)
TLSP=([tg-proxy]=$TG_TLS [tg-auth]=$TG_TLS [pingora]=$BARE_TLS [haproxy]=$HA_TLS [haproxy-jwt]=$HAJ_TLS [nginx]=$NG_TLS)
H2CP=([tg-proxy]=$TG [tg-auth]=$TG [pingora]=$BARE [haproxy]=$HA [haproxy-jwt]=$HAJ [nginx]=$NG_H2C)
PID=([tg-proxy]=$TG_PID [tg-auth]=$TG_PID [pingora]=$BARE_PID [haproxy]=$HA_PID [haproxy-jwt]=$HAJ_PID [nginx]=$NG_PID)
authorized() { [ "$1" = tg-auth ] || [ "$1" = haproxy-jwt ]; }

# Every job must really be done: HAProxy refuses a forged token, tokengate echoes a valid one
# (it verified it), and every load below checks that each answer is a 2xx.
code=$(curl -sk -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $(forged "$TOKEN")" "https://127.0.0.1:$HAJ_TLS/images")
[ "$code" = 401 ] || { echo "haproxy-jwt let a forged token through ($code)" >&2; exit 1; }
curl -sk -D - -o /dev/null -H "$AUTH" "https://127.0.0.1:$TG_TLS/images" | grep -qi '^x-token:' \
  || { echo "tokengate did not verify the token" >&2; exit 1; }

# CPU µs per unit of the target's server while "$@" runs; the command prints the unit count.
measure() { # target, command...
  local t=$1 before after units
  shift
  before=$(cpu_ticks "${PID[$t]}")
  units=$("$@")
  after=$(cpu_ticks "${PID[$t]}")
  [ "${units:-0}" -gt 0 ] || { echo "$t: nothing served by $*" >&2; exit 1; }
  awk -v d=$((after - before)) -v n="$units" -v hz="$TICKS" 'BEGIN {printf "%.1f", d * 1e6 / hz / n}'
}
https1() { # target -> requests
  local script=get.lua out
  authorized "$1" && script=auth.lua
  out=$(timeout $((DURATION + 10)) wrk -t1 -c50 -d"${DURATION}s" -s "$work/$script" "https://127.0.0.1:${TLSP[$1]}/images")
  [ "$(awk '/^non2xx/ {print $2}' <<<"$out")" = 0 ] || { echo "$1: non-2xx over HTTPS" >&2; return 1; }
  awk '/requests in/ {print $1}' <<<"$out"
}
h2() { # target, scheme, port -> requests
  local header=() out
  authorized "$1" && header=(-H "$AUTH")
  out=$(timeout 120 h2load -c10 -m10 -n"$REQUESTS" "${header[@]}" "$2://127.0.0.1:$3/images")
  grep -q "status codes: $REQUESTS 2xx" <<<"$out" || { echo "$1: $out" >&2; return 1; }
  echo "$REQUESTS"
}
handshakes() { # target, -new | -reuse -> connections
  local out
  out=$(printf '' | timeout $((DURATION + 10)) openssl s_time -connect "127.0.0.1:${TLSP[$1]}" \
    -www /images "$2" -time "$DURATION" 2>/dev/null)
  awk '/connections in/ && /real seconds/ {print $1; exit}' <<<"$out"
}

for round in $(seq "$ROUNDS"); do
  for t in "${TARGETS[@]}"; do
    a=$(measure "$t" https1 "$t")
    b=$(measure "$t" h2 "$t" https "${TLSP[$t]}")
    c=$(measure "$t" h2 "$t" http "${H2CP[$t]}")
    d=$(measure "$t" handshakes "$t" -new)
    e=$(measure "$t" handshakes "$t" -reuse)
    echo "$t $a $b $c $d $e" >> "$work/results"
    printf 'round %d %-12s https1 %6s  h2 %6s  h2c %6s  full %7s  resumed %7s  (CPU us)\n' "$round" "$t" "$a" "$b" "$c" "$d" "$e"
  done
done

# Peak RSS and req/s with many keep-alive TLS connections open, under load.
many_tls() { # target -> "rss_MiB req/s"
  local script=get.lua peak=0 r p wrk_pid
  authorized "$1" && script=auth.lua
  timeout $((DURATION + 20)) wrk -t1 -c"$RSS_CONNECTIONS" -d"${DURATION}s" -s "$work/$script" \
    "https://127.0.0.1:${TLSP[$1]}/images" > "$work/many.out" &
  wrk_pid=$!
  while kill -0 "$wrk_pid" 2>/dev/null; do
    r=0
    for p in $(tree "${PID[$1]}"); do r=$((r + $(awk '/VmRSS/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0))); done
    [ "$r" -gt "$peak" ] && peak=$r
    sleep 0.2
  done
  wait "$wrk_pid" || true
  echo "$((peak / 1024)) $(awk '/Requests\/sec/ {printf "%.0f", $2}' "$work/many.out")"
}

declare -A COL
echo
echo "median of $ROUNDS rounds; CPU µs per request (full, resumed: per connection); one worker per server, $(nproc) cores"
printf '%-12s %8s %8s %8s %8s %8s %8s %9s\n' target https1 h2 h2c full resumed rss_MiB tls_rps
for t in "${TARGETS[@]}"; do
  for i in 2 3 4 5 6; do
    COL[$t,$i]=$(awk -v t="$t" -v i="$i" '$1==t {print $i}' "$work/results" | median)
  done
  read -r COL[$t,rss] COL[$t,rps] <<<"$(many_tls "$t")"
  printf '%-12s %8s %8s %8s %8s %8s %8s %9s\n' "$t" "${COL[$t,2]}" "${COL[$t,3]}" "${COL[$t,4]}" \
    "${COL[$t,5]}" "${COL[$t,6]}" "${COL[$t,rss]}" "${COL[$t,rps]}"
done
echo
ratio() { awk -v a="$1" -v b="$2" -v label="$3" -v target="$4" 'BEGIN {printf "%-55s %5.2f  (target %s)\n", label, a/b, target}'; }
ratio "${COL[tg-auth,3]}" "${COL[haproxy-jwt,3]}" "h2: authenticated / HAProxy jwt_verify" "<= 1.0"
ratio "${COL[tg-auth,4]}" "${COL[haproxy-jwt,4]}" "h2c: authenticated / HAProxy jwt_verify" "<= 1.0"
ratio "${COL[tg-proxy,3]}" "${COL[haproxy,3]}" "h2: plain / HAProxy" "<= 1.3"
ratio "${COL[tg-proxy,4]}" "${COL[haproxy,4]}" "h2c: plain / HAProxy" "<= 1.3"
ratio "${COL[tg-auth,2]}" "${COL[haproxy-jwt,2]}" "HTTPS/1.1: authenticated / HAProxy jwt_verify" "<= 1.0"
ratio "${COL[tg-proxy,5]}" "${COL[haproxy,5]}" "full handshake / HAProxy" "<= 0.8"
ratio "${COL[tg-proxy,6]}" "${COL[haproxy,6]}" "resumed handshake / HAProxy" "<= 0.8"
ratio "${COL[tg-proxy,rps]}" "${COL[haproxy,rps]}" "req/s at $RSS_CONNECTIONS TLS connections / HAProxy" ">= 1.0"
ratio "${COL[tg-proxy,rss]}" "${COL[nginx,rss]}" "RSS at $RSS_CONNECTIONS TLS connections / nginx" "<= 1.0"
ratio "${COL[tg-proxy,3]}" "${COL[pingora,3]}" "(h2: tokengate plain / bare Pingora)" "-"
