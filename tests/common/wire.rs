//! Every protocol a listener speaks: one tokengate serving HTTP/1.1 and h2c on its plaintext
//! listener and HTTP/2 over TLS (ALPN) on another, and one request description sent on any of
//! them, so an integrity test runs the same table on each. HTTP/2 requests go through a raw
//! client (`tests/apps/h2_client.py`, the Python `h2` library) that sends any method, path and
//! header as given, with or without a `content-length`, in one DATA frame or one per byte.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::process::{Command, Stdio};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

use super::pki::Pki;
use super::{python, text, Tokengate};

/// A protocol a tokengate listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1 on the plaintext listener.
    Http1,
    /// HTTP/2 with prior knowledge on the plaintext listener.
    H2c,
    /// HTTP/2 over TLS, chosen by ALPN.
    H2Tls,
}

/// Every protocol, in the order the suites report them.
pub const PROTOCOLS: [Protocol; 3] = [Protocol::Http1, Protocol::H2c, Protocol::H2Tls];

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Http1 => "HTTP/1.1",
            Protocol::H2c => "h2c",
            Protocol::H2Tls => "h2 over TLS",
        }
    }
}

/// How a request's body is framed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// With its length (`Content-Length` / `content-length`).
    Length,
    /// Without one: chunked in HTTP/1.1, DATA frames without `content-length` in HTTP/2.
    Unframed,
    /// Without a length, one byte at a time (one chunk or DATA frame per byte).
    Bytes,
}

/// One request, described independently of the protocol that carries it.
#[derive(Debug, Clone)]
pub struct Req {
    pub method: String,
    /// The request target as sent (the `:path` in HTTP/2).
    pub target: String,
    /// `Host` in HTTP/1.1, `:authority` in HTTP/2; `None` sends neither.
    pub host: Option<String>,
    /// Further header fields, in order; names as given (lowered for HTTP/2, as clients must).
    pub headers: Vec<(String, String)>,
    /// The body and how it is framed; `None` is a request without a body.
    pub body: Option<(Vec<u8>, BodyFraming)>,
}

