//! Request traces: where each request's OpenTelemetry spans hang, and the
//! spans the core records for it (decode, cache, single-flight, queue, the
//! batch it ran in, inference, the prediction-log write).
//!
//! The spans are built by the OpenTelemetry SDK's tracer, which the server
//! installs once (`install`) when OTLP export is configured; until then every
//! function here is a branch on a `OnceLock` and returns at once. Spans are
//! recorded after the fact, from the times the core already takes (`Instant`s,
//! converted to wall time here) and, for the few steps it does not time, from
//! a start taken only for sampled requests (`start`): an unsampled request
//! pays no clock reads and holds no live span objects but its own, and a
//! batch's spans are recorded by its slot thread after every reply has gone
//! out.
//!
//! A request's place in its trace is a `TraceRef` (ids and the sampled flag,
//! `Copy`), carried by value into the batcher's jobs and the log's records:
//! unsampled requests (the sampler said no, or tracing is off) record nothing
//! but still know the trace id the client sent, for the log row.

use std::borrow::Cow;
use std::sync::{LazyLock, OnceLock};
use std::time::{Instant, SystemTime};

use opentelemetry::trace::{
    Link, Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId,
    TraceState, Tracer as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{SdkTracer, Span};
use prometheus::{IntCounter, IntCounterVec, Opts};

static TRACER: OnceLock<SdkTracer> = OnceLock::new();

/// Makes `tracer` the process's tracer. Only the first call counts (the SDK's
/// model is one provider per process); returns whether this one did.
pub fn install(tracer: SdkTracer) -> bool {
    TRACER.set(tracer).is_ok()
}

/// Whether spans are being recorded at all.
pub fn enabled() -> bool {
    TRACER.get().is_some()
}

/// Spans the exporter sent, and dropped (`reason`: `queue_full`, or
/// `export_failed` when the collector refused, failed or timed out).
/// Process-wide, like the tracer; every server's `Metrics` registers them.
pub static SPANS_EXPORTED: LazyLock<IntCounter> = LazyLock::new(|| {
    IntCounter::new(
        "inferd_trace_spans_exported_total",
        "Spans the OTLP exporter delivered to the collector",
    )
    .expect("valid")
});
/// Spans not delivered, by reason (see `SPANS_EXPORTED`).
pub static SPANS_DROPPED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    IntCounterVec::new(
        Opts::new(
            "inferd_trace_spans_dropped_total",
            "Spans not delivered: the export queue was full, or the export failed",
        ),
        &["reason"],
    )
    .inspect(|c| {
        // Both series from the start, at 0, so an alert can compare them.
        for reason in ["queue_full", "export_failed"] {
            c.with_label_values(&[reason]);
        }
    })
    .expect("valid")
});

/// A request's place in its trace: the span its children hang from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TraceRef {
    /// The trace it belongs to (the client's, or a new one).
    pub trace_id: Option<TraceId>,
    /// The span children hang from.
    pub span_id: Option<SpanId>,
    /// Spans are recorded under it (a tracer is installed and sampled it).
    pub sampled: bool,
}

impl TraceRef {
    /// The trace id as the W3C and OTLP write it (32 lower-case hex digits).
    pub fn trace_id_hex(&self) -> Option<String> {
        self.trace_id.map(|t| t.to_string())
    }

    fn span_context(&self, remote: bool) -> Option<SpanContext> {
        let (t, s) = (self.trace_id?, self.span_id?);
        Some(SpanContext::new(
            t,
            s,
            TraceFlags::SAMPLED,
            remote,
            TraceState::default(),
        ))
    }

    fn context(&self) -> Option<Context> {
        Some(Context::new().with_remote_span_context(self.span_context(true)?))
    }

    fn link(&self) -> Option<Link> {
        Some(Link::with_context(self.span_context(false)?))
    }
}

/// The W3C `traceparent` (and `tracestate`) a client sent, as the parent of
/// the request's span; `None` when absent or malformed (the request then
/// starts a trace of its own, as the W3C spec asks).
pub fn remote_parent(traceparent: Option<&str>, tracestate: Option<&str>) -> Option<SpanContext> {
    use opentelemetry::propagation::{Extractor, TextMapPropagator};
    struct Headers<'a>(&'a str, Option<&'a str>);
    impl Extractor for Headers<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            match key {
                "traceparent" => Some(self.0),
                "tracestate" => self.1,
                _ => None,
            }
        }
        fn keys(&self) -> Vec<&str> {
            vec!["traceparent", "tracestate"]
        }
    }
    let headers = Headers(traceparent?, tracestate);
    let cx = opentelemetry_sdk::propagation::TraceContextPropagator::new().extract(&headers);
    let sc = cx.span().span_context().clone();
    sc.is_valid().then_some(sc)
}

