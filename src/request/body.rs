//! What a `POST` body may say about the method: the media types frameworks read fields from, and
//! streaming scans of each for a `_method` field. Rack's `MethodOverride` reads `_method` from
//! url-encoded and multipart bodies (and, when a multipart type has no boundary, from the body
//! read as url-encoded); Express' `method-override` with a body getter reads whatever body
//! parser is mounted, JSON included; Laravel reads JSON too. Each scan is fed chunk by chunk as
//! the body passes, in bounded memory, and says so as soon as the field is complete, so the
//! chunk that completes it never reaches the application.

use super::method::{is_method_key, FormScan, Found, MethodKey};
use super::{list_elements, Refusal};

/// How a body is read for `_method` fields, by its `Content-Type`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyKind {
    /// Url-encoded, or no media type at all (Rack parses an untyped `POST` as a form).
    Form,
    /// `multipart/*` with the boundary Rack reads.
    Multipart(Vec<u8>),
    /// A JSON media type.
    Json,
    /// Anything else: no framework reads fields from it.
    Opaque,
}

/// Largest multipart boundary (RFC 2046 allows 70 bytes; Rack takes any length).
const MAX_BOUNDARY: usize = 256;

/// The body kind of a request with these `Content-Type` fields. Content-Type is a singleton:
/// two fields, or a list in one, are refused, since Rack takes the first element of a list
/// (`application/x-www-form-urlencoded, text/plain` is a form to it) and other servers the
/// whole value. The media type ends at `;`, or at white space as PHP reads it.
pub fn body_kind<'a>(
    content_types: impl IntoIterator<Item = &'a [u8]>,
) -> Result<BodyKind, Refusal> {
    let mut fields = content_types.into_iter();
    let value = match (fields.next(), fields.next()) {
        (None, _) => return Ok(BodyKind::Form),
        (Some(value), None) => value.trim_ascii(),
        (Some(_), Some(_)) => return Err(Refusal::ContentType),
    };
    if has_unquoted_comma(value) {
        return Err(Refusal::ContentType);
    }
    let end = value
        .iter()
        .position(|&b| b == b';' || b.is_ascii_whitespace())
        .unwrap_or(value.len());
    let media = &value[..end];
    let starts = |prefix: &[u8]| {
        media
            .get(..prefix.len())
            .is_some_and(|m| m.eq_ignore_ascii_case(prefix))
    };
    Ok(match media {
        b"" => BodyKind::Form,
        m if m.eq_ignore_ascii_case(b"application/x-www-form-urlencoded") => BodyKind::Form,
        _ if starts(b"multipart/") => match rack_boundary(value) {
            Some(boundary) if boundary.len() <= MAX_BOUNDARY => BodyKind::Multipart(boundary),
            Some(_) => return Err(Refusal::ContentType),
            // Rack then reads the body as url-encoded.
            None => BodyKind::Form,
        },
        m if m.windows(4).any(|w| w.eq_ignore_ascii_case(b"json")) => BodyKind::Json,
        _ => BodyKind::Opaque,
    })
}

fn has_unquoted_comma(value: &[u8]) -> bool {
    let mut quoted = false;
    let mut escaped = false;
    for &b in value {
        match b {
            _ if escaped => escaped = false,
            b'\\' if quoted => escaped = true,
            b'"' => quoted = !quoted,
            b',' if !quoted => return true,
            _ => {}
        }
    }
    false
}

/// The boundary as Rack's `parse_boundary` reads it: after `boundary=` (any case), an optional
/// quote, then everything up to `"`, `;` or `,`; as in Rack's pattern, a `boundary=` without a
/// value gives way to a later one.
fn rack_boundary(content_type: &[u8]) -> Option<Vec<u8>> {
    content_type
        .windows(8)
        .enumerate()
        .filter(|(_, w)| w.eq_ignore_ascii_case(b"boundary"))
        .find_map(|(at, _)| {
            let rest = content_type[at + 8..].trim_ascii_start();
            let rest = rest.strip_prefix(b"=")?;
            let value = |v: &[u8]| {
                let end = v
                    .iter()
                    .position(|&b| matches!(b, b'"' | b';' | b','))
                    .unwrap_or(v.len());
                (end > 0).then(|| v[..end].to_vec())
            };
            // The quote is optional in Rack's pattern: `="` then nothing falls back to `"`.
            rest.strip_prefix(b"\"")
                .and_then(value)
                .or_else(|| value(rest))
        })
}

