//! A small OpenTelemetry collector for tests: an OTLP trace receiver on
//! `127.0.0.1:<free port>`, over gRPC or HTTP/protobuf, that keeps every
//! span it is sent. It runs on a thread of its own (usable from sync and
//! async tests alike) and stops when dropped.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
use prost::Message;
use tokio::sync::oneshot;

/// The transport the receiver speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// OTLP/gRPC (`TraceService/Export`).
    Grpc,
    /// OTLP/HTTP with protobuf bodies (`POST /v1/traces`).
    HttpProtobuf,
}

/// An attribute value, simplified.
#[derive(Debug, Clone, PartialEq)]
pub enum Attr {
    /// A string.
    Str(String),
    /// A boolean.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// Anything else, as debug text.
    Other(String),
}

/// A span as received.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedSpan {
    /// Its name.
    pub name: String,
    /// Trace id (hex).
    pub trace_id: String,
    /// Span id (hex).
    pub span_id: String,
    /// Parent span id (hex; empty for a root span).
    pub parent_span_id: String,
    /// Attributes.
    pub attributes: HashMap<String, Attr>,
    /// Span ids (hex) of its links.
    pub links: Vec<String>,
    /// Whether its status is an error.
    pub error: bool,
    /// The `service.name` of the resource that sent it.
    pub service: Option<String>,
}

impl ReceivedSpan {
    /// Attribute `key`, if present.
    pub fn attr(&self, key: &str) -> Option<&Attr> {
        self.attributes.get(key)
    }
}

/// A running receiver.
pub struct OtlpReceiver {
    port: u16,
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl OtlpReceiver {
    /// Starts a receiver on a free loopback port.
    pub fn start(protocol: OtlpProtocol) -> Self {
        let listener =
            TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).expect("kiln-testkit: binding the OTLP port");
        listener
            .set_nonblocking(true)
            .expect("kiln-testkit: non-blocking listener");
        let port = listener.local_addr().expect("kiln-testkit: OTLP port").port();
        let spans = Arc::new(Mutex::new(Vec::new()));
        let (stop, stopped) = oneshot::channel::<()>();
        let kept = spans.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("kiln-testkit: OTLP receiver runtime");
            runtime.block_on(serve(protocol, listener, kept, stopped));
        });
        Self {
            port,
            spans,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Base URL (`http://127.0.0.1:<port>`): what `OTEL_EXPORTER_OTLP_ENDPOINT`
    /// takes for either protocol.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.lock().expect("spans lock").clone()
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

type Kept = Arc<Mutex<Vec<ReceivedSpan>>>;

async fn serve(protocol: OtlpProtocol, listener: TcpListener, spans: Kept, stopped: oneshot::Receiver<()>) {
    let listener = tokio::net::TcpListener::from_std(listener).expect("kiln-testkit: tokio listener");
    let shutdown = async {
        let _ = stopped.await;
    };
    match protocol {
        OtlpProtocol::Grpc => {
            let incoming = futures::stream::unfold(listener, |l| async move {
                let conn = l.accept().await.map(|(socket, _)| socket);
                Some((conn, l))
            });
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(Collector(spans)))
                .serve_with_incoming_shutdown(incoming, shutdown)
                .await
                .expect("kiln-testkit: OTLP gRPC server");
        }
        OtlpProtocol::HttpProtobuf => {
            let app = axum::Router::new()
                .route("/v1/traces", axum::routing::post(http_export))
                .with_state(spans);
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
                .expect("kiln-testkit: OTLP HTTP server");
        }
    }
}

struct Collector(Kept);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        keep(&self.0, request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

async fn http_export(State(spans): State<Kept>, body: Bytes) -> impl IntoResponse {
    match ExportTraceServiceRequest::decode(body) {
        Ok(request) => {
            keep(&spans, request);
            let body = ExportTraceServiceResponse::default().encode_to_vec();
            (StatusCode::OK, [(header::CONTENT_TYPE, "application/x-protobuf")], body).into_response()
        }
        Err(e) => (
            StatusCode::BAD_REQUEST,
            format!("not an ExportTraceServiceRequest: {e}"),
        )
            .into_response(),
    }
}

fn keep(spans: &Kept, request: ExportTraceServiceRequest) {
    let mut kept = spans.lock().expect("spans lock");
    for resource_spans in request.resource_spans {
        let service = resource_spans.resource.as_ref().and_then(|r| {
            r.attributes
                .iter()
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| match attr(kv) {
                    Attr::Str(s) => Some(s),
                    _ => None,
                })
        });
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                kept.push(ReceivedSpan {
                    name: span.name,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    attributes: span.attributes.iter().map(|kv| (kv.key.clone(), attr(kv))).collect(),
                    links: span.links.iter().map(|l| hex(&l.span_id)).collect(),
                    error: span.status.is_some_and(|s| s.code == 2),
                    service: service.clone(),
                });
            }
        }
    }
}

fn attr(kv: &KeyValue) -> Attr {
    match &kv.value {
        Some(AnyValue {
            value: Some(Value::StringValue(s)),
        }) => Attr::Str(s.clone()),
        Some(AnyValue {
            value: Some(Value::BoolValue(b)),
        }) => Attr::Bool(*b),
        Some(AnyValue {
            value: Some(Value::IntValue(i)),
        }) => Attr::Int(*i),
        other => Attr::Other(format!("{other:?}")),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