/// A request's own span (the root of its part of the trace), open while the
/// request is served.
pub struct RequestSpan {
    span: Option<Span>,
    at: TraceRef,
}

impl RequestSpan {
    /// Starts the request's span at `start`, continuing `parent` (the client's
    /// `traceparent`) when there is one. With no tracer installed nothing is
    /// recorded, but the client's trace id is kept for the log.
    pub fn start(
        name: Cow<'static, str>,
        parent: Option<&SpanContext>,
        start: Instant,
        attributes: impl FnOnce() -> Vec<KeyValue>,
    ) -> RequestSpan {
        let Some(tracer) = TRACER.get() else {
            let at = parent.map_or_else(TraceRef::default, |p| TraceRef {
                trace_id: Some(p.trace_id()),
                span_id: Some(p.span_id()),
                sampled: false,
            });
            return RequestSpan { span: None, at };
        };
        let cx = match parent {
            Some(p) => Context::new().with_remote_span_context(p.clone()),
            None => Context::new(),
        };
        // Attributes only once sampled: most requests are not, at low rates.
        let mut span = tracer
            .span_builder(name)
            .with_kind(SpanKind::Server)
            .with_start_time(wall(start))
            .start_with_context(tracer, &cx);
        if span.is_recording() {
            span.set_attributes(attributes());
        }
        let sc = span.span_context();
        let at = TraceRef {
            trace_id: Some(sc.trace_id()),
            span_id: Some(sc.span_id()),
            sampled: sc.is_sampled(),
        };
        RequestSpan {
            span: Some(span),
            at,
        }
    }

    /// Where the request's child spans hang.
    pub fn at(&self) -> TraceRef {
        self.at
    }

    /// Ends the span with the request's outcome: the HTTP status it stands for
    /// (5xx is an error, as the HTTP server semantic conventions have it).
    pub fn finish(self, status: u16, attributes: impl FnOnce() -> Vec<KeyValue>) {
        let Some(mut span) = self.span else { return };
        if span.is_recording() {
            span.set_attribute(KeyValue::new("http.response.status_code", status as i64));
            for kv in attributes() {
                span.set_attribute(kv);
            }
            if status >= 500 {
                span.set_status(Status::error(format!("HTTP {status}")));
            }
        }
        span.end();
    }
}

/// When a child span of `parent` starts: `None` (no clock read) unless the
/// request is sampled, so untraced requests pay nothing for their spans.
pub fn start(parent: TraceRef) -> Option<Instant> {
    parent.sampled.then(Instant::now)
}

/// Records a finished child span of `parent` from `start` (see `start`) until
/// now; returns where it sits, for links to it.
pub fn child(
    parent: TraceRef,
    name: &'static str,
    start: Option<Instant>,
    attributes: impl FnOnce() -> Vec<KeyValue>,
    links: Vec<Link>,
) -> Option<TraceRef> {
    let start = start?;
    record(
        parent,
        name,
        wall(start),
        SystemTime::now(),
        attributes,
        links,
        false,
    )
}

fn record(
    parent: TraceRef,
    name: &'static str,
    start: SystemTime,
    end: SystemTime,
    attributes: impl FnOnce() -> Vec<KeyValue>,
    links: Vec<Link>,
    failed: bool,
) -> Option<TraceRef> {
    if !parent.sampled {
        return None;
    }
    let tracer = TRACER.get()?;
    let cx = parent.context()?;
    let mut span = tracer
        .span_builder(name)
        .with_kind(SpanKind::Internal)
        .with_start_time(start)
        .with_attributes(attributes())
        .with_links(links)
        .start_with_context(tracer, &cx);
    if failed {
        span.set_status(Status::error("failed"));
    }
    let sc = span.span_context().clone();
    span.end_with_timestamp(end);
    Some(TraceRef {
        trace_id: Some(sc.trace_id()),
        span_id: Some(sc.span_id()),
        sampled: sc.is_sampled(),
    })
}