/// How a request's body is framed, as its protocol says: never guessed from headers alone, since
/// an HTTP/2 body needs no `content-length` and announces itself only by the stream staying open
/// after HEADERS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body: the message ended with its header section.
    Empty,
    /// A body of this many bytes, announced up front.
    Length(u64),
    /// A body whose end is known only when it comes: chunked, or an HTTP/2 stream without a
    /// `content-length`.
    Unknown,
}

impl Framing {
    /// The framing of a request whose protocol says the body `ended` with the header (HTTP/1.1:
    /// neither a length above zero nor a chunked coding; HTTP/2: `END_STREAM` on HEADERS), with
    /// `chunked` set when a transfer coding frames it and its `Content-Length` value if any.
    pub fn of(ended: bool, chunked: bool, content_length: Option<&[u8]>) -> Framing {
        let length = || {
            std::str::from_utf8(content_length?)
                .ok()?
                .trim()
                .parse::<u64>()
                .ok()
        };
        match (ended, chunked) {
            (true, _) => Framing::Empty,
            (false, true) => Framing::Unknown,
            (false, false) => match length() {
                Some(0) => Framing::Empty,
                Some(n) => Framing::Length(n),
                None => Framing::Unknown,
            },
        }
    }

    /// Whether a body follows the header.
    pub fn has_body(self) -> bool {
        self != Framing::Empty
    }
}

/// Whether `Content-Encoding` values name a coding (`identity` is none): the body's `_method`
/// cannot be read on the way, while Express' body parsers inflate it for the application.
pub fn body_is_encoded<'a>(content_encoding: impl IntoIterator<Item = &'a [u8]>) -> bool {
    list_elements(content_encoding).any(|coding| !coding.eq_ignore_ascii_case(b"identity"))
}

/// A streaming scan of one body for `_method` fields.
#[derive(Debug)]
pub enum BodyScan {
    /// A url-encoded body.
    Form(FormScan),
    /// A multipart body.
    Multipart(Box<MultipartScan>),
    /// A JSON body.
    Json(JsonScan),
}

impl BodyScan {
    /// The scan for a body of `kind`; `None` for a body no framework reads fields from.
    pub fn new(kind: &BodyKind) -> Option<BodyScan> {
        match kind {
            BodyKind::Form => Some(BodyScan::Form(FormScan::default())),
            BodyKind::Multipart(boundary) => Some(BodyScan::Multipart(Box::new(
                MultipartScan::new(boundary.clone()),
            ))),
            BodyKind::Json => Some(BodyScan::Json(JsonScan::default())),
            BodyKind::Opaque => None,
        }
    }

    /// Scans the next chunk; true once a `_method` field has been seen.
    pub fn feed(&mut self, chunk: &[u8]) -> bool {
        match self {
            BodyScan::Form(scan) => scan.feed(chunk),
            BodyScan::Multipart(scan) => scan.feed(chunk),
            BodyScan::Json(scan) => scan.feed(chunk),
        }
    }

    /// Ends the body; true if a `_method` field was seen.
    pub fn finish(&mut self) -> bool {
        match self {
            BodyScan::Form(scan) => scan.finish(),
            BodyScan::Multipart(scan) => scan.finish(),
            BodyScan::Json(scan) => scan.finish(),
        }
    }

    /// The `_method` fields found, with their values.
    pub fn found(self) -> Option<Found> {
        match self {
            BodyScan::Form(scan) => scan.found,
            BodyScan::Multipart(scan) => scan.found,
            BodyScan::Json(scan) => scan.found,
        }
    }
}

/// Longest name or value kept: longer ones are no `_method` and no method.
const MAX_FIELD: usize = 64;

/// A short piece of text kept in bounded memory: past [`MAX_FIELD`] it only remembers that it
/// overflowed.
#[derive(Debug, Default, Clone)]
struct Short {
    bytes: Vec<u8>,
    overflowed: bool,
}

impl Short {
    fn push(&mut self, b: u8) {
        match self.bytes.len() < MAX_FIELD {
            true => self.bytes.push(b),
            false => self.overflowed = true,
        }
    }

    fn clear(&mut self) {
        self.bytes.clear();
        self.overflowed = false;
    }
}

/// Where a [`MultipartScan`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    /// In a part's body, or before the first delimiter.
    Body,
    /// On a line that began with `--`: a delimiter, to its end.
    Delimiter,
    /// In the header block after a delimiter, up to the blank line.
    Head,
}

