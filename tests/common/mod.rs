//! Test harness: the real `tokengate` binary on free loopback ports, a real upstream, a raw
//! HTTP/1.1 client that can show keep-alive and duplicate headers.
#![allow(dead_code)]

pub mod canonical_table;
pub mod corpus;
pub mod pki;
pub mod recorder;
pub mod wire;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

/// The secret every test server signs with.
pub const SECRET: &str = "integration-test-secret-0123456789abcdef";
/// How long anything may take before a test gives up.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// A loopback port nobody listens on right now, and one this test process has not handed out
/// before: the kernel may give a just-released port again, and two listeners of one server
/// given the same port make it refuse to start (a TLS listener equal to the proxy's was seen).
pub fn free_port() -> u16 {
    static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free loopback port");
        if HANDED_OUT.lock().unwrap().insert(port) {
            return port;
        }
    }
}

/// A server started on a free port, and on another when `try_start` returns `None` because
/// the port was not the server's after all: `free_port` only finds a port nobody holds now, and
/// another test's process may take it before the server binds it. Panics after three ports.
pub fn on_a_free_port<T>(what: &str, mut try_start: impl FnMut(u16) -> Option<T>) -> T {
    for _ in 0..3 {
        if let Some(started) = try_start(free_port()) {
            return started;
        }
    }
    panic!("{what} never answered as itself on three ports");
}

/// Sends `head`, a request head that never ends, to `addr`: the server must close the connection
/// (with or without a `408`) within [`DEADLINE`], not keep it forever.
pub fn assert_closes_unfinished_head(addr: SocketAddr, head: &[u8]) {
    let mut slow = TcpStream::connect(addr).unwrap();
    slow.write_all(head).unwrap();
    slow.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut rest = Vec::new();
    // Closed by the server, not by this read's own deadline.
    let read = slow.read_to_end(&mut rest);
    assert!(read.is_ok(), "still open: {read:?}");
}

/// Writes `yaml` to a new configuration file in the temporary folder; its path.
pub fn conf(name: &str, yaml: &str) -> String {
    let path = std::env::temp_dir().join(format!("tokengate-{name}-{}.yaml", free_port()));
    std::fs::write(&path, yaml).unwrap();
    path.to_str().unwrap().to_owned()
}

