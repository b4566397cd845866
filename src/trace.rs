//! Tracing: W3C trace context (`traceparent` / `tracestate`) continued or started, one span per
//! request, exported over OTLP/HTTP (protobuf) to a collector in batches. A request only hands
//! its span to a bounded queue (dropped and counted when full): export happens on its own
//! thread and never blocks or fails a request.

use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    span, status, ResourceSpans, ScopeSpans, Span, Status,
};
use prost::Message;

use crate::metrics;

/// Where spans go and how they are batched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceSettings {
    /// The collector's OTLP/HTTP traces URL (`http://host:4318/v1/traces`).
    pub endpoint: String,
    /// `service.name` of the resource.
    pub service_name: String,
    /// Most spans held waiting for export; beyond, spans are dropped (and counted).
    pub queue: usize,
    /// Most spans in one export.
    pub batch: usize,
    /// Longest a span waits before its batch is sent.
    pub interval: Duration,
    /// Longest one export may take.
    pub timeout: Duration,
}

/// A request's place in a trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    /// The trace, continued or new.
    pub trace_id: [u8; 16],
    /// This request's span.
    pub span_id: [u8; 8],
    /// The caller's span, when the trace was continued.
    pub parent: Option<[u8; 8]>,
    /// W3C trace flags (`01`: sampled).
    pub flags: u8,
}

impl TraceContext {
    /// Continues the trace of a valid `traceparent`, else starts one (sampled).
    pub fn continue_or_start(traceparent: Option<&[u8]>) -> TraceContext {
        let span_id = random_id::<8>();
        match traceparent.and_then(parse_traceparent) {
            Some((trace_id, parent, flags)) => TraceContext {
                trace_id,
                span_id,
                parent: Some(parent),
                flags,
            },
            None => TraceContext {
                trace_id: random_id::<16>(),
                span_id,
                parent: None,
                flags: 1,
            },
        }
    }

    /// The `traceparent` the upstream gets: this request's span as the parent.
    pub fn traceparent(&self) -> String {
        format!(
            "00-{}-{}-{:02x}",
            hex(&self.trace_id),
            hex(&self.span_id),
            self.flags
        )
    }

    /// Whether the caller wants this trace recorded.
    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }
}