/// Where a [`MultipartScan`] is inside a header block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Param {
    /// Looking for `name` or `content-id`.
    Seek,
    /// After `name` (or `filename`): an optional `*`, then `=`.
    AfterName,
    /// After `name=`: white space, then the value.
    BeforeValue,
    /// In an unquoted value.
    Token,
    /// In a quoted value; `true` right after a backslash.
    Quoted(bool),
    /// After `content-id`: white space, then `:`.
    AfterContentId,
    /// In a `Content-ID` value, to the end of its line.
    ContentId,
}

/// A streaming scan of a multipart body for parts named `_method`. Every line that begins with
/// `--` is taken for a delimiter, whatever the declared boundary, and the lines after it up to a
/// blank line for the part's header block, in which every `name=` (so `filename=` too, which
/// Rack names a part by when it has no name), `name*=` and `Content-ID:` (Rack's name of last
/// resort) is read as Rack reads it. Reading more lines as headers than a parser would can only
/// refuse more, never less. A part's value is kept up to the declared boundary, for honoured
/// overrides.
#[derive(Debug)]
pub struct MultipartScan {
    boundary: Vec<u8>,
    part: Part,
    param: Param,
    line_start: bool,
    dashes: u8,
    /// The last bytes of the header block, lower-cased: keywords and the blank line.
    recent: [u8; 10],
    /// The parameter value being read, as sent and percent-decoded.
    name: [MethodKey; 2],
    /// Apostrophes in it: after the second, an RFC 5987 `charset'lang'` prefix has ended.
    apostrophes: u8,
    head_names_method: bool,
    /// The raw bytes after a `_method` part's header block, up to the boundary.
    value: Option<Vec<u8>>,
    /// Set once a part named `_method` has been seen.
    pub found: Option<Found>,
}

impl MultipartScan {
    /// A scan of a body whose declared boundary is `boundary`.
    pub fn new(boundary: Vec<u8>) -> MultipartScan {
        MultipartScan {
            boundary,
            part: Part::Body,
            param: Param::Seek,
            line_start: true,
            dashes: 0,
            recent: [0; 10],
            name: [MethodKey::raw(), MethodKey::decoding(false)],
            apostrophes: 0,
            head_names_method: false,
            value: None,
            found: None,
        }
    }

    /// Scans the next chunk; true once a part named `_method` has been seen.
    pub fn feed(&mut self, mut chunk: &[u8]) -> bool {
        while let Some((&b, rest)) = chunk.split_first() {
            // Inside a part's body only a line's start matters: a file passes at memchr's pace.
            if self.part == Part::Body && !self.line_start && self.value.is_none() && b != b'\n' {
                match memchr::memchr(b'\n', rest) {
                    Some(i) => chunk = &rest[i..],
                    None => break,
                }
                continue;
            }
            self.capture_value(b);
            self.byte(b);
            chunk = rest;
        }
        self.found.is_some()
    }

    /// Ends the body; true if a part named `_method` was seen.
    pub fn finish(&mut self) -> bool {
        self.end_param();
        self.end_value();
        self.found.is_some()
    }

    fn byte(&mut self, b: u8) {
        match self.part {
            Part::Delimiter => {
                if b == b'\n' {
                    self.start_head();
                }
                return;
            }
            Part::Body | Part::Head if self.line_start => match b {
                b'-' => {
                    self.dashes += 1;
                    if self.dashes == 2 {
                        self.end_param();
                        self.part = Part::Delimiter;
                        self.line_start = false;
                        return;
                    }
                }
                b' ' | b'\t' if self.dashes == 0 => {}
                _ => {
                    self.line_start = false;
                    self.dashes = 0;
                }
            },
            _ => {}
        }
        if b == b'\n' {
            self.line_start = true;
            self.dashes = 0;
        }
        if self.part == Part::Head {
            self.head_byte(b);
        }
    }

    fn start_head(&mut self) {
        self.part = Part::Head;
        self.param = Param::Seek;
        self.line_start = true;
        self.dashes = 0;
        self.recent = [0; 10];
        self.head_names_method = false;
    }

