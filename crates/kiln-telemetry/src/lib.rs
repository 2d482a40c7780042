//! OpenTelemetry traces of kiln sessions.
//!
//! One trace per session: a session span, and under it a span per
//! operation the solver ran or answered from the cache (named after the
//! operation, e.g. `exec make test`), with these attributes:
//!
//! | attribute | value |
//! |---|---|
//! | `kiln.cached` | whether the result came from the cache |
//! | `kiln.node` | the node's definition digest |
//! | `kiln.duration_ms` | run time (for a cache hit: when it ran, the time saved) |
//! | `process.exit.code` | an exec's exit code |
//! | `container.image.name` | the image the operation's tree starts from |
//!
//! Failed operations have an error status with the error's first line. An
//! operation's span links to the spans of its inputs. The session span's
//! parent is the caller's span when there is one (a `traceparent` given by
//! the SDK, see [`SessionTrace`]), so that SDK spans and kiln's spans form
//! one trace.
//!
//! Spans are exported over OTLP, gRPC or HTTP/protobuf, when the standard
//! `OTEL_EXPORTER_OTLP_*` variables ask for it ([`TelemetryConfig`]).

mod config;
mod error;
mod session;
pub mod traceparent;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{SpanExporter, WithExportConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;

pub use config::{Protocol, TelemetryConfig};
pub use error::TelemetryError;
pub use session::{Following, ParentSource, SessionTrace};

/// The trace exporter of a kiln process.
pub struct Telemetry {
    provider: SdkTracerProvider,
}

impl Telemetry {
    /// Sets up export as `config` says. Call it inside a Tokio runtime (the
    /// gRPC client lives there); spans go out in batches from a thread of
    /// their own.
    pub fn start(config: &TelemetryConfig) -> Result<Self, TelemetryError> {
        let exporter = match config.protocol {
            Protocol::Grpc => {
                let mut builder = SpanExporter::builder().with_tonic();
                if let Some(endpoint) = &config.endpoint {
                    builder = builder.with_endpoint(endpoint);
                }
                if config.tls {
                    use opentelemetry_otlp::tonic_types::transport::ClientTlsConfig;
                    builder = builder.with_tls_config(ClientTlsConfig::new().with_enabled_roots());
                }
                builder.build()?
            }
            Protocol::HttpProtobuf => {
                let mut builder = SpanExporter::builder()
                    .with_http()
                    .with_protocol(opentelemetry_otlp::Protocol::HttpBinary);
                if let Some(endpoint) = &config.endpoint {
                    builder = builder.with_endpoint(endpoint);
                }
                builder.build()?
            }
        };
        let mut resource = Resource::builder();
        if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
            resource = resource.with_service_name("kiln");
        }
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource.build())
            .build();
        Ok(Self { provider })
    }

    /// A new session's trace: the session span is named `name` and starts
    /// now; its parent comes from `parent` (see [`SessionTrace`]).
    pub fn session(&self, name: impl Into<String>, parent: ParentSource) -> SessionTrace {
        SessionTrace::new(self.provider.tracer("kiln"), name.into(), parent)
    }

    /// Sends what is left and stops the exporter.
    pub async fn shutdown(self) -> Result<(), TelemetryError> {
        tokio::task::spawn_blocking(move || self.provider.shutdown())
            .await
            .map_err(|e| TelemetryError::Flush(e.to_string()))?
            .map_err(|e| TelemetryError::Flush(e.to_string()))
    }
}
