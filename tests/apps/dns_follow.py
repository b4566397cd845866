"""Upstreams that move, for tests/dns.rs. Runs inside a private network and mount namespace whose
/etc/resolv.conf points at a real DNS server (dnsmasq) on 127.0.0.1:53.

Usage: dns_follow.py TOKENGATE SCRATCH. Serves `images.test` from dnsmasq, first as 127.0.0.2
then as 127.0.0.3, each with its own upstream on the same port; tokengate's group resolves the
name every second. A keep-alive client sends requests all along and the script prints one JSON
object: every answer's status and body in order, and the index of the DNS change.
"""

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DEADLINE = 20


def upstream(ip, port):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Header and body leave in separate writes: without this, Nagle and delayed ACKs
        # hold each answer 40 ms.
        disable_nagle_algorithm = True

        def do_GET(self):
            body = f"upstream {ip}".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer((ip, port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def until(what, check):
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > DEADLINE:
            raise SystemExit(f"timed out: {what}")
        time.sleep(0.05)


def resolves_to(name, ip):
    try:
        return {a[4][0] for a in socket.getaddrinfo(name, 80, socket.AF_INET)} == {ip}
    except socket.gaierror:
        return False


def main():
    binary, scratch = sys.argv[1], sys.argv[2]
    hosts = os.path.join(scratch, "dns-hosts")
    with open(hosts, "w") as f:
        f.write("127.0.0.2 images.test\n")
    dns = subprocess.Popen(
        [shutil.which("dnsmasq") or "/usr/sbin/dnsmasq", "--keep-in-foreground", "--port=53", "--listen-address=127.0.0.1",
         "--bind-interfaces", "--no-resolv", "--no-hosts", f"--addn-hosts={hosts}",
         "--local-ttl=1", "--user=root", "--pid-file=", "--log-facility=-"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    until("dnsmasq answers", lambda: resolves_to("images.test", "127.0.0.2"))

    port = free_port()
    upstream("127.0.0.2", port)
    upstream("127.0.0.3", port)
    listen, admin = free_port(), free_port()
    conf = os.path.join(scratch, "tokengate.yaml")
    with open(conf, "w") as f:
        f.write(
            "tokengate:\n"
            "  upstreams:\n"
            f"    images: {{addresses: ['images.test:{port}'], resolve_interval: 1s}}\n"
            "  routes:\n"
            "    - {name: images, path: /, upstream: images}\n")
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "TOKENGATE_LISTEN": f"127.0.0.1:{listen}",
        "TOKENGATE_ADMIN_LISTEN": f"127.0.0.1:{admin}",
        "TOKENGATE_UPSTREAM": "127.0.0.1:9",
        "TOKENGATE_SECRET": "dns-test-secret-dns-test-secret-dns-test-0000",
        "TOKENGATE_THREADS": "2",
        "TOKENGATE_LOG": "warn",
        "TOKENGATE_ACCESS_LOG": "false",
    }
    gate = subprocess.Popen([binary, "-c", conf], env=env, stdout=subprocess.DEVNULL)

    def ready():
        try:
            c = http.client.HTTPConnection("127.0.0.1", admin, timeout=2)
            c.request("GET", "/readyz")
            return c.getresponse().status == 200
        except OSError:
            return False

    until("tokengate is ready", ready)
    answers = []
    conn = http.client.HTTPConnection("127.0.0.1", listen, timeout=10)
    changed_time = None

    def ask():
        since = time.monotonic() - changed_time if changed_time else 0.0
        try:
            conn.request("GET", "/photo")
            r = conn.getresponse()
            answers.append([r.status, r.read().decode(), since])
        except (OSError, http.client.HTTPException) as e:
            answers.append([0, repr(e), since])
            conn.close()

    for _ in range(50):
        ask()
    # The name moves: dnsmasq re-reads its hosts file on SIGHUP.
    with open(hosts, "w") as f:
        f.write("127.0.0.3 images.test\n")
    dns.send_signal(signal.SIGHUP)
    changed_at, changed_time = len(answers), time.monotonic()
    while time.monotonic() - changed_time < DEADLINE:
        ask()
        tail = answers[-200:]
        if len(tail) == 200 and all(a[:2] == [200, "upstream 127.0.0.3"] for a in tail):
            break
    print(json.dumps({"answers": answers, "changed_at": changed_at}))
    gate.terminate()
    gate.wait(10)
    dns.terminate()
    dns.wait(10)


if __name__ == "__main__":
    main()
