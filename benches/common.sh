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
