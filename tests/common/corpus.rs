//! The differential corpus: the image app's route table in real application routers
//! (Flask/Werkzeug, Express 4 and 5, Rails' router with `Rack::MethodOverride`), and several
//! hundred spellings of requests aimed at albums and abilities the token does not grant.
//! `tests/differential.rs` sends it through tokengate's proxy, `tests/authorize.rs` through
//! real gateways asking tokengate's authorization listener.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::wire::{self, BodyFraming, Protocol, Req};
use super::{on_a_free_port, DEADLINE};

/// The token grants album `a`: `see` and `image_upload`, nothing else.
pub const GRANTED: &[(&str, &str)] = &[("a", "see"), ("a", "image_upload")];

/// The ability each app route needs; `legacy_token` must never be served.
pub fn ability(route: &str) -> Option<&'static str> {
    Some(match route {
        "album" => "see",
        "list" => "image_list",
        "upload" => "image_upload",
        "delete" => "image_delete",
        "caption" => "image_caption",
        "fullscreen" => "fullscreen",
        _ => return None,
    })
}

pub const ROUTES: &str = r#"tokengate:
  abilities: [see, image_list, image_upload, image_delete, fullscreen, image_caption]
  routes:
    - {name: album, path: "/albums/{album}", methods: [GET], require: {resource: "{album}", access: see}}
    - {name: list, path: "/albums/{album}/images", methods: [GET], require: {resource: "{album}", access: image_list}}
    - {name: upload, path: "/albums/{album}/images", methods: [POST, PUT], require: {resource: "{album}", access: image_upload}}
    - {name: delete, path: "/albums/{album}/images", methods: [DELETE], require: {resource: "{album}", access: image_delete}}
    - {name: caption, path: "/albums/{album}/captions", methods: [PUT, PATCH], require: {resource: "{album}", access: image_caption}}
    - {name: fullscreen, path: "/albums/{album}/fullscreen", require: {resource: "{album}", access: fullscreen}}
    - {name: albums, path: /albums, auth: required}
"#;

/// A real application server on a loopback port; killed when dropped.
pub struct App {
    pub name: &'static str,
    child: Child,
    pub addr: SocketAddr,
}

impl App {
    /// Starts the app where it answers as itself with `X-Served`: a mere connect could reach
    /// another test's server on a port taken first ([`on_a_free_port`]).
    pub fn start(name: &'static str, program: &str, args: &[&str]) -> App {
        on_a_free_port(name, |port| Self::try_start(name, program, args, port))
    }