/// The first value of header `name` among `headers`, case-insensitively.
pub fn first_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Bytes as text, for messages.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The Python interpreter itself, not a shim (pyenv's reads the working directory, which a
/// test's private mounts may hide).
pub fn python() -> String {
    let out = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .expect("python3");
    text(&out.stdout).trim().to_owned()
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Signs `header` and `payload` JSON exactly as given with HS256 (or the header's alg).
pub fn sign_raw(header: &str, payload: &str, secret: &str) -> String {
    let alg: serde_json::Value = serde_json::from_str(header).unwrap();
    let alg: jsonwebtoken::Algorithm = alg["alg"].as_str().unwrap_or("HS256").parse().unwrap();
    sign_with(header, payload, secret, alg)
}

/// Signs header and payload bytes as given with an HMAC `alg`, whatever the header claims.
pub fn sign_with(
    header: &str,
    payload: &str,
    secret: &str,
    alg: jsonwebtoken::Algorithm,
) -> String {
    let message = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(payload)
    );
    let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes());
    let sig = jsonwebtoken::crypto::sign(message.as_bytes(), &key, alg).unwrap();
    format!("{message}.{sig}")
}

/// A session token for `user` valid for an hour, legacy claim order.
pub fn session(user: &str) -> String {
    let now = now();
    sign_raw(
        r#"{"typ":"JWT","alg":"HS256"}"#,
        &format!(r#"{{"exp":{},"iat":{now},"user_id":"{user}"}}"#, now + 3600),
        SECRET,
    )
}

/// The decoded payload JSON text of a token.
pub fn payload(token: &str) -> String {
    let p = token.split('.').nth(1).unwrap();
    String::from_utf8(URL_SAFE_NO_PAD.decode(p).unwrap()).unwrap()
}

/// A running tokengate child process; killed when dropped.
pub struct Tokengate {
    pub child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub upstream: SocketAddr,
    /// Lines the process wrote to stdout (the access log), read continuously so it never blocks.
    pub stdout: Arc<Mutex<Vec<String>>>,
    /// Lines the process wrote to stderr (application logs).
    pub stderr: Arc<Mutex<Vec<String>>>,
}

/// Collects a pipe's lines in a thread.
fn collect_lines(pipe: impl Read + Send + 'static) -> Arc<Mutex<Vec<String>>> {
    use std::io::BufRead;
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = lines.clone();
    thread::spawn(move || {
        for line in std::io::BufReader::new(pipe).lines() {
            match line {
                Ok(line) => sink.lock().unwrap().push(line),
                Err(_) => break,
            }
        }
    });
    lines
}

impl Tokengate {
    /// Starts tokengate in front of `upstream` with extra environment, waits until ready.
    pub fn start(upstream: SocketAddr, env: &[(&str, &str)]) -> Tokengate {
        Self::start_with_args(upstream, env, &[])
    }

    /// Like [`start`], with command-line arguments.
    /// Ports are found free, and tokengate holds them once it is ready; when another test's
    /// process took one first, tokengate exits saying so and starts again on others.
    pub fn start_with_args(upstream: SocketAddr, env: &[(&str, &str)], args: &[&str]) -> Tokengate {
        on_a_free_port("tokengate", |port| {
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
            let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            let mut tg = Self::spawn_on(addr, admin, upstream, env, args);
            tg.try_wait_ready().then_some(tg)
        })
    }

    /// Spawns tokengate on the given addresses without waiting for it.
    pub fn spawn_on(
        addr: SocketAddr,
        admin: SocketAddr,
        upstream: SocketAddr,
        env: &[(&str, &str)],
        args: &[&str],
    ) -> Tokengate {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tokengate"));
        cmd.args(args);
        Self::spawn_command(cmd, addr, admin, upstream, env)
    }

    /// Spawns `cmd` (tokengate, or what execs it) with the test environment for the given
    /// addresses, without waiting for it.
    pub fn spawn_command(
        mut cmd: Command,
        addr: SocketAddr,
        admin: SocketAddr,
        upstream: SocketAddr,
        env: &[(&str, &str)],
    ) -> Tokengate {
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("TOKENGATE_LISTEN", addr.to_string())
            .env("TOKENGATE_ADMIN_LISTEN", admin.to_string())
            .env("TOKENGATE_UPSTREAM", upstream.to_string())
            .env("TOKENGATE_SECRET", SECRET)
            .env("TOKENGATE_THREADS", "2")
            .env("TOKENGATE_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("tokengate binary starts");
        let stdout = collect_lines(child.stdout.take().unwrap());
        let stderr = collect_lines(child.stderr.take().unwrap());
        Tokengate {
            child,
            addr,
            admin,
            upstream,
            stdout,
            stderr,
        }
    }

    /// Polls `/readyz` until it answers 200: true; false when tokengate exited because one of
    /// its addresses was taken.
    pub fn try_wait_ready(&mut self) -> bool {
        let start = Instant::now();
        loop {
            if let Ok(r) = try_request(
                self.admin,
                b"GET /readyz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            ) {
                if r.status == 200 {
                    return true;
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                if self.said_within("cannot listen on", Duration::from_secs(1)) {
                    return false;
                }
                panic!(
                    "tokengate exited with {status}: {:?}",
                    self.stderr.lock().unwrap()
                );
            }
            assert!(start.elapsed() < DEADLINE, "tokengate did not become ready");
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether a stderr line contains `needle` within `wait`: the pipe's reader thread may not
    /// have the last lines of a process that just exited.
    fn said_within(&self, needle: &str, wait: Duration) -> bool {
        let start = Instant::now();
        loop {
            if self
                .stderr
                .lock()
                .unwrap()
                .iter()
                .any(|l| l.contains(needle))
            {
                return true;
            }
            if start.elapsed() > wait {
                return false;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The first stderr line containing `needle`, waited for: the log reaches the pipe and its
    /// reader thread after whatever the test observed through the network.
    pub fn logged(&self, needle: &str) -> String {
        let start = Instant::now();
        loop {
            if let Some(line) = self
                .stderr
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.contains(needle))
            {
                return line.clone();
            }
            assert!(
                start.elapsed() < DEADLINE,
                "never logged {needle:?}: {:?}",
                self.stderr.lock().unwrap()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Fails the test if the process logged a panic.
    pub fn assert_no_panic(&self) {
        let lines = self.stderr.lock().unwrap();
        let panics: Vec<&String> = lines.iter().filter(|l| l.contains("panicked")).collect();
        assert!(panics.is_empty(), "tokengate panicked: {panics:?}");
    }

    /// A new connection to the proxy listener.
    pub fn connect(&self) -> TcpStream {
        connect(self.addr)
    }

    /// One request on a new connection.
    pub fn request(&self, raw: &[u8]) -> Resp {
        request(self.addr, raw)
    }

    /// The admin `/metrics` text.
    pub fn metrics(&self) -> String {
        let r = request(
            self.admin,
            b"GET /metrics HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        );
        String::from_utf8(r.body).unwrap()
    }

    /// One sample's value from `/metrics`, 0 when absent.
    pub fn metric(&self, series: &str) -> f64 {
        self.metrics()
            .lines()
            .find_map(|l| {
                l.strip_prefix(series)
                    .and_then(|rest| rest.strip_prefix(' '))
            })
            .map_or(0.0, |v| v.trim().parse().unwrap())
    }

    /// One sample's value once it equals `want` (counters moved in the logging phase land just
    /// after the response), or its last value at the deadline.
    pub fn metric_eventually(&self, series: &str, want: f64) -> f64 {
        let start = Instant::now();
        loop {
            let value = self.metric(series);
            if value == want || start.elapsed() > DEADLINE {
                return value;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Polls until `n` access-log lines have been written, and returns them.
    pub fn access_log(&self, n: usize) -> Vec<String> {
        let start = Instant::now();
        loop {
            let lines = self.stdout.lock().unwrap().clone();
            if lines.len() >= n {
                return lines;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "only {} of {n} access-log lines",
                lines.len()
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// The process's resident memory high-water mark, in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc/PID/status")
    }

    /// Sends `signal` (e.g. `-TERM`) to the process.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill")
            .args([signal, &pid])
            .status()
            .unwrap()
            .success());
    }

    /// Waits for the process to exit and returns its exit code.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(
                start.elapsed() < within,
                "tokengate still runs after {within:?}"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Tokengate {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A parsed HTTP response.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    /// The first value of a header, case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        first_header(&self.headers, name)
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s
}

pub fn request(addr: SocketAddr, raw: &[u8]) -> Resp {
    try_request(addr, raw).expect("request succeeds")
}

pub fn try_request(addr: SocketAddr, raw: &[u8]) -> std::io::Result<Resp> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(DEADLINE))?;
    exchange(&mut s, raw)
}

/// Writes `raw` and reads one response (Content-Length, chunked or close-delimited).
pub fn exchange(stream: &mut TcpStream, raw: &[u8]) -> std::io::Result<Resp> {
    stream.write_all(raw)?;
    read_response(stream)
}

/// Reads one response from `stream`, leaving the connection usable for the next one.
pub fn read_response(stream: &mut TcpStream) -> std::io::Result<Resp> {
    read_response_to(stream, false)
}

/// Reads one response to a `HEAD` request, or any other, from `stream`. Bytes read past it are
/// dropped: for pipelined responses use [`Pipelined`].
pub fn read_response_to(stream: &mut TcpStream, head: bool) -> std::io::Result<Resp> {
    read_buffered(stream, &mut Vec::new(), head)
}

/// A connection whose responses are read one after another, keeping bytes that arrived with an
/// earlier response (pipelined answers often share a TCP segment).
pub struct Pipelined {
    pub stream: TcpStream,
    pending: Vec<u8>,
}

impl Pipelined {
    pub fn new(stream: TcpStream) -> Pipelined {
        Pipelined {
            stream,
            pending: Vec::new(),
        }
    }

    /// Bytes received after the last response read.
    pub fn pending(&self) -> &[u8] {
        &self.pending
    }

    /// The next response (to a `HEAD` request when `head`).
    pub fn next(&mut self, head: bool) -> std::io::Result<Resp> {
        read_buffered(&mut self.stream, &mut self.pending, head)
    }
}

/// Reads one response, starting with the bytes in `buf` and leaving any after it there.
fn read_buffered(stream: &mut TcpStream, buf: &mut Vec<u8>, head: bool) -> std::io::Result<Resp> {
    let mut chunk = [0u8; 8192];
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut parsed = httparse::Response::new(&mut headers);
        if let httparse::Status::Complete(head_len) =
            parsed.parse(buf).map_err(std::io::Error::other)?
        {
            let status = parsed.code.unwrap_or(0);
            let headers: Vec<(String, String)> = parsed
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_owned(),
                        String::from_utf8_lossy(h.value).into_owned(),
                    )
                })
                .collect();
            if status == 100 {
                buf.drain(..head_len);
                continue;
            }
            let mut body = buf[head_len..].to_vec();
            buf.clear();
            if head {
                *buf = std::mem::take(&mut body);
                return Ok(Resp {
                    status,
                    headers,
                    body,
                });
            }
            let find = |n: &str| {
                headers
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(n))
                    .map(|(_, v)| v.clone())
            };
            if let Some(len) = find("content-length") {
                let len: usize = len.trim().parse().unwrap();
                while body.len() < len {
                    let n = stream.read(&mut chunk)?;
                    if n == 0 {
                        return Err(std::io::ErrorKind::UnexpectedEof.into());
                    }
                    body.extend_from_slice(&chunk[..n]);
                }
                *buf = body.split_off(len);
            } else if find("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
                let (whole, rest) = read_chunked(stream, body)?;
                body = whole;
                *buf = rest;
            } else if status != 204 && status != 304 {
                stream.read_to_end(&mut body)?;
            }
            return Ok(Resp {
                status,
                headers,
                body,
            });
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A chunked body and the bytes that followed it.
fn read_chunked(
    stream: &mut TcpStream,
    mut pending: Vec<u8>,
) -> std::io::Result<(Vec<u8>, Vec<u8>)> {
    let mut body = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        match httparse::parse_chunk_size(&pending) {
            Ok(httparse::Status::Complete((used, size))) => {
                let size = size as usize;
                while pending.len() < used + size + 2 {
                    let n = stream.read(&mut chunk)?;
                    if n == 0 {
                        return Err(std::io::ErrorKind::UnexpectedEof.into());
                    }
                    pending.extend_from_slice(&chunk[..n]);
                }
                body.extend_from_slice(&pending[used..used + size]);
                pending.drain(..used + size + 2);
                if size == 0 {
                    return Ok((body, pending));
                }
            }
            Ok(httparse::Status::Partial) => {
                let n = stream.read(&mut chunk)?;
                if n == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                pending.extend_from_slice(&chunk[..n]);
            }
            Err(_) => return Err(std::io::ErrorKind::InvalidData.into()),
        }
    }
}

/// What the test upstream saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body_len: usize,
    /// The proxy's side of the upstream connection: equal ports mean a reused connection.
    pub peer: Option<SocketAddr>,
}

impl Seen {
    /// Every value of a header, case-insensitively.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// A real HTTP upstream on loopback that records each request and answers `200 upstream says hi`.
pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    server: Arc<tiny_http::Server>,
}

impl Upstream {
    pub fn start() -> Upstream {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").expect("upstream binds"));
        let addr = server.server_addr().to_ip().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (srv, log) = (server.clone(), seen.clone());
        thread::spawn(move || {
            for mut req in srv.incoming_requests() {
                // Count the body instead of keeping it: uploads in these tests reach a GiB.
                let body_len =
                    std::io::copy(req.as_reader(), &mut std::io::sink()).unwrap_or(0) as usize;
                log.lock().unwrap().push(Seen {
                    method: req.method().to_string(),
                    url: req.url().to_owned(),
                    headers: req
                        .headers()
                        .iter()
                        .map(|h| (h.field.to_string(), h.value.to_string()))
                        .collect(),
                    body_len,
                    peer: req.remote_addr().copied(),
                });
                // `…/bytes/N` streams N bytes back; anything else gets a short greeting.
                let size = req
                    .url()
                    .rsplit_once("/bytes/")
                    .and_then(|(_, n)| n.parse::<u64>().ok());
                let _ = match size {
                    Some(n) => req.respond(tiny_http::Response::new(
                        200.into(),
                        vec![],
                        std::io::Read::take(std::io::repeat(b'x'), n),
                        Some(n as usize),
                        None,
                    )),
                    None => req.respond(tiny_http::Response::from_string("upstream says hi")),
                };
            }
        });
        Upstream { addr, seen, server }
    }

    /// Requests seen so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.server.unblock();
    }
}

/// An address where nothing listens: connections are refused.
pub fn dead_upstream() -> SocketAddr {
    format!("127.0.0.1:{}", free_port()).parse().unwrap()
}

/// A token request with the given Authorization header line(s), content type and body.
pub fn token_request(auth: &[&str], content_type: Option<&str>, body: &str) -> Vec<u8> {
    let mut r = String::from("POST /api/v1/token HTTP/1.1\r\nHost: example.org\r\n");
    for a in auth {
        r.push_str(&format!("Authorization: {a}\r\n"));
    }
    if let Some(ct) = content_type {
        r.push_str(&format!("Content-Type: {ct}\r\n"));
    }
    r.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    r.into_bytes()
}
