//! Bodies stream through in bounded memory: a GiB up (both framings) and a GiB down.

mod common;

use std::io::{Read, Write};

use common::*;

const GIB: u64 = 1 << 30;
/// Largest growth of the proxy's peak resident memory a GiB transfer may cause.
const RSS_BOUND_KIB: u64 = 16 * 1024;

fn upload(tg: &Tokengate, chunked: bool) -> Resp {
    let mut conn = tg.connect();
    let framing = if chunked {
        "Transfer-Encoding: chunked".to_owned()
    } else {
        format!("Content-Length: {GIB}")
    };
    let head = format!("PUT /albums/1/images HTTP/1.1\r\nHost: a\r\n{framing}\r\n\r\n");
    conn.write_all(head.as_bytes()).unwrap();
    let block = vec![b'u'; 256 * 1024];
    let mut sent = 0u64;
    while sent < GIB {
        if chunked {
            conn.write_all(format!("{:x}\r\n", block.len()).as_bytes())
                .unwrap();
        }
        conn.write_all(&block).unwrap();
        if chunked {
            conn.write_all(b"\r\n").unwrap();
        }
        sent += block.len() as u64;
    }
    if chunked {
        conn.write_all(b"0\r\n\r\n").unwrap();
    }
    read_response(&mut conn).unwrap()
}

#[test]
fn a_gib_each_way_passes_in_bounded_memory() {
    let up = Upstream::start();
    let tg = Tokengate::start(up.addr, &[]);
    // Warm up pools and allocator arenas with small transfers first.
    assert_eq!(
        tg.request(b"GET /bytes/65536 HTTP/1.1\r\nHost: a\r\n\r\n")
            .body
            .len(),
        65536
    );
    let before = tg.peak_rss_kib();

    for chunked in [false, true] {
        let r = upload(&tg, chunked);
        assert_eq!(r.status, 200, "chunked={chunked}: {}", r.text());
        let seen = up.seen();
        assert_eq!(
            seen.last().unwrap().body_len as u64,
            GIB,
            "chunked={chunked}"
        );
    }

    let mut conn = tg.connect();
    conn.write_all(format!("GET /bytes/{GIB} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes())
        .unwrap();
    // Read the header, then count the body without keeping it.
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        conn.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    // tiny_http picks chunked framing for large bodies; count either framing without keeping it.
    let received = if head.contains("transfer-encoding: chunked") {
        count_chunked(&mut std::io::BufReader::new(&mut conn))
    } else {
        std::io::copy(&mut (&mut conn).take(GIB), &mut std::io::sink()).unwrap()
    };
    assert_eq!(received, GIB);

    let growth = tg.peak_rss_kib().saturating_sub(before);
    assert!(
        growth < RSS_BOUND_KIB,
        "peak RSS grew by {growth} KiB over 3 GiB of traffic"
    );
}

/// Body bytes of a chunked stream, decoded as they pass.
fn count_chunked(reader: &mut impl std::io::BufRead) -> u64 {
    let mut total = 0;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let size = u64::from_str_radix(line.trim().split(';').next().unwrap(), 16).unwrap();
        total += std::io::copy(&mut reader.take(size), &mut std::io::sink()).unwrap();
        let mut crlf = [0u8; 2];
        reader.read_exact(&mut crlf).unwrap();
        if size == 0 {
            return total;
        }
    }
}
