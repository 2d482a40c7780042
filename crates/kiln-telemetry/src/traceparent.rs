//! W3C Trace Context `traceparent` values (`00-<trace id>-<span id>-<flags>`),
//! read and written by OpenTelemetry's own propagator.

use std::collections::HashMap;

use opentelemetry::Context;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{SpanContext, TraceContextExt};
use opentelemetry_sdk::propagation::TraceContextPropagator;

const HEADER: &str = "traceparent";

/// The span a `traceparent` value names, if it is valid.
pub fn parse(value: &str) -> Option<SpanContext> {
    let carrier = HashMap::from([(HEADER.to_string(), value.trim().to_string())]);
    let cx = TraceContextPropagator::new().extract(&carrier);
    let span = cx.span().span_context().clone();
    span.is_valid().then_some(span)
}

/// The `traceparent` value naming `span`.
pub fn format(span: &SpanContext) -> String {
    let mut carrier = HashMap::new();
    let cx = Context::new().with_remote_span_context(span.clone());
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.remove(HEADER).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_garbage() {
        let value = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let span = parse(value).unwrap();
        assert_eq!(span.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(span.span_id().to_string(), "00f067aa0ba902b7");
        assert!(span.is_sampled() && span.is_remote());
        assert_eq!(format(&span), value);
        assert!(parse("00-00000000000000000000000000000000-00f067aa0ba902b7-01").is_none());
        assert!(parse("nonsense").is_none());
    }
}