    fn head_byte(&mut self, b: u8) {
        self.recent.rotate_left(1);
        self.recent[9] = b.to_ascii_lowercase();
        if self.recent[6..] == *b"\r\n\r\n" {
            self.end_param();
            self.part = Part::Body;
            if self.head_names_method {
                self.end_value();
                self.value = Some(Vec::new());
            }
            return;
        }
        match self.param {
            Param::Seek => {}
            Param::AfterName => match b {
                b'*' | b' ' | b'\t' => {}
                b'=' => self.param = Param::BeforeValue,
                _ => self.param = Param::Seek,
            },
            Param::BeforeValue => match b {
                b' ' | b'\t' => {}
                b'"' => self.param = Param::Quoted(false),
                b if ends_token(b) => self.param = Param::Seek,
                b => {
                    self.push_name(b);
                    self.param = Param::Token;
                }
            },
            Param::Token if ends_token(b) => self.end_param(),
            Param::Quoted(false) if b == b'"' => self.end_param(),
            Param::Quoted(false) if b == b'\\' => self.param = Param::Quoted(true),
            Param::Quoted(_) => {
                self.push_name(b);
                self.param = Param::Quoted(false);
            }
            Param::Token => self.push_name(b),
            Param::AfterContentId => match b {
                b' ' | b'\t' => {}
                b':' => self.param = Param::ContentId,
                _ => self.param = Param::Seek,
            },
            // Rack's `\s*` after the colon crosses line ends; the value itself does not.
            Param::ContentId if (b == b'\r' || b == b'\n') && self.name[0].seen() => {
                self.end_param()
            }
            Param::ContentId => self.push_name(b),
        }
        if self.param == Param::Seek {
            if self.recent[6..] == *b"name" {
                self.param = Param::AfterName;
            } else if self.recent == *b"content-id" {
                self.param = Param::AfterContentId;
            }
        }
    }

    fn push_name(&mut self, b: u8) {
        // Rack's `\s*` after a Content-ID's colon crosses line ends: no name starts with space.
        if !self.name[0].seen() && b.is_ascii_whitespace() {
            return;
        }
        self.name.iter_mut().for_each(|n| n.push(b));
        if b == b'\'' {
            self.apostrophes += 1;
            if self.apostrophes == 2 {
                self.name.iter_mut().for_each(MethodKey::restart);
            }
        }
    }

    /// Judges the name or `Content-ID` just read.
    fn end_param(&mut self) {
        if matches!(
            self.param,
            Param::Token | Param::Quoted(_) | Param::ContentId
        ) && self.name.iter_mut().any(MethodKey::is_method)
        {
            self.head_names_method = true;
            Found::mark(&mut self.found);
        }
        self.name.iter_mut().for_each(MethodKey::clear);
        self.apostrophes = 0;
        self.param = Param::Seek;
    }

    /// Keeps the bytes of a `_method` part's value up to the declared boundary, and no more
    /// than a method and the boundary take.
    fn capture_value(&mut self, b: u8) {
        let Some(value) = &mut self.value else {
            return;
        };
        value.push(b);
        let n = self.boundary.len();
        let limit = MAX_FIELD + n + 6;
        let ends = |tail: &[u8]| value.ends_with(tail) && value.len() >= n + 4;
        let delimited = (ends(b"\r\n") || ends(b"--"))
            && value[..value.len() - 2].ends_with(&self.boundary)
            && value[..value.len() - 2 - n].ends_with(b"--");
        if delimited || value.len() >= limit {
            self.end_value();
        }
    }

    /// The value as Rack cuts it: up to the first `--boundary` followed by CRLF or `--`, less
    /// the CRLF before it; without one in reach, a value that is no method.
    fn end_value(&mut self) {
        let Some(raw) = self.value.take() else {
            return;
        };
        let delimiter = [b"--".as_slice(), &self.boundary].concat();
        let cut = raw.windows(delimiter.len()).enumerate().find_map(|(i, w)| {
            let after = raw.get(i + delimiter.len()..i + delimiter.len() + 2);
            (w == delimiter && matches!(after, Some(b"\r\n") | Some(b"--"))).then_some(i)
        });
        let value = match cut {
            Some(i) => {
                let v = &raw[..i];
                v.strip_suffix(b"\r\n").unwrap_or(v).to_vec()
            }
            None => b"?".to_vec(),
        };
        Found::push(&mut self.found, value);
    }
}

