//! The HTTP endpoint the SDKs talk to: `POST /query` on 127.0.0.1, HTTP
//! Basic auth with the session token as user name, GraphQL JSON in and out.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, OnceLock};

use async_graphql::dynamic::Schema;
use axum::Router;
use axum::body::Body;
use axum::extract::DefaultBodyLimit;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE};
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use futures::future::BoxFuture;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use subtle::ConstantTimeEq;
use tokio::sync::oneshot;

use crate::api::Api;

pub use axum::body::Bytes;
pub use axum::http::StatusCode;

/// A function that answers a GraphQL request body elsewhere (an engine
/// serving the session), with the HTTP status and JSON to reply.
pub type Forward = Arc<dyn Fn(Bytes) -> BoxFuture<'static, (StatusCode, serde_json::Value)> + Send + Sync>;

/// What answers a server's requests.
#[derive(Clone)]
enum Backend {
    /// The session's API, in this process.
    Local { schema: Schema, api: Arc<Api> },
    /// An engine in another process.
    Forward(Forward),
}

/// Serves one API session.
#[derive(Clone)]
pub struct Server {
    backend: Backend,
    token: Arc<String>,
    /// The first W3C `traceparent` header a client sent.
    traceparent: Arc<OnceLock<String>>,
}

/// A running server.
pub struct ServerHandle {
    /// The loopback port it listens on.
    pub port: u16,
    /// The session token clients must present.
    pub token: String,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl ServerHandle {
    /// Stops accepting requests and waits (briefly: clients may hold idle
    /// keep-alive connections open) for requests in flight to finish.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if tokio::time::timeout(STOP_GRACE, &mut self.task).await.is_err() {
            self.task.abort();
        }
    }
}

/// How long stopping waits for requests in flight.
const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// A fresh random session token.
pub fn new_token() -> std::io::Result<String> {
    let mut bytes = [0u8; 24];
    getrandom::fill(&mut bytes).map_err(std::io::Error::other)?;
    Ok(hex::encode(bytes))
}

/// The nesting depth the GraphQL parser (async-graphql-parser) accepts.
const PARSER_DEPTH: usize = 64;

const LENIENT: GeneralPurposeConfig =
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);

/// Whether the `Authorization` header carries `token` as Basic user name
/// (standard or URL-safe base64, padded or not: SDKs differ).
fn authorized(headers: &HeaderMap, token: &str) -> bool {
    let Some(value) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let Some(encoded) = value.strip_prefix("Basic ").map(str::trim) else {
        return false;
    };
    let decoded = [
        GeneralPurpose::new(&base64::alphabet::STANDARD, LENIENT),
        GeneralPurpose::new(&base64::alphabet::URL_SAFE, LENIENT),
    ]
    .iter()
    .find_map(|engine| engine.decode(encoded).ok())
    .or_else(|| STANDARD.decode(encoded).ok())
    .or_else(|| URL_SAFE.decode(encoded).ok());
    let Some(decoded) = decoded else { return false };
    let user = decoded.split(|&b| b == b':').next().unwrap_or_default();
    user.ct_eq(token.as_bytes()).into()
}

/// The largest request body kiln reads (a query with a big `withNewFile`
/// contents, say). Dagger sets no limit of its own; this one keeps a
/// runaway client from exhausting memory.
pub const MAX_REQUEST_BYTES: usize = 256 << 20;

/// The JSON of a GraphQL error response.
fn error_json(message: String) -> serde_json::Value {
    serde_json::json!({ "errors": [{ "message": message }] })
}

/// A GraphQL error response.
fn graphql_error(status: StatusCode, message: String) -> Response {
    (status, axum::Json(error_json(message))).into_response()
}

async fn run(schema: &Schema, api: &Arc<Api>, request: async_graphql::Request) -> async_graphql::Response {
    let mut response = schema.execute(request.data(api.clone())).await;
    for e in &mut response.errors {
        if e.message == "recursion limit exceeded." {
            e.message = format!(
                "the query nests more than {PARSER_DEPTH} levels deep, the limit of kiln's GraphQL parser: \
                 split long chains (e.g. call sync() and continue from the returned ID)"
            );
        }
    }
    response
}