/// One model batch: a `batch` span under the first sampled request merged into
/// it, linked to every sampled request; and for each of those, its `queue`
/// span (enqueued until the batch started) and its `inference` span (the
/// batch's run, linked to the batch span). `sampled`: each sampled job's
/// trace, when it was queued and how many instances it brought; `size` and
/// `requests`: the whole batch's instances and jobs; `run`: when it started
/// and when the model answered; `ok`: whether it answered (a failed or
/// cancelled run marks the batch span an error).
pub fn batch(
    sampled: &[(TraceRef, Instant, usize)],
    size: usize,
    requests: usize,
    run: (Instant, Instant),
    ok: bool,
) {
    let Some(&(first, ..)) = sampled.first() else {
        return;
    };
    let links = sampled.iter().filter_map(|(t, ..)| t.link()).collect();
    let (start, end) = (wall(run.0), wall(run.1));
    let Some(batch) = record(
        first,
        "batch",
        start,
        end,
        || {
            vec![
                KeyValue::new("inferd.batch.size", size as i64),
                KeyValue::new("inferd.batch.requests", requests as i64),
            ]
        },
        links,
        !ok,
    ) else {
        return;
    };
    for (t, enqueued, n) in sampled {
        record(
            *t,
            "queue",
            wall(*enqueued),
            start,
            Vec::new,
            Vec::new(),
            false,
        );
        let link = batch.link().into_iter().collect();
        record(
            *t,
            "inference",
            start,
            end,
            || {
                vec![
                    KeyValue::new("inferd.batch.size", size as i64),
                    KeyValue::new("inferd.instances", *n as i64),
                ]
            },
            link,
            !ok,
        );
    }
}

/// `predlog.write` for each sampled record of a batch the log's sink has just
/// written: from the record's hand-off (`logged`) until now.
pub fn logged<'a>(records: impl Iterator<Item = (TraceRef, SystemTime)> + 'a, sink: &'static str) {
    if !enabled() {
        return;
    }
    let now = SystemTime::now();
    for (t, logged) in records.filter(|(t, _)| t.sampled) {
        record(
            t,
            "predlog.write",
            logged,
            now,
            || vec![KeyValue::new("inferd.predlog.sink", sink)],
            Vec::new(),
            false,
        );
    }
}

/// The wall-clock time of `t`: spans carry wall time, the core keeps
/// `Instant`s.
pub fn wall(t: Instant) -> SystemTime {
    let (now, sys) = (Instant::now(), SystemTime::now());
    match t.checked_duration_since(now) {
        Some(ahead) => sys + ahead,
        None => sys.checked_sub(now - t).unwrap_or(sys),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_is_continued_only_when_valid() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let sc = remote_parent(Some(tp), Some("vendor=x")).expect("valid");
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(sc.span_id().to_string(), "00f067aa0ba902b7");
        assert!(sc.is_sampled() && sc.is_remote());
        assert_eq!(sc.trace_state().get("vendor"), Some("x"));
        let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        assert!(!remote_parent(Some(unsampled), None).unwrap().is_sampled());
        for bad in [
            "",
            "garbage",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        ] {
            assert!(remote_parent(Some(bad), None).is_none(), "{bad}");
        }
        assert!(remote_parent(None, Some("vendor=x")).is_none());
    }

    /// With no tracer installed (this test binary installs none), a request
    /// keeps the client's trace id for the log but records nothing.
    #[test]
    fn without_a_tracer_the_clients_trace_id_is_kept() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let parent = remote_parent(Some(tp), None);
        let span = RequestSpan::start(
            "POST /predict".into(),
            parent.as_ref(),
            Instant::now(),
            Vec::new,
        );
        let at = span.at();
        assert_eq!(
            at.trace_id_hex().as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert!(!at.sampled);
        let t = Instant::now();
        assert!(child(at, "decode", Some(t), Vec::new, Vec::new()).is_none());
        span.finish(200, Vec::new);
        let none = RequestSpan::start("POST /predict".into(), None, Instant::now(), Vec::new);
        assert_eq!(none.at(), TraceRef::default());
    }

    #[test]
    fn wall_time_keeps_the_distance_between_instants() {
        let a = Instant::now();
        let b = a + std::time::Duration::from_millis(250);
        let d = wall(b).duration_since(wall(a)).unwrap();
        assert!(
            d.abs_diff(std::time::Duration::from_millis(250)) < std::time::Duration::from_millis(5),
            "{d:?}"
        );
    }
}