fn random_id<const N: usize>() -> [u8; N] {
    loop {
        let bytes = uuid::Uuid::new_v4().into_bytes();
        let mut id = [0u8; N];
        id.copy_from_slice(&bytes[..N]);
        // All-zero ids are invalid (W3C §3.2.2.3).
        if id.iter().any(|b| *b != 0) {
            return id;
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `00-<32 hex>-<16 hex>-<2 hex>` (W3C Trace Context §3.2): version 00 exactly as specified,
/// a later version by its first four fields; all-zero ids and version `ff` are invalid.
pub fn parse_traceparent(value: &[u8]) -> Option<([u8; 16], [u8; 8], u8)> {
    let text = std::str::from_utf8(value).ok()?.trim();
    let mut fields = text.split('-');
    let (version, trace, parent, flags) = (
        fields.next()?,
        fields.next()?,
        fields.next()?,
        fields.next()?,
    );
    let lower_hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    if !lower_hex(version, 2) || version == "ff" || (version == "00" && fields.next().is_some()) {
        return None;
    }
    if !(lower_hex(trace, 32) && lower_hex(parent, 16) && lower_hex(flags, 2)) {
        return None;
    }
    let bytes = |s: &str| -> Option<Vec<u8>> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
            .collect()
    };
    let trace_id: [u8; 16] = bytes(trace)?.try_into().ok()?;
    let parent_id: [u8; 8] = bytes(parent)?.try_into().ok()?;
    if trace_id.iter().all(|b| *b == 0) || parent_id.iter().all(|b| *b == 0) {
        return None;
    }
    Some((trace_id, parent_id, u8::from_str_radix(flags, 16).ok()?))
}

/// One finished request, as exported.
#[derive(Debug, Clone)]
pub struct SpanRecord {
    /// Its place in the trace.
    pub context: TraceContext,
    /// The caller's `tracestate`, passed on unchanged.
    pub trace_state: String,
    /// `route` label value (`token`, `proxy`) and the configured route name.
    pub name: String,
    /// Start, Unix nanoseconds.
    pub start_unix_nano: u64,
    /// End, Unix nanoseconds.
    pub end_unix_nano: u64,
    /// The method.
    pub method: String,
    /// The status answered (0: none).
    pub status: u16,
}

impl SpanRecord {
    fn into_otlp(self) -> Span {
        let attribute = |key: &str, value: any_value::Value| KeyValue {
            key: key.to_owned(),
            value: Some(AnyValue { value: Some(value) }),
            ..Default::default()
        };
        let error = self.status == 0 || self.status >= 500;
        Span {
            trace_id: self.context.trace_id.to_vec(),
            span_id: self.context.span_id.to_vec(),
            parent_span_id: self.context.parent.map(|p| p.to_vec()).unwrap_or_default(),
            trace_state: self.trace_state,
            flags: u32::from(self.context.flags),
            name: self.name.clone(),
            kind: span::SpanKind::Server as i32,
            start_time_unix_nano: self.start_unix_nano,
            end_time_unix_nano: self.end_unix_nano,
            attributes: vec![
                attribute(
                    "http.request.method",
                    any_value::Value::StringValue(self.method),
                ),
                attribute("http.route", any_value::Value::StringValue(self.name)),
                attribute(
                    "http.response.status_code",
                    any_value::Value::IntValue(i64::from(self.status)),
                ),
            ],
            status: Some(Status {
                code: match error {
                    true => status::StatusCode::Error as i32,
                    false => status::StatusCode::Unset as i32,
                },
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

/// Unix nanoseconds now.
pub fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Hands spans to the export thread, started with the first span (after Pingora's daemon
/// fork, which a thread started earlier would not survive).
pub struct Exporter {
    settings: TraceSettings,
    queue: OnceLock<Option<SyncSender<SpanRecord>>>,
}

impl Exporter {
    /// An exporter for `settings`.
    pub fn new(settings: TraceSettings) -> Exporter {
        Exporter {
            settings,
            queue: OnceLock::new(),
        }
    }

    /// Queues a finished span; a full queue drops it (counted) rather than wait.
    pub fn record(&self, span: SpanRecord) {
        let queue = self.queue.get_or_init(|| {
            let (queue, spans) = sync_channel(self.settings.queue.max(1));
            let settings = self.settings.clone();
            let started = std::thread::Builder::new()
                .name("otlp exporter".into())
                .spawn(move || export_loop(&settings, &spans));
            match started {
                Ok(_) => Some(queue),
                Err(e) => {
                    log::error!("cannot start the span exporter, spans are dropped: {e}");
                    None
                }
            }
        });
        let sent = queue.as_ref().is_some_and(|q| q.try_send(span).is_ok());
        if !sent {
            metrics::get().spans_dropped.inc();
        }
    }
}

fn export_loop(settings: &TraceSettings, spans: &Receiver<SpanRecord>) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(settings.timeout))
        .http_status_as_error(true)
        .build()
        .into();
    let mut batch: Vec<SpanRecord> = Vec::with_capacity(settings.batch);
    let mut deadline = Instant::now() + settings.interval;
    loop {
        let wait = deadline.saturating_duration_since(Instant::now());
        match spans.recv_timeout(wait) {
            Ok(span) => {
                batch.push(span);
                if batch.len() < settings.batch {
                    continue;
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        if !batch.is_empty() {
            let request = encode(settings, std::mem::take(&mut batch));
            let sent = agent
                .post(&settings.endpoint)
                .header("Content-Type", "application/x-protobuf")
                .send(&request[..]);
            let result = match sent {
                Ok(_) => "ok",
                Err(e) => {
                    log::debug!("otlp export to {} failed: {e}", settings.endpoint);
                    "error"
                }
            };
            metrics::get()
                .span_exports
                .with_label_values(&[result])
                .inc();
        }
        deadline = Instant::now() + settings.interval;
    }
}

fn encode(settings: &TraceSettings, batch: Vec<SpanRecord>) -> Vec<u8> {
    let resource = Resource {
        attributes: vec![KeyValue {
            key: "service.name".into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(settings.service_name.clone())),
            }),
            ..Default::default()
        }],
        ..Default::default()
    };
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(resource),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "tokengate".into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..Default::default()
                }),
                spans: batch.into_iter().map(SpanRecord::into_otlp).collect(),
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
    .encode_to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparents_are_parsed_as_w3c_says() {
        let good = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let (trace, parent, flags) = parse_traceparent(good).unwrap();
        assert_eq!(hex(&trace), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!((hex(&parent).as_str(), flags), ("00f067aa0ba902b7", 1));
        assert!(parse_traceparent(
            b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-later"
        )
        .is_some());
        for bad in [
            &b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra"[..],
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            b"garbage",
            b"",
        ] {
            assert_eq!(
                parse_traceparent(bad),
                None,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn a_trace_is_continued_with_a_new_span_or_started() {
        let continued = TraceContext::continue_or_start(Some(
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
        ));
        assert_eq!(hex(&continued.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(
            continued.parent.map(|p| hex(&p)).as_deref(),
            Some("00f067aa0ba902b7")
        );
        assert!(!continued.sampled());
        let header = continued.traceparent();
        assert!(
            header.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-") && header.ends_with("-00")
        );
        assert_ne!(&header[36..52], "00f067aa0ba902b7");
        let started = TraceContext::continue_or_start(Some(b"nonsense"));
        assert_eq!(started.parent, None);
        assert!(started.sampled());
        assert_eq!(
            parse_traceparent(started.traceparent().as_bytes()).map(|t| t.0),
            Some(started.trace_id)
        );
    }
}
