# Helpers the bench scripts share; sourced, not run.

# N loopback ports nobody listens on right now, all different: they are held together while
# chosen, where asking for one at a time may be given the same port twice.
free_ports() {
  python3 - "$1" <<'PY'
import socket, sys
held = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in held:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in held))
PY
}

# Waits until something listens on loopback port $1 (at most 30 s: servers under valgrind start
# slowly).
wait_port() {
  for _ in $(seq 300); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listens on $1" >&2
  return 1
}

# A process and all its descendants (nginx's workers).
tree() {
  local all=("$1") i=0 kids
  while [ "$i" -lt "${#all[@]}" ]; do
    kids=$(cat "/proc/${all[$i]}/task/"*/children 2>/dev/null || true)
    for k in $kids; do all+=("$k"); done
    i=$((i + 1))
  done
  echo "${all[@]}"
}

# CPU ticks of a process tree, user + system.
cpu_ticks() {
  local total=0 t p
  for p in $(tree "$1"); do
    t=$(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0)
    total=$((total + t))
  done
  echo "$total"
}

# wrk's latency lines read like "50%  1.23ms"; normalise to microseconds.
to_us() { awk '{ v=$1; u=v; gsub(/[0-9.]/,"",u); gsub(/[a-z]/,"",v);
  if (u=="us") print v; else if (u=="ms") print v*1000; else if (u=="s") print v*1000000; else print v }'; }

# The median of the numbers on stdin.
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

# An nginx configuration $work/NAME/nginx.conf: one worker, keep-alive without limit, an
# `upstream backend` pool to $P200, and the given http-level lines (its server blocks).
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

# A scratch folder $work, and $pids: the servers started, stopped with it on exit.
scratch() {
  work=$(mktemp -d)
  pids=()
  trap scratch_cleanup EXIT
}
scratch_cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}

# An HAProxy configuration $work/NAME.cfg: one thread, a frontend on PORT (and the further
# `bind` lines given) with the given rules, to nginx on $P200.
haproxy_conf() { # name, port, further bind lines, frontend rules
  cat > "$work/$1.cfg" <<EOF
global
  nbthread 1
  maxconn 4000
defaults
  mode http
  option http-keep-alive
  timeout connect 5s
  timeout client 60s
  timeout server 60s
frontend fe
  bind 127.0.0.1:$2
$3
$4
  default_backend be
backend be
  http-reuse always
  server s1 127.0.0.1:$P200
EOF
}

# The same job as tokengate's authenticated forward, as HAProxy rules: HS256 verified under
# $SECRET, exp checked, the subject set as X-User-Id (client copies removed), the token echoed
# in X-token.
haproxy_jwt_rules() {
  cat <<EOF
  http-request del-header X-User-Id
  http-request set-var(txn.bearer) http_auth_bearer
  http-request set-var(txn.alg) var(txn.bearer),jwt_header_query('\$.alg')
  http-request deny deny_status 401 unless { var(txn.alg) -m str HS256 }
  http-request deny deny_status 401 unless { var(txn.bearer),jwt_verify(txn.alg,"$SECRET") -m int 1 }
  http-request set-var(txn.exp) var(txn.bearer),jwt_payload_query('\$.exp','int')
  http-request set-var(txn.now) date()
  http-request deny deny_status 401 if { var(txn.exp),sub(txn.now) -m int le 0 }
  http-request set-header X-User-Id %[var(txn.bearer),jwt_payload_query('\$.user_id')]
  http-response set-header X-token %[var(txn.bearer)]
EOF
}

# The end of every wrk script: count non-2xx answers (a benchmark of refusals would measure
# the wrong thing).
WRK_COUNT='done = function(summary, latency, requests)
  io.write(string.format("non2xx %d\n", summary.errors.status))
end'

# $work/get.lua, and $work/auth.lua sending TOKEN as a bearer token.
wrk_scripts() { # token
  printf '%s\n' "$WRK_COUNT" > "$work/get.lua"
  printf 'wrk.headers["Authorization"] = "Bearer %s"\n%s\n' "$1" "$WRK_COUNT" > "$work/auth.lua"
}

# TOKEN with its signature's first character changed: its last one may carry only padding
# bits, which a lenient base64 decoder (HAProxy's) ignores, so changing it may forge nothing.
forged() { # token
  local sig=${1##*.} first=A
  [ "${sig:0:1}" = A ] && first=B
  echo "${1%.*}.$first${sig:1}"
}
