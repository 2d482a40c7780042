//! Everything that follows a session's events: the progress display (with
//! the run's log index) and, when the `OTEL_*` variables ask for it, the
//! OpenTelemetry trace.

use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use kiln_solver::{Events, Stats};
use kiln_telemetry::{Following, ParentSource, Telemetry, TelemetryConfig};

use crate::logs::RunLog;
use crate::progress::{Display, Options};

/// Who kiln serves, which decides where the session's trace hangs from.
pub enum Caller {
    /// A program kiln runs (`kiln run`): the session span's parent is the
    /// span in kiln's own `TRACEPARENT`, if any, and the program gets the
    /// session span as its `TRACEPARENT`.
    Program,
    /// An SDK that started kiln (`kiln session`): the parent is the span in
    /// the first `traceparent` header the SDK sends (else `TRACEPARENT`).
    Sdk(Arc<OnceLock<String>>),
    /// Nobody else (`kiln query`): the parent is `TRACEPARENT`, if set.
    Nobody,
}

/// The followers of one session's events.
pub struct Watchers {
    display: Display,
    trace: Option<(Telemetry, Following)>,
    traceparent: Option<String>,
}

impl Watchers {
    /// Starts following a session's `events`: progress as `options` say, a log
    /// index for `command` (kiln's command line), and a trace whose session
    /// span is called `name`, under the `caller`'s span. Trouble with the
    /// log index or the trace exporter is a warning, not an error: neither
    /// may stop a run.
    pub fn start(
        events: &Events,
        state_dir: Option<&Path>,
        options: Options,
        command: Vec<String>,
        name: &str,
        caller: Caller,
    ) -> Self {
        // An engine elsewhere keeps the output: no local log index.
        let log = state_dir.and_then(|dir| match RunLog::create(dir, command) {
            Ok(log) => Some(log),
            Err(e) => {
                eprintln!("kiln: warning: this run's log index is not kept: {e:#}");
                None
            }
        });
        let display = Display::start(options, events.subscribe(), log);
        let (trace, traceparent) = match start_trace(events, name, caller) {
            Ok(Some((telemetry, traceparent, following))) => (
                Some((telemetry, following)),
                Some(traceparent).filter(|t| !t.is_empty()),
            ),
            Ok(None) => (None, None),
            Err(e) => {
                eprintln!("kiln: warning: no trace is exported: {e}");
                (None, None)
            }
        };
        Self {
            display,
            trace,
            traceparent,
        }
    }

    /// The progress display.
    pub fn display(&self) -> &Display {
        &self.display
    }

    /// The `traceparent` of the session span, when tracing: a pipeline
    /// program gets it as `TRACEPARENT`, so that its SDK's spans join the
    /// session's trace.
    pub fn traceparent(&self) -> Option<&str> {
        self.traceparent.as_deref()
    }

    /// Takes the events already sent, prints the end of the display (see
    /// [`Display::finish`]) and sends the trace.
    pub async fn finish(self, summary: Option<(Stats, Duration)>) {
        self.display.finish(summary).await;
        if let Some((telemetry, following)) = self.trace {
            following.finish().await;
            if let Err(e) = telemetry.shutdown().await {
                eprintln!("kiln: warning: {e}");
            }
        }
    }
}

type Trace = (Telemetry, String, Following);

fn start_trace(events: &Events, name: &str, caller: Caller) -> Result<Option<Trace>, kiln_telemetry::TelemetryError> {
    let Some(config) = TelemetryConfig::from_env()? else {
        return Ok(None);
    };
    let telemetry = Telemetry::start(&config)?;
    let from_env = || std::env::var("TRACEPARENT").ok().filter(|v| !v.is_empty());
    let (parent, eager): (ParentSource, bool) = match caller {
        Caller::Program => (Box::new(from_env), true),
        Caller::Sdk(header) => (Box::new(move || header.get().cloned().or_else(from_env)), false),
        Caller::Nobody => (Box::new(from_env), false),
    };
    let mut trace = telemetry.session(name, parent);
    // The session span is made when first needed: at once for a program
    // that is to get its traceparent, else once the SDK had its say.
    let traceparent = if eager { trace.traceparent() } else { String::new() };
    let following = trace.follow(events.subscribe());
    Ok(Some((telemetry, traceparent, following)))
}
