//! Traces of real sessions reach a real OTLP receiver on loopback, over
//! gRPC and over HTTP/protobuf: `kiln session` as an SDK starts it, with
//! the SDK's `traceparent` header on its request. The session span joins
//! the SDK's trace under its span; operation spans hang from the session
//! span; a second session finds its exec in the cache.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::Stdio;

use common::{Env, exec_query};
use kiln_testkit::{Attr, OtlpProtocol, OtlpReceiver, ReceivedSpan};

/// Runs one session: sends `query` with the SDK span `traceparent`, then
/// ends the session as the SDKs do (closing kiln's stdin).
fn session(env: &Env, receiver: &OtlpReceiver, protocol: &str, query: &str, traceparent: &str) {
    let mut kiln = env
        .kiln(&["--progress", "plain", "session"])
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint())
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("kiln session starts");
    let mut line = String::new();
    BufReader::new(kiln.stdout.take().unwrap())
        .read_line(&mut line)
        .expect("session line");
    let session: serde_json::Value = serde_json::from_str(&line).expect("session line is JSON");
    let port = session["port"].as_u64().expect("port");
    let token = session["session_token"].as_str().expect("token");

    let body = serde_json::json!({ "query": query }).to_string();
    let mut http = TcpStream::connect(("127.0.0.1", port as u16)).expect("connect");
    write!(
        http,
        "POST /query HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {}\r\ntraceparent: {traceparent}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        kiln_testkit::basic_authorization(token, ""),
        body.len()
    )
    .expect("request sent");
    let mut response = String::new();
    http.read_to_string(&mut response).expect("response");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(!response.contains("\"errors\""), "{response}");

    drop(kiln.stdin.take());
    let status = kiln.wait().expect("kiln session ends");
    assert!(status.success());
}

fn traced(protocol: OtlpProtocol, name: &str) {
    let env = Env::new();
    let receiver = OtlpReceiver::start(protocol);
    let query = exec_query(None, &format!("echo traced over {name}"));
    let sdk = [
        ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"),
        ("1bf7651916cd43dd8448eb211c80319d", "c7ad6b7169203332"),
    ];
    for (trace, span) in sdk {
        session(&env, &receiver, name, &query, &format!("00-{trace}-{span}-01"));
    }
    let spans = receiver.spans();
    for (run, (trace, sdk_span)) in sdk.iter().enumerate() {
        let of_trace: Vec<&ReceivedSpan> = spans.iter().filter(|s| s.trace_id == *trace).collect();
        let session = of_trace
            .iter()
            .find(|s| s.name == "kiln session")
            .unwrap_or_else(|| panic!("no session span in trace {trace}: {spans:#?}"));
        assert_eq!(session.parent_span_id, *sdk_span, "under the SDK's span");
        let exec = of_trace
            .iter()
            .find(|s| s.name.starts_with("exec sh -c 'echo traced over"))
            .unwrap_or_else(|| panic!("no exec span: {of_trace:#?}"));
        let pull = of_trace
            .iter()
            .find(|s| s.name == "pull docker.io/library/busybox")
            .unwrap_or_else(|| panic!("no pull span: {of_trace:#?}"));
        for op in [exec, pull] {
            assert_eq!(op.parent_span_id, session.span_id, "{} under the session", op.name);
            assert_eq!(
                op.attr("container.image.name"),
                Some(&Attr::Str("docker.io/library/busybox".into()))
            );
        }
        assert_eq!(
            exec.attr("kiln.cached"),
            Some(&Attr::Bool(run == 1)),
            "run {run}: {exec:#?}"
        );
        assert_eq!(exec.attr("process.exit.code"), Some(&Attr::Int(0)));
        assert!(matches!(exec.attr("kiln.duration_ms"), Some(Attr::Int(_))));
        assert_eq!(exec.links, vec![pull.span_id.clone()]);
    }
}

#[test]
fn root_sessions_are_traced_over_grpc() {
    if !kiln_testkit::require_root() {
        return;
    }
    traced(OtlpProtocol::Grpc, "grpc");
}

#[test]
fn root_sessions_are_traced_over_http_protobuf() {
    if !kiln_testkit::require_root() {
        return;
    }
    traced(OtlpProtocol::HttpProtobuf, "http/protobuf");
}
