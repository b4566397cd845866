//! One access-log line per request on stdout, JSON or text; never a token, secret or claim value
//! other than the subject.

use std::io::Write;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object a line, for log pipelines.
    Json,
    /// One human-readable line.
    Text,
}

impl std::str::FromStr for LogFormat {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        match s.trim().to_ascii_lowercase().as_str() {
            "json" => Ok(LogFormat::Json),
            "text" => Ok(LogFormat::Text),
            _ => Err(()),
        }
    }
}

/// What one request did, as logged.
#[derive(Debug, Serialize)]
pub struct Entry<'a> {
    /// When the request ended, RFC 3339 UTC.
    pub time: String,
    /// The propagated or generated request id.
    pub request_id: &'a str,
    /// HTTP method.
    pub method: &'a str,
    /// Path without the query string, which may carry secrets.
    pub path: &'a str,
    /// Status answered; 0 when none could be sent.
    pub status: u16,
    /// `token`, `proxy` or `authorize`.
    pub route: &'a str,
    /// Seconds from the first filter to the end of the response.
    pub duration: f64,
    /// Seconds the upstream took to its response header, when it was asked.
    pub upstream_duration: Option<f64>,
    /// Request body bytes read.
    pub bytes_in: usize,
    /// Response body bytes sent.
    pub bytes_out: usize,
    /// The verified subject, when a valid token came with the request.
    pub subject: Option<&'a str>,
    /// The error code, when tokengate refused or failed the request.
    pub reason: Option<&'a str>,
}

/// The access log's sink; `None` format means off.
#[derive(Debug, Clone, Copy)]
pub struct AccessLog {
    format: Option<LogFormat>,
}

impl AccessLog {
    /// A log writing `format` lines, or nothing.
    pub fn new(format: Option<LogFormat>) -> AccessLog {
        AccessLog { format }
    }

    /// Formats one line, newline included; `None` when the log is off.
    pub fn line(&self, entry: &Entry<'_>) -> Option<Vec<u8>> {
        let mut line = match self.format? {
            LogFormat::Json => serde_json::to_vec(entry).ok()?,
            LogFormat::Text => text(entry).into_bytes(),
        };
        line.push(b'\n');
        Some(line)
    }

    /// Whether lines are written at all; callers skip building an entry when not.
    pub fn enabled(&self) -> bool {
        self.format.is_some()
    }

    /// Writes the line to stdout in one call, so lines from several threads never interleave.
    pub fn write(&self, entry: &Entry<'_>) {
        if let Some(line) = self.line(entry) {
            // A closed stdout must not take the proxy down; the line is lost, nothing else.
            let _ = std::io::stdout().lock().write_all(&line);
        }
    }
}

/// The current time as RFC 3339 with milliseconds.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

fn text(e: &Entry<'_>) -> String {
    let upstream = e
        .upstream_duration
        .map_or_else(|| "-".to_owned(), |d| format!("{d:.6}s"));
    format!(
        "{} {} {} {} {} route={} duration={:.6}s upstream={} in={} out={} subject={} reason={}",
        e.time,
        e.request_id,
        e.method,
        e.path,
        e.status,
        e.route,
        e.duration,
        upstream,
        e.bytes_in,
        e.bytes_out,
        e.subject.unwrap_or("-"),
        e.reason.unwrap_or("-"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry<'static> {
        Entry {
            time: "2026-11-28T00:00:00.000Z".into(),
            request_id: "rid",
            method: "POST",
            path: "/api/v1/token",
            status: 401,
            route: "token",
            duration: 0.000_25,
            upstream_duration: None,
            bytes_in: 12,
            bytes_out: 70,
            subject: None,
            reason: Some("token_expired"),
        }
    }

    #[test]
    fn json_line_has_every_field_in_order() {
        let line = AccessLog::new(Some(LogFormat::Json))
            .line(&entry())
            .unwrap();
        assert_eq!(
            String::from_utf8(line).unwrap(),
            "{\"time\":\"2026-11-28T00:00:00.000Z\",\"request_id\":\"rid\",\"method\":\"POST\",\"path\":\"/api/v1/token\",\"status\":401,\"route\":\"token\",\"duration\":0.00025,\"upstream_duration\":null,\"bytes_in\":12,\"bytes_out\":70,\"subject\":null,\"reason\":\"token_expired\"}\n"
        );
    }

    #[test]
    fn text_line_and_off() {
        let line = AccessLog::new(Some(LogFormat::Text))
            .line(&entry())
            .unwrap();
        assert_eq!(
            String::from_utf8(line).unwrap(),
            "2026-11-28T00:00:00.000Z rid POST /api/v1/token 401 route=token duration=0.000250s upstream=- in=12 out=70 subject=- reason=token_expired\n"
        );
        assert!(AccessLog::new(None).line(&entry()).is_none());
    }
}