/// Whether `b` ends an unquoted parameter value: Rack's `TOKEN` excludes these.
fn ends_token(b: u8) -> bool {
    b.is_ascii_whitespace()
        || b.is_ascii_control()
        || matches!(
            b,
            b'(' | b')'
                | b'<'
                | b'>'
                | b','
                | b';'
                | b':'
                | b'\\'
                | b'"'
                | b'/'
                | b'['
                | b']'
                | b'?'
                | b'='
        )
}

/// Where a [`JsonScan`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Json {
    /// Between tokens.
    #[default]
    Between,
    /// In a string; `true` right after a backslash.
    Str(bool),
    /// In a `\u` escape, with this many hex digits read.
    Unicode(u8),
}

/// A streaming scan of a JSON body for a top-level `_method` key (`\u` escapes decoded), which
/// `req.body._method` reads after `express.json()`. Nothing is validated: an application
/// refuses JSON that does not parse.
#[derive(Debug, Default)]
pub struct JsonScan {
    state: Json,
    /// How many objects and arrays are open.
    depth: usize,
    top_is_object: bool,
    /// Whether the next string at the top level is a key.
    expect_key: bool,
    string: Short,
    string_at_top_key: bool,
    unicode: u32,
    /// A top-level `_method` key was read, its value comes next.
    value_next: bool,
    /// The key just read is waiting for its `:`.
    key_is_method: bool,
    capturing: bool,
    /// Set once a top-level `_method` key has been seen.
    pub found: Option<Found>,
}

impl JsonScan {
    /// Scans the next chunk; true once a top-level `_method` key has been seen.
    pub fn feed(&mut self, mut chunk: &[u8]) -> bool {
        while let Some((&b, rest)) = chunk.split_first() {
            // A string that is neither a top-level key nor a `_method` value (a long base64
            // image, say) passes at memchr's pace.
            let skippable = self.state == Json::Str(false)
                && !self.string_at_top_key
                && !self.capturing
                && b != b'"'
                && b != b'\\';
            if skippable {
                match memchr::memchr2(b'"', b'\\', rest) {
                    Some(i) => chunk = &rest[i..],
                    None => break,
                }
                continue;
            }
            self.byte(b);
            chunk = rest;
        }
        self.found.is_some()
    }

    /// Ends the body; true if a top-level `_method` key was seen.
    pub fn finish(&mut self) -> bool {
        if self.value_next {
            Found::push(&mut self.found, b"?".to_vec());
        }
        self.found.is_some()
    }

    fn byte(&mut self, b: u8) {
        match self.state {
            Json::Str(true) => {
                self.state = Json::Str(false);
                match b {
                    b'u' => {
                        self.unicode = 0;
                        self.state = Json::Unicode(0);
                    }
                    b'n' => self.string.push(b'\n'),
                    b't' => self.string.push(b'\t'),
                    b'r' => self.string.push(b'\r'),
                    b'b' => self.string.push(0x08),
                    b'f' => self.string.push(0x0c),
                    b => self.string.push(b),
                }
            }
            Json::Unicode(n) => {
                let digit = char::from(b).to_digit(16).unwrap_or(0);
                self.unicode = self.unicode << 4 | digit;
                self.state = match n {
                    3 => {
                        // Only ASCII can spell `_method`; anything else stands in as `?`.
                        let c = u8::try_from(self.unicode).ok().filter(u8::is_ascii);
                        self.string.push(c.unwrap_or(b'?'));
                        Json::Str(false)
                    }
                    n => Json::Unicode(n + 1),
                }
            }
            Json::Str(false) => match b {
                b'\\' => self.state = Json::Str(true),
                b'"' => self.end_string(),
                b => self.string.push(b),
            },
            Json::Between => self.between(b),
        }
    }

    fn between(&mut self, b: u8) {
        if b.is_ascii_whitespace() {
            return;
        }
        if b == b':' && self.key_is_method {
            self.key_is_method = false;
            self.value_next = true;
            Found::mark(&mut self.found);
            return;
        }
        self.key_is_method = false;
        match b {
            b'"' => {
                self.string.clear();
                self.string_at_top_key = self.depth == 1 && self.top_is_object && self.expect_key;
                self.capturing = self.value_next && self.depth == 1;
                self.state = Json::Str(false);
            }
            b'{' | b'[' => {
                if self.depth == 0 {
                    self.top_is_object = b == b'{';
                    self.expect_key = true;
                }
                self.depth += 1;
                self.not_a_string_value();
            }
            b'}' | b']' => {
                self.depth = self.depth.saturating_sub(1);
                self.not_a_string_value();
            }
            b',' if self.depth == 1 => {
                self.expect_key = true;
                self.not_a_string_value();
            }
            _ => self.not_a_string_value(),
        }
    }

