//! A raw HTTP/1.1 upstream that keeps every byte it receives, connection by connection, and each
//! request it read whole: what reached the application, to the byte, including a head whose
//! body never came. It answers each whole request `200 ok` and keeps the connection open.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

/// One request the recorder read whole.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub method: String,
    pub target: String,
    /// Header fields in order, names as sent.
    pub headers: Vec<(String, String)>,
    /// The body, decoded from its chunks when chunked.
    pub body: Vec<u8>,
}

type Shared<T> = Arc<Mutex<T>>;

/// The recording upstream; stops accepting when dropped.
pub struct Recorder {
    pub addr: SocketAddr,
    /// Bytes received, one buffer per connection, in the order connections came.
    connections: Shared<Vec<Shared<Vec<u8>>>>,
    requests: Shared<Vec<Received>>,
    stop: Arc<AtomicBool>,
}

impl Recorder {
    pub fn start() -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").expect("recorder binds");
        let addr = listener.local_addr().unwrap();
        let connections: Shared<Vec<Shared<Vec<u8>>>> = Arc::default();
        let requests: Shared<Vec<Received>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (conns, reqs, stopped) = (connections.clone(), requests.clone(), stop.clone());
        thread::spawn(move || {
            for stream in listener.incoming() {
                if stopped.load(Ordering::Acquire) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let bytes: Shared<Vec<u8>> = Arc::default();
                conns.lock().unwrap().push(bytes.clone());
                let reqs = reqs.clone();
                thread::spawn(move || serve(stream, bytes, reqs));
            }
        });
        Recorder {
            addr,
            connections,
            requests,
            stop,
        }
    }

    /// Every byte received so far, on any connection.
    pub fn bytes(&self) -> usize {
        let conns = self.connections.lock().unwrap();
        conns.iter().map(|c| c.lock().unwrap().len()).sum()
    }

    /// Everything received so far, connection by connection.
    pub fn received(&self) -> Vec<Vec<u8>> {
        let conns = self.connections.lock().unwrap();
        conns.iter().map(|c| c.lock().unwrap().clone()).collect()
    }

    /// What each connection received after its last whole request: bytes that are neither a
    /// request nor the start of one show a proxy that framed a message wrong.
    pub fn unparsed(&self) -> Vec<Vec<u8>> {
        let mut tails = Vec::new();
        for mut data in self.received() {
            while let Some((_, used)) = parse(&data) {
                data.drain(..used);
            }
            tails.push(data);
        }
        tails
    }

    /// The requests read whole so far.
    pub fn requests(&self) -> Vec<Received> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = TcpStream::connect(self.addr);
    }
}

/// Reads requests off one connection, recording every byte, answering each whole one.
fn serve(mut stream: TcpStream, bytes: Shared<Vec<u8>>, requests: Shared<Vec<Received>>) {
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        while let Some((request, used)) = parse(&pending) {
            pending.drain(..used);
            let head = request.method == "HEAD";
            requests.lock().unwrap().push(request);
            let answer: &[u8] = match head {
                true => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n",
                false => b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            };
            if stream.write_all(answer).is_err() {
                return;
            }
        }
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                bytes.lock().unwrap().extend_from_slice(&buf[..n]);
                pending.extend_from_slice(&buf[..n]);
            }
        }
    }
}

/// One whole request at the start of `data`, and how many bytes it took.
fn parse(data: &[u8]) -> Option<(Received, usize)> {
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(data) {
        Ok(httparse::Status::Complete(n)) => n,
        _ => return None,
    };
    let headers: Vec<(String, String)> = req
        .headers
        .iter()
        .map(|h| {
            let value = String::from_utf8_lossy(h.value).into_owned();
            (h.name.to_owned(), value)
        })
        .collect();
    let value = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let rest = &data[head_len..];
    let (body, body_len) = match (value("transfer-encoding"), value("content-length")) {
        (Some(_), _) => dechunk(rest)?,
        (None, Some(len)) => {
            let len: usize = len.trim().parse().ok()?;
            (rest.get(..len)?.to_vec(), len)
        }
        (None, None) => (Vec::new(), 0),
    };
    let received = Received {
        method: req.method?.to_owned(),
        target: req.path?.to_owned(),
        headers,
        body,
    };
    Some((received, head_len + body_len))
}

/// A whole chunked body at the start of `data`: the body and the bytes it took.
fn dechunk(data: &[u8]) -> Option<(Vec<u8>, usize)> {
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        let (start, size) = match httparse::parse_chunk_size(&data[at..]) {
            Ok(httparse::Status::Complete(found)) => found,
            _ => return None,
        };
        at += start;
        let size = usize::try_from(size).ok()?;
        if size == 0 {
            // No trailers from the proxy: the last chunk is followed by the final CRLF.
            let end = data.get(at..at + 2)?;
            return (end == b"\r\n").then_some((body, at + 2));
        }
        body.extend_from_slice(data.get(at..at + size)?);
        at += size + 2;
        data.get(..at)?;
    }
}