/// Reads a request body of at most [`MAX_REQUEST_BYTES`].
async fn read_body(body: Body) -> Result<Bytes, Response> {
    match Limited::new(body, MAX_REQUEST_BYTES).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(graphql_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the request is larger than kiln's limit of {} MiB; pass large contents as files \
                 (Host.directory, Host.file) instead of inline strings",
                MAX_REQUEST_BYTES >> 20
            ),
        )),
        Err(e) => Err(graphql_error(
            StatusCode::BAD_REQUEST,
            format!("reading the request body: {e}"),
        )),
    }
}

async fn query(State(server): State<Server>, request: axum::extract::Request) -> Response {
    let (parts, body) = request.into_parts();
    let headers = &parts.headers;
    if !authorized(headers, &server.token) {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Basic realm=\"kiln\"")],
            "missing or wrong session token\n",
        )
            .into_response();
    }
    if let Some(traceparent) = headers.get("traceparent").and_then(|v| v.to_str().ok()) {
        let _ = server.traceparent.set(traceparent.to_string());
    }
    let body = match read_body(body).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    let (status, json) = server.answer(body).await;
    (status, axum::Json(json)).into_response()
}

impl Server {
    /// A server for `api`, accepting `token`.
    pub fn new(api: Arc<Api>, token: String) -> Result<Self, async_graphql::dynamic::SchemaError> {
        let schema = crate::schema::shared()?;
        Ok(Self::with(Backend::Local { schema, api }, token))
    }

    /// A server whose requests `forward` answers, accepting `token`.
    pub fn forwarding(forward: Forward, token: String) -> Self {
        Self::with(Backend::Forward(forward), token)
    }

    fn with(backend: Backend, token: String) -> Self {
        Self {
            backend,
            token: Arc::new(token),
            traceparent: Arc::new(OnceLock::new()),
        }
    }

    /// Where the server keeps the `traceparent` header of the first request
    /// that carried one (the SDK's span, under which kiln traces the session).
    pub fn first_traceparent(&self) -> Arc<OnceLock<String>> {
        self.traceparent.clone()
    }

    /// Answers one GraphQL request body (`{"query": ...}`), without
    /// authentication: for `kiln query` and for an engine serving a client
    /// that authenticated its caller.
    pub async fn answer(&self, body: Bytes) -> (StatusCode, serde_json::Value) {
        let (schema, api) = match &self.backend {
            Backend::Local { schema, api } => (schema, api),
            Backend::Forward(forward) => return forward(body).await,
        };
        let request: async_graphql::Request = match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => {
                let message = format!("request body is not a GraphQL request: {e}");
                return (StatusCode::BAD_REQUEST, error_json(message));
            }
        };
        let response = run(schema, api, request).await;
        let json =
            serde_json::to_value(&response).unwrap_or_else(|e| error_json(format!("encoding the response: {e}")));
        (StatusCode::OK, json)
    }

    /// Starts listening on 127.0.0.1 (port 0: any free port).
    pub async fn start(self, port: u16) -> std::io::Result<ServerHandle> {
        let listener = tokio::net::TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).await?;
        let port = listener.local_addr()?.port();
        let token = self.token.to_string();
        let app = Router::new()
            .route("/query", post(query))
            .layer(DefaultBodyLimit::disable())
            .with_state(self);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
        });
        Ok(ServerHandle {
            port,
            token,
            stop: Some(stop),
            task,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, value.parse().unwrap());
        h
    }

    #[test]
    fn accepts_the_token_in_any_base64_flavour_and_nothing_else() {
        let token = "abc>>?";
        for enc in [
            STANDARD.encode(format!("{token}:")),
            URL_SAFE.encode(format!("{token}:")),
        ] {
            assert!(authorized(&headers(&format!("Basic {enc}")), token), "{enc}");
            assert!(authorized(
                &headers(&format!("Basic {}", enc.trim_end_matches('='))),
                token
            ));
        }
        assert!(!authorized(
            &headers(&format!("Basic {}", STANDARD.encode("wrong:"))),
            token
        ));
        assert!(!authorized(&headers("Bearer abc"), token));
        assert!(!authorized(&HeaderMap::new(), token));
    }
}
