#!/usr/bin/env bash
# System calls per keep-alive forward: tokengate in front of a small keep-alive upstream, one
# worker, `strace -f -c` attached while one keep-alive client sends N requests through it (the
# upstream connection is pooled and reused). Prints each call's count divided by N; the timers
# of idle background threads (`clock_nanosleep`) and `epoll_wait` depend on how fast the client
# is, the reads, writes and per-request checks do not. Everything
# runs on 127.0.0.1 and stops by itself; N bounds the run (about 10 s for the default).
#
#   bash benches/syscalls.sh [BINARY] [N]      # default target/release/tokengate, 2000
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-target/release/tokengate}
N=${2:-2000}
work=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; rm -rf "$work"' EXIT

# shellcheck source=benches/common.sh
. benches/common.sh
read -r up proxy admin <<<"$(free_ports 3)"

python3 - "$up" <<'EOF' &
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        self.send_response(200); self.send_header("Content-Length", "2"); self.end_headers()
        self.wfile.write(b"ok")
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
EOF
pids+=($!)
TOKENGATE_LISTEN=127.0.0.1:$proxy TOKENGATE_ADMIN_LISTEN=127.0.0.1:$admin \
  TOKENGATE_UPSTREAM=127.0.0.1:$up TOKENGATE_SECRET=syscall-benchmark-secret-syscall-bench-0 \
  TOKENGATE_THREADS=1 TOKENGATE_ACCESS_LOG=false TOKENGATE_LOG=error "$BIN" >/dev/null 2>&1 &
tg=$!
pids+=($tg)
for _ in $(seq 100); do
  curl -sf "http://127.0.0.1:$admin/readyz" >/dev/null && break
  sleep 0.1
done

client() {
  python3 - "$proxy" "$1" <<'EOF'
import http.client, sys
c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]))
for _ in range(int(sys.argv[2])):
    c.request("GET", "/x"); r = c.getresponse(); r.read()
    assert r.status == 200, r.status
EOF
}
client 100 # opens and pools the upstream connection
strace -f -c -o "$work/strace" -p "$tg" 2>/dev/null &
st=$!
sleep 1
client "$N"
kill -INT "$st"
wait "$st" 2>/dev/null || true
echo "system calls per request, $N keep-alive forwards through one pooled upstream connection:"
# Columns: % time, seconds, usecs/call, calls, [errors,] syscall: the calls are the fourth.
awk -v n="$N" '$NF ~ /^[a-z_0-9]+$/ && $4 ~ /^[0-9]+$/ && $NF != "total" {
  printf "  %-14s %.2f\n", $NF, $4 / n }' "$work/strace" | sort -k2 -nr | head -12