    fn try_start(name: &'static str, program: &str, args: &[&str], port: u16) -> Option<App> {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/apps");
        let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        args.push(port.to_string());
        let child = Command::new(program)
            .args(&args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{name}: cannot start {program}: {e}"));
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut app = App { name, child, addr };
        let probe =
            b"GET /albums/a HTTP/1.1\r\nHost: images.example.com\r\nConnection: close\r\n\r\n";
        let start = Instant::now();
        loop {
            if let Some((_, headers)) = send(addr, probe) {
                // Dropping `app` kills a child that lost its port to another server.
                return headers.iter().any(|(k, _)| k == "x-served").then_some(app);
            }
            if let Ok(Some(_)) = app.child.try_wait() {
                return None;
            }
            assert!(start.elapsed() < DEADLINE, "{name} did not start listening");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One request of the corpus.
pub struct Case {
    pub label: String,
    /// The request, whatever the protocol; its `X-Request-Id` is added as it is sent.
    pub request: Req,
    /// A spelling of the token path: tokengate must answer it itself.
    pub token_path: bool,
}

pub struct Request<'a> {
    pub method: &'a str,
    pub target: &'a str,
    host: Option<&'a str>,
    headers: Vec<(&'a str, String)>,
    body: Option<Vec<u8>>,
    chunked: bool,
}

impl<'a> Request<'a> {
    pub fn new(method: &'a str, target: &'a str) -> Request<'a> {
        Request {
            method,
            target,
            host: Some("images.example.com"),
            headers: Vec::new(),
            body: None,
            chunked: false,
        }
    }

    pub fn header(mut self, name: &'a str, value: &str) -> Self {
        self.headers.push((name, value.to_owned()));
        self
    }

    fn form(mut self, content_type: Option<&'a str>, body: &str) -> Self {
        if let Some(ct) = content_type {
            self.headers.push(("Content-Type", ct.to_owned()));
        }
        self.body = Some(body.as_bytes().to_vec());
        self
    }

    /// The form gzip-compressed, as a client may send it and Express' parser inflates it.
    fn gzipped(mut self) -> Self {
        use std::io::Write;
        let body = self.body.take().unwrap_or_default();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&body).unwrap();
        self.body = Some(gz.finish().unwrap());
        self.header("Content-Encoding", "gzip")
    }

    /// The body chunked, gzip-compressed, both or neither.
    fn sent_as(self, chunked: bool, gzip: bool) -> Self {
        let mut req = if gzip { self.gzipped() } else { self };
        req.chunked = chunked;
        req
    }

    /// The request in the protocol-independent form: a chunked body is sent without a length
    /// (on HTTP/2, one byte a DATA frame).
    pub fn wire(&self) -> Req {
        let mut req = Req::new(self.method, self.target);
        req.host = self.host.map(str::to_owned);
        for (k, v) in &self.headers {
            req = req.header(k, v);
        }
        match (&self.body, self.chunked) {
            (Some(body), true) => req.body(body, BodyFraming::Bytes),
            (Some(body), false) => req.body(body, BodyFraming::Length),
            (None, _) => req,
        }
    }
}

/// What is sent for `case` over `protocol`: the case itself and, for a body sent with its
/// length, the same body without a length and the same request without a body.
pub fn variants(case: &Case, protocol: Protocol) -> Vec<(String, Req)> {
    let mut out = vec![(case.label.clone(), case.request.clone())];
    if let Some((body, BodyFraming::Length)) = &case.request.body {
        if protocol != Protocol::Http1 {
            let mut unframed = case.request.clone();
            unframed.body = Some((body.clone(), BodyFraming::Unframed));
            out.push((format!("{} [no length]", case.label), unframed));
        }
        let mut bodiless = case.request.clone();
        bodiless.body = None;
        out.push((format!("{} [no body]", case.label), bodiless));
    }
    out
}

/// Ways to spell the path `/seg/seg/…` that some server reads as that path.
fn spellings(segs: &[&str]) -> Vec<String> {
    let join = |s: &[String]| format!("/{}", s.join("/"));
    let base: Vec<String> = segs.iter().map(|s| s.to_string()).collect();
    let mut out = vec![join(&base)];
    let with = |i: usize, f: &dyn Fn(&str) -> String| {
        let mut s = base.clone();
        s[i] = f(&s[i]);
        join(&s)
    };
    out.push(join(
        &base.iter().map(|s| s.to_uppercase()).collect::<Vec<_>>(),
    ));
    for i in 0..segs.len() {
        out.push(with(i, &|s| s.to_uppercase()));
        out.push(with(i, &|s| {
            format!("{}{}", s[..1].to_uppercase(), &s[1..])
        }));
        out.push(with(i, &|s| format!("%{:02x}{}", s.as_bytes()[0], &s[1..])));
        out.push(with(i, &|s| format!("%{:02X}{}", s.as_bytes()[0], &s[1..])));
        for prefix in [
            "x/..",
            ".",
            "%2e",
            "x/%2e%2e",
            "x/.%2E",
            "x/%2E.",
            "x/%252e%252e",
            "x/%c0%ae%c0%ae",
            "",
        ] {
            out.push(with(i, &|s| format!("{prefix}/{s}")));
        }
    }
    let plain = join(&base);
    out.push(format!("/{plain}"));
    for suffix in [
        "/",
        ".json",
        ".xml",
        "/.",
        "/..",
        ";x",
        ";jsessionid=1",
        "%3Bx",
        "%20",
        "%00",
        "%0a",
        "%09",
        "?a=b",
        "#frag",
        ".",
        "%2e",
        "~",
        "%7e",
    ] {
        out.push(format!("{plain}{suffix}"));
    }
    for sep in ["%2F", "%2f", "\\", "%5C", "%5c", "/./", "//", "/%2F"] {
        out.push(format!("/{}", segs.join(sep)));
    }
    out.push(segs.join("/"));
    for prefix in [
        "http://images.example.com",
        "HTTP://IMAGES.EXAMPLE.COM.",
        "http://images.example.com:80",
        "http://other.example",
    ] {
        out.push(format!("{prefix}{plain}"));
    }
    out.sort();
    out.dedup();
    out
}

/// A body of the corpus: its label, its headers, its bytes.
type LabelledBody = (String, Vec<(&'static str, String)>, Vec<u8>);

pub fn corpus(token: &str, session: &str) -> Vec<Case> {
    let bearer = format!("Bearer {token}");
    let mut cases = Vec::new();
    let mut add = |label: String, req: Request<'_>, token_path: bool| {
        cases.push(Case {
            request: req.wire(),
            label,
            token_path,
        });
    };
    // Every spelling of paths the token does not grant, with the method that route takes.
    let families: [(&[&str], &[&str]); 8] = [
        (&["albums", "b", "images"], &["POST", "PUT"]),
        (&["albums", "a", "images"], &["GET", "HEAD"]),
        (&["albums", "a", "images", "7"], &["DELETE"]),
        (&["albums", "a", "captions"], &["PATCH"]),
        (&["albums", "a", "fullscreen"], &["GET"]),
        (&["albums", "b"], &["GET"]),
        (&["albums", "b", "fullscreen"], &["GET"]),
        (&["albums", "b", "images", "7"], &["DELETE"]),
    ];
    for (segs, methods) in families {
        for (i, target) in spellings(segs).iter().enumerate() {
            // The first method on every spelling, the others on a few.
            for method in methods.iter().take(if i % 5 == 0 { 2 } else { 1 }) {
                let req = Request::new(method, target).header("Authorization", &bearer);
                add(format!("{method} {target}"), req, false);
            }
        }
    }
    // The token path. Spellings some router reads as it must be answered by tokengate; the
    // rest of the variations must at least never be served as the legacy token action.
    let session_auth = format!("Token token=\"{session}\"");
    let token_spellings = [
        "/api/v1/token",
        "/api/v1/token.json",
        "/api/v1/token.xml",
        "/api/v1/token/",
        "//api/v1/token",
        "/api/v1//token",
        "/api/v1/./token",
        "/x/../api/v1/token",
        "/api/v1/%74oken",
        "/API/V1/TOKEN",
        "/Api/V1/Token.Json",
        "/api/v1/token/.",
        "/api/%76%31/token",
        "/api/v1/x/%2e%2e/token",
        "/api/v1/token?format=json",
        "http://images.example.com/api/v1/token",
        "/api/v1/token;x",
        "api/v1/token",
        "/api/v1/token%2F",
        "/api/v1%2Ftoken",
        "/api\\v1\\token",
    ];
    for target in spellings(&["api", "v1", "token"]) {
        let req = Request::new("POST", &target)
            .header("Authorization", &session_auth)
            .form(
                Some("application/x-www-form-urlencoded"),
                "permission=%7B%22user_id%22%3A%22admin%22%7D",
            );
        let spelling = token_spellings.contains(&target.as_str());
        add(format!("POST {target}"), req, spelling);
    }
    for target in token_spellings {
        for method in ["POST", "post", "Post", "GET", "PUT", "DELETE"] {
            let req = Request::new(method, target).header("Authorization", &session_auth);
            add(format!("{method} {target}"), req, true);
        }
    }
    // Methods in another case.
    for (method, target) in [
        ("post", "/albums/b/images"),
        ("Post", "/albums/b/images"),
        ("get", "/albums/a/images"),
        ("delete", "/albums/a/images/7"),
        ("head", "/albums/a/images"),
        ("patch", "/albums/a/captions"),
    ] {
        let req = Request::new(method, target).header("Authorization", &bearer);
        add(format!("{method} {target}"), req, false);
    }
    // Method overrides on a POST the token does allow (upload to album a).
    for (target, method) in [
        ("/albums/a/images/7", "DELETE"),
        ("/albums/a/images/7", "delete"),
        ("/albums/a/images", "GET"),
        ("/albums/a/captions", "PATCH"),
    ] {
        for header in [
            "X-HTTP-Method-Override",
            "X-HTTP-Method",
            "X-Method-Override",
            "x_http_method_override",
            "X-Http-Method-Override",
        ] {
            let req = Request::new("POST", target)
                .header("Authorization", &bearer)
                .header(header, method);
            add(format!("POST {target} {header}: {method}"), req, false);
        }
        for query in ["_method", "%5Fmethod", "_%6Dethod", "_METHOD"] {
            let target = format!("{target}?{query}={method}");
            let req = Request::new("POST", &target).header("Authorization", &bearer);
            add(format!("POST {target}"), req, false);
        }
        for (ct, body) in [
            (
                Some("application/x-www-form-urlencoded"),
                format!("_method={method}"),
            ),
            (None, format!("_method={method}")),
            (
                Some("application/x-www-form-urlencoded; charset=utf-8"),
                format!("caption=x&_method={method}"),
            ),
            (
                Some("APPLICATION/X-WWW-FORM-URLENCODED"),
                format!("%5Fmethod={method}"),
            ),
            (
                Some("application/x-www-form-urlencoded"),
                format!("a=1;_method={method}"),
            ),
            (
                Some("application/x-www-form-urlencoded"),
                format!("a=1&_method={method}&b=2"),
            ),
        ] {
            for (chunked, gzip) in [(false, false), (true, false), (false, true), (true, true)] {
                let req = Request::new("POST", target)
                    .header("Authorization", &bearer)
                    .form(ct, &body)
                    .sent_as(chunked, gzip);
                add(
                    format!("POST {target} body {body:?} {ct:?} chunked={chunked} gzip={gzip}"),
                    req,
                    false,
                );
            }
        }
    }
    // Bodies frameworks read `_method` from beyond a plain form: Content-Types Rack still takes
    // for a form (none, empty, lists, multipart without a boundary), multipart parts (Rack,
    // multer) and JSON keys (`express.json()`), as sent, chunked and compressed.
    for (target, method) in [
        ("/albums/a/images/7", "DELETE"),
        ("/albums/a/captions", "PATCH"),
    ] {
        let form = format!("_method={method}");
        let mut bodies: Vec<LabelledBody> = Vec::new();
        for ct in [
            "",
            " ",
            "; charset=utf-8",
            "application/x-www-form-urlencoded, text/plain",
            "text/plain, application/x-www-form-urlencoded",
            "application/x-www-form-urlencoded x",
            "multipart/form-data",
            "multipart/form-data; boundary=",
            "multipart/mixed",
        ] {
            let headers = vec![("Content-Type", ct.to_owned())];
            bodies.push((format!("{ct:?}"), headers, form.clone().into_bytes()));
        }
        // Rack and qs drop brackets around a name; PHP ends one at NUL.
        for key in ["[_method]", "_method]", "%5B%5B_method%5D", "_method%00x"] {
            let headers = vec![(
                "Content-Type",
                "application/x-www-form-urlencoded".to_owned(),
            )];
            bodies.push((
                key.to_owned(),
                headers,
                format!("{key}={method}").into_bytes(),
            ));
        }
        for cts in [
            ["text/plain", "application/x-www-form-urlencoded"],
            ["application/x-www-form-urlencoded", "text/plain"],
        ] {
            let headers = cts
                .iter()
                .map(|ct| ("Content-Type", ct.to_string()))
                .collect();
            bodies.push((format!("{cts:?}"), headers, form.clone().into_bytes()));
        }
        for (boundary, head) in [
            ("XyZ", "Content-Disposition: form-data; name=\"_method\""),
            ("XyZ", "content-disposition: form-data; name=_method"),
            ("XyZ", "Content-Disposition: form-data; name=\"_METHOD\""),
            ("XyZ", "Content-Disposition: form-data; name=\"\\_method\""),
            ("XyZ", "Content-Disposition: form-data; name=_method/x"),
            (
                "XyZ",
                "Content-Disposition: form-data\r\n; name=\"_method\"",
            ),
            ("XyZ", "Content-ID: _method"),
            ("XyZ", "Content-Disposition: form-data; name=\"[_method]\""),
            (
                "\"a;b\"",
                "Content-Disposition: form-data; name=\"_method\"",
            ),
        ] {
            let file = "Content-Disposition: form-data; name=\"photo\"; filename=\"a.jpg\"\r\n\
                        Content-Type: image/jpeg";
            let raw_boundary = boundary.trim_matches('"').split(';').next().unwrap();
            let part =
                |head: &str, value: &str| format!("--{raw_boundary}\r\n{head}\r\n\r\n{value}\r\n");
            let body = format!(
                "{}{}--{raw_boundary}--\r\n",
                part(file, "\u{ff}\u{d8}jpeg"),
                part(head, method)
            );
            let ct = format!("multipart/form-data; boundary={boundary}");
            bodies.push((
                format!("{ct} {head:?}"),
                vec![("Content-Type", ct)],
                body.into_bytes(),
            ));
        }
        for (ct, json) in [
            (
                "application/json",
                format!(r#"{{"caption":"x","_method":"{method}"}}"#),
            ),
            (
                "application/json; charset=utf-8",
                format!(r#"{{"\u005fmethod":"{method}"}}"#),
            ),
        ] {
            bodies.push((
                format!("{ct} {json}"),
                vec![("Content-Type", ct.to_owned())],
                json.into_bytes(),
            ));
        }
        for (label, headers, body) in bodies {
            for (chunked, gzip) in [(false, false), (true, false), (false, true)] {
                let mut req = Request::new("POST", target).header("Authorization", &bearer);
                for (name, value) in &headers {
                    req = req.header(name, value);
                }
                req.body = Some(body.clone());
                let req = req.sent_as(chunked, gzip);
                add(
                    format!("POST {target} body {label} chunked={chunked} gzip={gzip}"),
                    req,
                    false,
                );
            }
        }
    }
    // Hosts, path-override headers, HEAD on GET rules, no token at all.
    for host in [
        None,
        Some("images.example.com."),
        Some("other, images.example.com"),
        Some("IMAGES.EXAMPLE.COM"),
        Some(""),
    ] {
        let mut req = Request::new("GET", "/albums/a/images").header("Authorization", &bearer);
        req.host = host;
        add(format!("GET /albums/a/images Host: {host:?}"), req, false);
    }
    let two_hosts = Request::new("GET", "/albums/a/images")
        .header("Authorization", &bearer)
        .header("Host", "images.example.com");
    add(
        "GET /albums/a/images with two Host headers".into(),
        two_hosts,
        false,
    );
    for header in ["X-Original-URL", "X-Rewrite-URL", "X_Original_URL"] {
        let req = Request::new("GET", "/albums/a")
            .header("Authorization", &bearer)
            .header(header, "/albums/a/images");
        add(
            format!("GET /albums/a {header}: /albums/a/images"),
            req,
            false,
        );
    }
    for target in ["/albums/b/images", "/albums/a/images", "/albums/a"] {
        add(
            format!("POST {target} without a token"),
            Request::new("POST", target),
            false,
        );
        add(
            format!("GET {target} without a token"),
            Request::new("GET", target),
            false,
        );
    }
    cases
}

/// Writes `raw` on a new connection and reads until the server closes it.
pub fn send(addr: SocketAddr, raw: &[u8]) -> Option<(u16, Vec<(String, String)>)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    s.write_all(raw).ok()?;
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    resp.parse(&buf).ok()?;
    let status = resp.code?;
    let headers = resp
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_ascii_lowercase(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect();
    Some((status, headers))
}

/// `route=…;album=…` → (route, decoded album).
pub fn parse_served(value: &str) -> (String, String) {
    let mut route = String::new();
    let mut album = String::new();
    for part in value.split(';') {
        if let Some(r) = part.strip_prefix("route=") {
            route = r.to_owned();
        } else if let Some(a) = part.strip_prefix("album=") {
            album = percent_encoding::percent_decode_str(a)
                .decode_utf8_lossy()
                .into_owned();
        }
    }
    (route, album)
}

/// The first value of `x-served`, as (route, album).
pub fn served_by(answer: &wire::Answer) -> Option<(String, String)> {
    answer.header("x-served").map(parse_served)
}