    fn end_string(&mut self) {
        self.state = Json::Between;
        if self.string_at_top_key {
            self.expect_key = false;
            self.key_is_method = !self.string.overflowed
                && is_method_key(&String::from_utf8_lossy(&self.string.bytes));
        } else if self.capturing {
            let value = match self.string.overflowed {
                true => b"?".to_vec(),
                false => self.string.bytes.clone(),
            };
            self.value_next = false;
            Found::push(&mut self.found, value);
        }
        self.capturing = false;
    }

    /// A `_method` key's value that is no string: no method.
    fn not_a_string_value(&mut self) {
        if self.value_next {
            self.value_next = false;
            Found::push(&mut self.found, b"?".to_vec());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_is_known_from_the_protocol_not_from_headers_alone() {
        use Framing::*;
        for (ended, chunked, length, want) in [
            // HTTP/1.1: the header fields are the protocol's framing.
            (true, false, None, Empty),
            (true, false, Some("0"), Empty),
            (false, false, Some("12"), Length(12)),
            (false, false, Some(" 12 "), Length(12)),
            (false, true, None, Unknown),
            (false, true, Some("12"), Unknown),
            // HTTP/2: a stream left open is a body, with or without a length.
            (false, false, None, Unknown),
            (false, false, Some("0"), Empty),
            (false, false, Some("x"), Unknown),
            // A stream ended on HEADERS has no body, whatever a header says.
            (true, false, Some("12"), Empty),
            (true, true, None, Empty),
        ] {
            let framing = Framing::of(ended, chunked, length.map(str::as_bytes));
            assert_eq!(framing, want, "{ended} {chunked} {length:?}");
            assert_eq!(framing.has_body(), want != Empty);
        }
    }

    #[test]
    fn a_coding_other_than_identity_encodes_the_body() {
        let encoded = |fields: &[&str]| body_is_encoded(fields.iter().map(|f| f.as_bytes()));
        for plain in [&[][..], &["identity"], &["Identity, "], &[""]] {
            assert!(!encoded(plain), "{plain:?}");
        }
        for coded in [
            &["gzip"][..],
            &["identity, deflate"],
            &["identity", "br"],
            &["x"],
        ] {
            assert!(encoded(coded), "{coded:?}");
        }
    }

    fn kind(fields: &[&str]) -> Result<BodyKind, Refusal> {
        body_kind(fields.iter().map(|f| f.as_bytes()))
    }

    #[test]
    fn the_body_kind_is_what_any_framework_would_parse() {
        let multipart = |b: &str| Ok(BodyKind::Multipart(b.as_bytes().to_vec()));
        for (fields, want) in [
            (&[][..], Ok(BodyKind::Form)),
            // Rack takes an empty Content-Type for none, and a form.
            (&[""], Ok(BodyKind::Form)),
            (&[" "], Ok(BodyKind::Form)),
            (&["; charset=utf-8"], Ok(BodyKind::Form)),
            (&["application/x-www-form-urlencoded"], Ok(BodyKind::Form)),
            (
                &["APPLICATION/X-WWW-FORM-URLENCODED;charset=utf-8"],
                Ok(BodyKind::Form),
            ),
            // PHP ends the media type at white space.
            (&["application/x-www-form-urlencoded x"], Ok(BodyKind::Form)),
            (&["multipart/form-data; boundary=abc"], multipart("abc")),
            (&["Multipart/Form-Data; BOUNDARY=\"a b\""], multipart("a b")),
            (&["multipart/mixed;boundary=abc;x=1"], multipart("abc")),
            // A `boundary=` Rack cannot read gives way to a later one.
            (
                &["multipart/form-data; boundary=; boundary=abc"],
                multipart("abc"),
            ),
            (&["multipart/form-data; boundary=\"\"x"], Ok(BodyKind::Form)),
            // Without a boundary Rack reads the body as url-encoded.
            (&["multipart/form-data"], Ok(BodyKind::Form)),
            (&["multipart/form-data; boundary="], Ok(BodyKind::Form)),
            (&["multipart/form-data; boundary=\""], Ok(BodyKind::Form)),
            (&["application/json"], Ok(BodyKind::Json)),
            (
                &["application/vnd.api+json; charset=utf-8"],
                Ok(BodyKind::Json),
            ),
            (&["text/plain"], Ok(BodyKind::Opaque)),
            (&["image/jpeg"], Ok(BodyKind::Opaque)),
            (&["text/plain; x=\"a,b\""], Ok(BodyKind::Opaque)),
            // Rack reads the first element of a list, others the whole value.
            (
                &["application/x-www-form-urlencoded, text/plain"],
                Err(Refusal::ContentType),
            ),
            (
                &["text/plain,application/x-www-form-urlencoded"],
                Err(Refusal::ContentType),
            ),
            (
                &["text/plain", "application/x-www-form-urlencoded"],
                Err(Refusal::ContentType),
            ),
        ] {
            assert_eq!(kind(fields), want, "{fields:?}");
        }
        let long = format!(
            "multipart/form-data; boundary={}",
            "b".repeat(MAX_BOUNDARY + 1)
        );
        assert_eq!(kind(&[&long]), Err(Refusal::ContentType));
    }

    /// Feeds `body` whole and byte by byte: both must find the same.
    fn scan(kind: &BodyKind, body: &[u8]) -> Option<Vec<String>> {
        let run = |chunk: usize| {
            let mut scan = BodyScan::new(kind).unwrap();
            for piece in body.chunks(chunk.max(1)) {
                scan.feed(piece);
            }
            scan.finish();
            scan.found().map(|f| {
                f.values
                    .iter()
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .collect::<Vec<_>>()
            })
        };
        let whole = run(body.len());
        assert_eq!(run(1), whole, "{:?}", String::from_utf8_lossy(body));
        whole
    }

    fn part(head: &str, value: &str) -> String {
        format!("--XyZ\r\n{head}\r\n\r\n{value}\r\n")
    }

    fn multipart(parts: &[String]) -> Vec<u8> {
        format!("{}--XyZ--\r\n", parts.concat()).into_bytes()
    }

    #[test]
    fn a_multipart_part_named_method_is_found_in_every_spelling_rack_or_php_reads() {
        let xyz = BodyKind::Multipart(b"XyZ".to_vec());
        let file = part(
            "Content-Disposition: form-data; name=\"photo\"; filename=\"a.jpg\"\r\nContent-Type: image/jpeg",
            "\u{ff}\u{d8}binary",
        );
        for head in [
            "Content-Disposition: form-data; name=\"_method\"",
            "content-disposition: form-data; name=_method",
            "Content-Disposition: form-data; NAME=\"_METHOD\"",
            "Content-Disposition: form-data;name=_method;x=1",
            "Content-Disposition: form-data; name = \"_method\"",
            "Content-Disposition: form-data; name=\"\\_method\"",
            "Content-Disposition: form-data; name=\"  _method\"",
            "Content-Disposition: form-data; name=\"%5Fmethod\"",
            "Content-Disposition: form-data; name*=utf-8''%5Fmethod",
            "Content-Disposition: form-data; name=\".method\"",
            // Rack drops brackets around a name, however many.
            "Content-Disposition: form-data; name=\"[_method]\"",
            "Content-Disposition: form-data; name=\"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[_method]\"",
            "Content-Disposition: form-data; name=_method]",
            // Rack ends an unquoted value at `/`, `?`, `=` and the like.
            "Content-Disposition: form-data; name=_method/x",
            // Rack names a part by its file name, or its Content-ID, when it has no name.
            "Content-Disposition: form-data; filename=\"_method\"",
            "Content-ID: _method",
            "Content-ID:\r\n _method",
            // Rack's pattern crosses into the next line of the header block.
            "Content-Disposition: form-data\r\n; name=\"_method\"",
            "Content-Type: text/plain\r\nContent-Disposition: form-data; name=\"x\"; name=\"_method\"",
        ] {
            for body in [
                multipart(&[part(head, "DELETE")]),
                multipart(&[file.clone(), part(head, "DELETE"), file.clone()]),
            ] {
                assert!(scan(&xyz, &body).is_some(), "{head:?}");
            }
        }
        // A delimiter line is one that begins with `--`, whatever boundary was declared.
        for body in [
            "--other\r\nContent-Disposition: form-data; name=\"_method\"\r\n\r\nDELETE\r\n",
            "preamble\r\n  --XyZ  \r\nContent-Disposition: form-data; name=_method\r\n\r\nx",
            "--XyZ\nContent-Disposition: form-data; name=_method\n\n\r\n\r\nx",
        ] {
            assert!(scan(&xyz, body.as_bytes()).is_some(), "{body:?}");
        }
    }

    #[test]
    fn ordinary_multipart_bodies_pass() {
        let xyz = BodyKind::Multipart(b"XyZ".to_vec());
        for body in [
            multipart(&[]),
            multipart(&[part(
                "Content-Disposition: form-data; name=\"caption\"",
                "_method",
            )]),
            multipart(&[part(
                "Content-Disposition: form-data; name=\"photo\"; filename=\"_method.jpg\"",
                "name=\"_method\"\r\nContent-ID: _method",
            )]),
            multipart(&[part(
                "Content-Disposition: form-data; name=\"_methods\"",
                "x",
            )]),
            multipart(&[part(
                "Content-Disposition: form-data; name=\"x_method\"",
                "x",
            )]),
            multipart(&[part(
                "Content-Disposition: form-data; name=\"_method[]\"",
                "x",
            )]),
            multipart(&[part(
                "Content-Disposition: form-data; name=\"a\"; xname=b",
                "x",
            )]),
        ] {
            assert_eq!(
                scan(&xyz, &body),
                None,
                "{:?}",
                String::from_utf8_lossy(&body)
            );
        }
        // Memory stays bounded whatever the body holds.
        let mut s = MultipartScan::new(b"XyZ".to_vec());
        s.feed(b"--XyZ\r\nContent-Disposition: form-data; name=\"");
        s.feed(&vec![b'a'; 1 << 20]);
        assert!(format!("{:?}", s.name).len() < 1000);
        s.feed(b"\"\r\n\r\n");
        assert!(!s.finish());
    }

    #[test]
    fn a_multipart_method_value_is_cut_where_rack_cuts_it() {
        let xyz = BodyKind::Multipart(b"XyZ".to_vec());
        let head = "Content-Disposition: form-data; name=\"_method\"";
        for (value, want) in [
            ("delete", "delete"),
            (" DELETE", " DELETE"),
            ("DELETE\r\n--other", "DELETE\r\n--other"),
        ] {
            let body = multipart(&[part(head, value)]);
            assert_eq!(scan(&xyz, &body), Some(vec![want.to_owned()]), "{value:?}");
        }
        // Without the declared boundary after it, the value is no method.
        let body = "--XyZ\r\nContent-Disposition: form-data; name=_method\r\n\r\nDELETE\r\n--abc--";
        assert_eq!(scan(&xyz, body.as_bytes()), Some(vec!["?".to_owned()]));
        let long = multipart(&[part(head, &"D".repeat(200))]);
        assert_eq!(scan(&xyz, &long), Some(vec!["?".to_owned()]));
    }

    #[test]
    fn a_top_level_json_method_key_is_found() {
        for (body, want) in [
            (r#"{"_method":"DELETE"}"#, vec!["DELETE"]),
            (
                r#" { "a" : [1, {"_method": "x"}], "_method" : "delete" } "#,
                vec!["delete"],
            ),
            (r#"{"\u005fmethod":"PUT"}"#, vec!["PUT"]),
            (r#"{"_METHOD":"PUT"}"#, vec!["PUT"]),
            (r#"{"_method":"DEL\u0045TE"}"#, vec!["DELETE"]),
            (r#"{"_method":" DELETE"}"#, vec![" DELETE"]),
            (r#"{"_method":1}"#, vec!["?"]),
            (r#"{"_method":{"a":"DELETE"}}"#, vec!["?"]),
            (r#"{"_method":"a","_method":"b"}"#, vec!["a", "b"]),
            (r#"{"_method":"#, vec!["?"]),
        ] {
            let want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
            assert_eq!(scan(&BodyKind::Json, body.as_bytes()), Some(want), "{body}");
        }
        for body in [
            r#"{"a":"_method"}"#,
            r#"{"a":{"_method":"DELETE"}}"#,
            r#"[{"_method":"DELETE"}]"#,
            r#"["_method", "DELETE"]"#,
            r#"{"a":"\"_method\":1"}"#,
            r#"{"_methods":"DELETE"}"#,
            r#""_method""#,
        ] {
            assert_eq!(scan(&BodyKind::Json, body.as_bytes()), None, "{body}");
        }
        // A key is one only with its colon.
        assert_eq!(scan(&BodyKind::Json, br#"{"_method""#), None);
    }
}