impl Req {
    pub fn new(method: &str, target: &str) -> Req {
        Req {
            method: method.to_owned(),
            target: target.to_owned(),
            host: Some("images.example.com".to_owned()),
            headers: Vec::new(),
            body: None,
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Req {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    pub fn body(mut self, body: &[u8], framing: BodyFraming) -> Req {
        self.body = Some((body.to_vec(), framing));
        self
    }

    /// The request as HTTP/1.1 bytes, closing the connection after it when `close`.
    pub fn http1(&self, close: bool) -> Vec<u8> {
        let mut head = format!("{} {} HTTP/1.1\r\n", self.method, self.target);
        if let Some(host) = &self.host {
            head.push_str(&format!("Host: {host}\r\n"));
        }
        if close {
            head.push_str("Connection: close\r\n");
        }
        for (k, v) in &self.headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        let mut raw = head.into_bytes();
        match &self.body {
            None => raw.extend_from_slice(b"Content-Length: 0\r\n\r\n"),
            Some((body, BodyFraming::Length)) => {
                raw.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
                raw.extend_from_slice(body);
            }
            Some((body, framing)) => {
                raw.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
                let size = if *framing == BodyFraming::Bytes {
                    1
                } else {
                    body.len().max(1)
                };
                for chunk in body.chunks(size) {
                    raw.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                    raw.extend_from_slice(chunk);
                    raw.extend_from_slice(b"\r\n");
                }
                raw.extend_from_slice(b"0\r\n\r\n");
            }
        }
        raw
    }

    /// The request as the HTTP/2 client's JSON line.
    fn h2(&self) -> serde_json::Value {
        let (body, framing) = match &self.body {
            None => (None, "none"),
            Some((body, framing)) => (
                Some(STANDARD.encode(body)),
                match framing {
                    BodyFraming::Length => "length",
                    BodyFraming::Unframed => "stream",
                    BodyFraming::Bytes => "bytes",
                },
            ),
        };
        let headers: Vec<[String; 2]> = self
            .headers
            .iter()
            .map(|(k, v)| [k.to_ascii_lowercase(), v.clone()])
            .collect();
        serde_json::json!({
            "method": self.method,
            "path": self.target,
            "authority": self.host,
            "headers": headers,
            "body": body,
            "framing": framing,
        })
    }
}

/// What came back for one request.
#[derive(Debug, Clone, Default)]
pub struct Answer {
    /// The final status; `None` when the request got no response (see `reset`).
    pub status: Option<u16>,
    /// Header fields, names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// The HTTP/2 error code of a stream reset or GOAWAY that ended the request.
    pub reset: Option<u32>,
    /// Why the client saw no answer at all (a timeout, a closed connection).
    pub error: Option<String>,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        super::first_header(&self.headers, name)
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// Whether the request was answered in some way the client could read: a status or a reset.
    pub fn answered(&self) -> bool {
        self.status.is_some() || self.reset.is_some()
    }
}

/// A tokengate whose plaintext listener speaks HTTP/1.1 and h2c and whose TLS listener speaks
/// HTTP/2 (and HTTP/1.1) by ALPN.
pub struct EveryProtocol {
    pub tg: Tokengate,
    pub tls: SocketAddr,
    _pki: Pki,
}

impl EveryProtocol {
    /// Starts tokengate before `upstream` with `yaml` (a `tokengate:` section), h2c and a TLS
    /// listener added to it.
    pub fn start(name: &str, upstream: SocketAddr, yaml: &str, env: &[(&str, &str)]) -> Self {
        let pki = Pki::new(name);
        pki.ca("ca");
        let (cert, key) = pki.leaf("ca", "localhost", "DNS:localhost", "serverAuth");
        let rest = yaml
            .strip_prefix("tokengate:\n")
            .expect("a configuration that starts with `tokengate:`");
        let yaml = format!(
            "tokengate:\n  h2c: true\n  tls:\n    certificates:\n      - {{cert: {}, key: {}}}\n{rest}",
            cert.display(),
            key.display()
        );
        let conf = pki.config(&yaml);
        let tls: SocketAddr = format!("127.0.0.1:{}", super::free_port()).parse().unwrap();
        let listen = tls.to_string();
        let mut env = env.to_vec();
        env.push(("TOKENGATE_TLS_LISTEN", &listen));
        let tg = Tokengate::start_with_args(upstream, &env, &["-c", &conf]);
        EveryProtocol { tg, tls, _pki: pki }
    }

    /// Sends each request on a new connection over `protocol`; one answer per request, in order.
    pub fn send_all(&self, protocol: Protocol, requests: &[Req]) -> Vec<Answer> {
        match protocol {
            Protocol::Http1 => requests
                .iter()
                .map(|r| http1_answer(self.tg.addr, r))
                .collect(),
            Protocol::H2c => h2_batch(self.tg.addr, &[], requests),
            Protocol::H2Tls => h2_batch(self.tls, &["--tls"], requests),
        }
    }

    /// Sends every request at once as a stream of one HTTP/2 connection (h2c, or TLS when
    /// `tls`); one answer per request, in order.
    pub fn multiplex(&self, tls: bool, requests: &[Req]) -> Vec<Answer> {
        match tls {
            true => h2_batch(self.tls, &["--tls", "--multiplex"], requests),
            false => h2_batch(self.tg.addr, &["--multiplex"], requests),
        }
    }

    /// Sends one request over `protocol`.
    pub fn send(&self, protocol: Protocol, request: &Req) -> Answer {
        self.send_all(protocol, std::slice::from_ref(request))
            .pop()
            .unwrap_or_default()
    }
}

/// One HTTP/1.1 exchange on a new connection, read until the server closes it: an answer cut
/// short (an application that answered before the body was checked, then refused) still shows
/// its status and headers.
pub fn http1_answer(addr: SocketAddr, request: &Req) -> Answer {
    let mut stream = super::connect(addr);
    let mut raw = Vec::new();
    let read = stream
        .write_all(&request.http1(true))
        .and_then(|()| stream.read_to_end(&mut raw));
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut response = httparse::Response::new(&mut headers);
    match response.parse(&raw) {
        Ok(httparse::Status::Complete(head)) => Answer {
            status: response.code,
            headers: response
                .headers
                .iter()
                .map(|h| (h.name.to_ascii_lowercase(), text(h.value)))
                .collect(),
            body: text(&raw[head..]),
            reset: None,
            error: None,
        },
        _ => Answer {
            error: Some(format!("{read:?}: {}", text(&raw))),
            ..Answer::default()
        },
    }
}

/// Runs the HTTP/2 client over `requests` with `flags`: each on its own connection, or all as
/// streams of one (`--multiplex`).
fn h2_batch(addr: SocketAddr, flags: &[&str], requests: &[Req]) -> Vec<Answer> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/apps/h2_client.py");
    let mut args = vec![
        script.to_owned(),
        addr.ip().to_string(),
        addr.port().to_string(),
    ];
    args.extend(flags.iter().map(|f| (*f).to_owned()));
    let mut child = Command::new(python())
        .args(&args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 with h2 (bash .ci/setup)");
    let mut input = String::new();
    for r in requests {
        input.push_str(&r.h2().to_string());
        input.push('\n');
    }
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output().expect("h2 client");
    writer
        .join()
        .unwrap()
        .expect("requests written to the h2 client");
    assert!(out.status.success(), "h2 client: {}", text(&out.stderr));
    let answers: Vec<Answer> = text(&out.stdout)
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).expect("an answer line");
            Answer {
                status: v["status"].as_u64().map(|s| s as u16),
                headers: v["headers"]
                    .as_array()
                    .map(|hs| {
                        hs.iter()
                            .map(|h| {
                                let part = |i: usize| h[i].as_str().unwrap_or_default().to_owned();
                                (part(0).to_ascii_lowercase(), part(1))
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
                body: v["body"].as_str().unwrap_or_default().to_owned(),
                reset: v["reset"].as_u64().map(|c| c as u32),
                error: v["error"].as_str().map(str::to_owned),
            }
        })
        .collect();
    assert_eq!(answers.len(), requests.len(), "one answer per request");
    answers
}
