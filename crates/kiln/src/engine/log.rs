//! The engine's log lines that its clients should see too (warnings, what
//! garbage collection evicted): a tracing layer that passes them to every
//! connected client, which prints them on its stderr.

use std::fmt::Write as _;
use std::sync::OnceLock;

use tokio::sync::broadcast;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::Context;

/// Where forwarded lines go (set when the process serves an engine).
static LINES: OnceLock<broadcast::Sender<String>> = OnceLock::new();

/// Starts forwarding: the lines from now on, for a client to pass on.
pub fn subscribe() -> broadcast::Receiver<String> {
    LINES.get_or_init(|| broadcast::channel(256).0).subscribe()
}

/// The layer that forwards; filter it as the process's own log is.
pub struct Forward;

impl<S: Subscriber> Layer<S> for Forward {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let Some(lines) = LINES.get() else { return };
        let mut line = Line(String::new());
        event.record(&mut line);
        let meta = event.metadata();
        // No receiver is fine.
        let _ = lines.send(format!("{} {}: {}", meta.level(), meta.target(), line.0.trim_start()));
    }
}

/// An event's message, then its other fields as `key=value`.
struct Line(String);

impl Visit for Line {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "message" => {
                let rest = std::mem::take(&mut self.0);
                let _ = write!(self.0, "{value:?}{rest}");
            }
            name => {
                let _ = write!(self.0, " {name}={value:?}");
            }
        }
    }
}
