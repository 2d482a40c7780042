//! Errors of trace export.

/// Why traces cannot be exported.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// An `OTEL_*` variable holds a value kiln cannot use.
    #[error("{variable}={value:?}: {reason}")]
    Config {
        /// The variable.
        variable: &'static str,
        /// Its value.
        value: String,
        /// What is accepted.
        reason: &'static str,
    },
    /// The OTLP exporter could not be set up.
    #[error("setting up the OTLP trace exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    /// Spans could not be sent when the session ended.
    #[error("sending the last spans to the OTLP collector: {0}")]
    Flush(String),
}
