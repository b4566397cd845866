//! The `_method` body scans never panic, and find the same whether a body arrives whole or in
//! pieces: what tokengate refuses cannot depend on how the client split its writes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tokengate::request::body::body_kind;
use tokengate::request::{BodyKind, BodyScan};

fuzz_target!(|data: &[u8]| {
    let (&flags, rest) = data.split_first().unwrap_or((&0, &[]));
    // The first line is a Content-Type to classify, the rest the body.
    let (content_type, body) = match rest.iter().position(|&b| b == b'\n') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (&[][..], rest),
    };
    let _ = body_kind([content_type]);
    let kinds = [
        BodyKind::Form,
        BodyKind::Multipart(b"XyZ".to_vec()),
        BodyKind::Json,
    ];
    let kind = &kinds[usize::from(flags) % kinds.len()];
    let run = |piece: usize| {
        let mut scan = BodyScan::new(kind).expect("a scanned kind");
        let mut seen = false;
        for chunk in body.chunks(piece.max(1)) {
            seen |= scan.feed(chunk);
        }
        seen |= scan.finish();
        (seen, scan.found())
    };
    let whole = run(body.len());
    assert_eq!(whole.0, whole.1.is_some());
    assert_eq!(run(usize::from(flags >> 2) + 1), whole, "split into pieces");
});
