//! Plain progress: one line per event, stable and greppable (CI logs).
//!
//! ```text
//! [1f3a9c0b2e4d] CACHED pull busybox
//! [7b2c4e6f8a0d] RUN    exec make test
//! [7b2c4e6f8a0d] stdout compiling foo        (with --debug)
//! [7b2c4e6f8a0d] DONE   exec make test (3.1s)
//! [9d8e7f6a5b4c] FAILED exec make lint: process "make lint" did not complete successfully: exit code: 2
//! ```

use std::time::Duration;

use kiln_graph::Key;
use kiln_solver::{Event, EventKind, Stream};

/// Seconds with one decimal, as plain lines and the summary show them.
pub fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

/// The line printed for an event (none for output: see [`output_line`]).
pub fn line(ev: &Event) -> Option<String> {
    let id = ev.node.short();
    Some(match &ev.kind {
        EventKind::Started => format!("[{id}] RUN    {}", ev.description),
        EventKind::Cached { .. } => format!("[{id}] CACHED {}", ev.description),
        EventKind::Done { duration } => format!("[{id}] DONE   {} ({})", ev.description, secs(*duration)),
        EventKind::Failed { message } => {
            let first = message.lines().next().unwrap_or_default();
            format!("[{id}] FAILED {}: {first}", ev.description)
        }
        EventKind::Notice { message } => format!("[{id}] NOTICE {}: {message}", ev.description),
        EventKind::Output { .. } => return None,
    })
}

/// A line of an exec's output, as `--debug` prints it.
pub fn output_line(node: &Key, stream: Stream, text: &str) -> String {
    let name = match stream {
        Stream::Stdout => "stdout",
        Stream::Stderr => "stderr",
    };
    format!("[{}] {name} {text}", node.short())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_lines_are_stable() {
        let ev = |kind| Event {
            node: Key([0xab; 32]),
            description: "exec make test".into(),
            kind,
            inputs: vec![],
            image: None,
            exec: None,
        };
        let line = |kind| line(&ev(kind)).unwrap();
        assert_eq!(
            line(EventKind::Notice {
                message: "waiting for 127.0.0.1:5000: no response to manifest x:1 for 2s".into()
            }),
            "[abababababab] NOTICE exec make test: waiting for 127.0.0.1:5000: no response to manifest x:1 for 2s"
        );
        assert_eq!(line(EventKind::Started), "[abababababab] RUN    exec make test");
        assert_eq!(
            line(EventKind::Cached {
                duration: Duration::from_secs(3)
            }),
            "[abababababab] CACHED exec make test"
        );
        assert_eq!(
            line(EventKind::Done {
                duration: Duration::from_millis(1250)
            }),
            "[abababababab] DONE   exec make test (1.2s)"
        );
        assert_eq!(
            line(EventKind::Failed {
                message: "exit code 2\nmore".into()
            }),
            "[abababababab] FAILED exec make test: exit code 2"
        );
        assert_eq!(
            output_line(&Key([0xab; 32]), Stream::Stderr, "warning: x"),
            "[abababababab] stderr warning: x"
        );
    }
}
