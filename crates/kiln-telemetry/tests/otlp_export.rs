//! Spans of a scripted session reach a real OTLP receiver on loopback, over
//! gRPC and over HTTP/protobuf, with their names, parent/child links and
//! attributes.

use std::time::Duration;

use kiln_graph::Key;
use kiln_solver::{Event, EventKind, ExecMeta};
use kiln_store::Digest;
use kiln_telemetry::{Protocol, Telemetry, TelemetryConfig};
use kiln_testkit::{Attr, OtlpProtocol, OtlpReceiver, ReceivedSpan};

/// The span the "SDK" gives kiln as its caller.
const SDK_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const SDK_SPAN: &str = "00f067aa0ba902b7";

fn event(node: u8, inputs: &[u8], description: &str, kind: EventKind, exit_code: Option<i32>) -> Event {
    Event {
        node: Key([node; 32]),
        description: description.into(),
        kind,
        inputs: inputs.iter().map(|i| Key([*i; 32])).collect(),
        image: Some("busybox".into()),
        exec: exit_code.map(|exit_code| ExecMeta {
            exit_code,
            stdout: Digest::of(b""),
            stderr: Digest::of(b""),
            combined: None,
        }),
    }
}

async fn export_a_session(receiver: &OtlpReceiver, protocol: Protocol) -> Vec<ReceivedSpan> {
    let endpoint = match protocol {
        Protocol::Grpc => receiver.endpoint(),
        Protocol::HttpProtobuf => format!("{}/v1/traces", receiver.endpoint()),
    };
    let config = TelemetryConfig {
        protocol,
        endpoint: Some(endpoint),
        tls: false,
    };
    let telemetry = Telemetry::start(&config).expect("exporter starts");
    let parent = format!("00-{SDK_TRACE}-{SDK_SPAN}-01");
    let mut trace = telemetry.session("kiln session", Box::new(move || Some(parent.clone())));
    let done = EventKind::Done {
        duration: Duration::from_millis(1500),
    };
    for ev in [
        event(
            1,
            &[],
            "pull busybox",
            EventKind::Cached {
                duration: Duration::from_secs(2),
            },
            None,
        ),
        event(2, &[1], "exec echo hi", EventKind::Started, None),
        event(2, &[1], "exec echo hi", done, Some(0)),
        event(3, &[2], "exec sh -c 'exit 3'", EventKind::Started, None),
        event(
            3,
            &[2],
            "exec sh -c 'exit 3'",
            EventKind::Failed {
                message: "process \"sh -c exit 3\" did not complete successfully: exit code: 3\nmore".into(),
            },
            Some(3),
        ),
    ] {
        trace.record(&ev);
    }
    trace.end();
    telemetry.shutdown().await.expect("spans flushed");
    receiver.spans()
}

fn check(spans: &[ReceivedSpan]) {
    let by_name = |name: &str| {
        spans
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no span {name:?} in {spans:#?}"))
    };
    assert_eq!(spans.len(), 4, "{spans:#?}");
    let session = by_name("kiln session");
    assert_eq!(session.trace_id, SDK_TRACE, "the session joins the SDK's trace");
    assert_eq!(session.parent_span_id, SDK_SPAN, "under the SDK's span");
    assert_eq!(session.service.as_deref(), Some("kiln"));
    assert_eq!(session.attr("kiln.ops.failed"), Some(&Attr::Int(1)));

    let pull = by_name("pull busybox");
    let echo = by_name("exec echo hi");
    let fail = by_name("exec sh -c 'exit 3'");
    for op in [pull, echo, fail] {
        assert_eq!(op.trace_id, SDK_TRACE);
        assert_eq!(op.parent_span_id, session.span_id, "{} hangs from the session", op.name);
        assert_eq!(op.attr("container.image.name"), Some(&Attr::Str("busybox".into())));
    }
    assert_eq!(pull.attr("kiln.cached"), Some(&Attr::Bool(true)));
    assert_eq!(pull.attr("kiln.duration_ms"), Some(&Attr::Int(2000)));
    assert_eq!(echo.attr("kiln.cached"), Some(&Attr::Bool(false)));
    assert_eq!(echo.attr("kiln.duration_ms"), Some(&Attr::Int(1500)));
    assert_eq!(echo.attr("process.exit.code"), Some(&Attr::Int(0)));
    assert_eq!(echo.links, vec![pull.span_id.clone()], "linked to its input");
    assert!(!echo.error);
    assert_eq!(fail.attr("process.exit.code"), Some(&Attr::Int(3)));
    assert!(fail.error);
    assert_eq!(fail.links, vec![echo.span_id.clone()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_a_grpc_collector() {
    let receiver = OtlpReceiver::start(OtlpProtocol::Grpc);
    check(&export_a_session(&receiver, Protocol::Grpc).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_an_http_protobuf_collector() {
    let receiver = OtlpReceiver::start(OtlpProtocol::HttpProtobuf);
    check(&export_a_session(&receiver, Protocol::HttpProtobuf).await);
}
