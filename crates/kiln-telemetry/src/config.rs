//! Whether and how to export traces, from the standard `OTEL_*` variables.

use crate::TelemetryError;

/// The OTLP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// OTLP over gRPC (`grpc`, usually port 4317).
    Grpc,
    /// OTLP over HTTP with protobuf bodies (`http/protobuf`, usually port
    /// 4318): the default, as the OpenTelemetry specification asks.
    HttpProtobuf,
}

/// Where traces go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TelemetryConfig {
    /// The transport.
    pub protocol: Protocol,
    /// The collector's URL. `None` lets the exporter read it from
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (used as is) or
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` (`/v1/traces` appended for HTTP); a
    /// given URL is used as is.
    pub endpoint: Option<String>,
    /// Whether the endpoint is `https://` (gRPC then uses TLS with the
    /// system's root certificates).
    pub tls: bool,
}

const TRACES_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
const ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
const TRACES_PROTOCOL: &str = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL";
const PROTOCOL: &str = "OTEL_EXPORTER_OTLP_PROTOCOL";

impl TelemetryConfig {
    /// Reads the process environment (see [`TelemetryConfig::from_vars`]).
    pub fn from_env() -> Result<Option<Self>, TelemetryError> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// Tracing is on when `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` is set (non-empty), unless
    /// `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`. The protocol
    /// comes from `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`, else
    /// `OTEL_EXPORTER_OTLP_PROTOCOL`: `grpc` or `http/protobuf` (the
    /// default); `http/json` is not supported.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Option<Self>, TelemetryError> {
        let set = |name: &str| var(name).filter(|v| !v.trim().is_empty());
        if set("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
            || set("OTEL_TRACES_EXPORTER").is_some_and(|v| v.trim() == "none")
        {
            return Ok(None);
        }
        let Some(endpoint) = set(TRACES_ENDPOINT).or_else(|| set(ENDPOINT)) else {
            return Ok(None);
        };
        let (name, value) = match set(TRACES_PROTOCOL) {
            Some(v) => (TRACES_PROTOCOL, v),
            None => (PROTOCOL, set(PROTOCOL).unwrap_or_else(|| "http/protobuf".into())),
        };
        let protocol = match value.trim() {
            "grpc" => Protocol::Grpc,
            "http/protobuf" => Protocol::HttpProtobuf,
            other => {
                return Err(TelemetryError::Config {
                    variable: name,
                    value: other.to_string(),
                    reason: "kiln exports traces over `grpc` or `http/protobuf`",
                });
            }
        };
        Ok(Some(Self {
            protocol,
            endpoint: None,
            tls: endpoint.trim().starts_with("https://"),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(vars: &[(&str, &str)]) -> Result<Option<TelemetryConfig>, TelemetryError> {
        TelemetryConfig::from_vars(|name| vars.iter().find(|(n, _)| *n == name).map(|(_, v)| v.to_string()))
    }

    #[test]
    fn reads_the_standard_variables() {
        assert_eq!(config(&[]).unwrap(), None);
        assert_eq!(config(&[(ENDPOINT, "")]).unwrap(), None);
        let http = config(&[(ENDPOINT, "http://127.0.0.1:4318")]).unwrap().unwrap();
        assert_eq!((http.protocol, http.tls), (Protocol::HttpProtobuf, false));
        let grpc = config(&[(TRACES_ENDPOINT, "https://collector:4317"), (PROTOCOL, "grpc")])
            .unwrap()
            .unwrap();
        assert_eq!((grpc.protocol, grpc.tls), (Protocol::Grpc, true));
        let traces_first = config(&[
            (ENDPOINT, "http://x"),
            (PROTOCOL, "grpc"),
            (TRACES_PROTOCOL, "http/protobuf"),
        ]);
        assert_eq!(traces_first.unwrap().unwrap().protocol, Protocol::HttpProtobuf);
        assert_eq!(
            config(&[(ENDPOINT, "http://x"), ("OTEL_SDK_DISABLED", "TRUE")]).unwrap(),
            None
        );
        assert_eq!(
            config(&[(ENDPOINT, "http://x"), ("OTEL_TRACES_EXPORTER", "none")]).unwrap(),
            None
        );
        let json = config(&[(ENDPOINT, "http://x"), (PROTOCOL, "http/json")]).unwrap_err();
        assert!(
            json.to_string().contains("OTEL_EXPORTER_OTLP_PROTOCOL=\"http/json\""),
            "{json}"
        );
    }
}
