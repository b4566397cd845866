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
