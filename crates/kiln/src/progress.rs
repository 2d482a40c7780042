//! Progress output on stderr: one line per event (`plain`), or nothing.

use std::io::Write;
use std::time::Duration;

use kiln_solver::{Event, EventKind, Stats};
use tokio::sync::broadcast;

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Progress {
    /// One line per event: stable and greppable (the default).
    Plain,
    /// Nothing but errors.
    Quiet,
}

fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

/// The line printed for an event.
pub fn line(ev: &Event) -> String {
    let id = ev.node.short();
    match &ev.kind {
        EventKind::Started => format!("[{id}] RUN    {}", ev.description),
        EventKind::Cached => format!("[{id}] CACHED {}", ev.description),
        EventKind::Done { duration } => format!("[{id}] DONE   {} ({})", ev.description, secs(*duration)),
        EventKind::Failed { message } => {
            let first = message.lines().next().unwrap_or_default();
            format!("[{id}] FAILED {}: {first}", ev.description)
        }
    }
}

/// Prints events until the channel closes.
pub fn spawn(mode: Progress, mut events: broadcast::Receiver<Event>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            match events.recv().await {
                Ok(ev) if mode == Progress::Plain => {
                    let _ = writeln!(std::io::stderr(), "{}", line(&ev));
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    let _ = writeln!(std::io::stderr(), "[kiln] ({n} progress events not shown)");
                }
                Err(broadcast::error::RecvError::Closed) => break,
            }
        }
    })
}

/// Full reports of the operations that fail, drained at the end of a run.
pub struct Failures(broadcast::Receiver<Event>);

impl Failures {
    /// Listens from now on.
    pub fn listen(events: broadcast::Receiver<Event>) -> Self {
        Self(events)
    }

    /// The reports (command, exit code, output tail) of every failure seen.
    pub fn take(mut self) -> Vec<String> {
        let mut out = Vec::new();
        loop {
            match self.0.try_recv() {
                Ok(Event {
                    description,
                    kind: EventKind::Failed { message },
                    ..
                }) => out.push(format!("FAILED {description}\n{message}")),
                Ok(_) | Err(broadcast::error::TryRecvError::Lagged(_)) => {}
                Err(_) => return out,
            }
        }
    }
}

/// The one-line summary at the end of a run.
pub fn summary(stats: &Stats, wall: Duration) -> String {
    format!(
        "kiln: {} ran, {} cached, {} failed in {}; the cache saved {}",
        stats.ran,
        stats.cached,
        stats.failed,
        secs(wall),
        secs(Duration::from_millis(stats.saved_ms))
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_graph::Key;

    #[test]
    fn plain_lines_are_stable() {
        let ev = |kind| Event {
            node: Key([0xab; 32]),
            description: "exec make test".into(),
            kind,
        };
        assert_eq!(line(&ev(EventKind::Started)), "[abababababab] RUN    exec make test");
        assert_eq!(line(&ev(EventKind::Cached)), "[abababababab] CACHED exec make test");
        assert_eq!(
            line(&ev(EventKind::Done {
                duration: Duration::from_millis(1250)
            })),
            "[abababababab] DONE   exec make test (1.2s)"
        );
        assert_eq!(
            line(&ev(EventKind::Failed {
                message: "exit code 2\nmore".into()
            })),
            "[abababababab] FAILED exec make test: exit code 2"
        );
    }
}
