//! What kiln shows on stderr while it works, and when it ends.
//!
//! One task follows the solver's events ([`Display::start`]) and keeps the
//! state of every operation ([`ops::Ops`]); it prints them as plain lines
//! ([`plain`]) or draws a live tree on a terminal ([`tty`], [`terminal`]),
//! and records each exec in the run's log index ([`crate::logs`]). When the
//! run ends ([`Display::finish`]) it prints the whole tree (terminal), a full
//! report of every failure with the chain that led to it ([`report`]), and
//! the summary.
//!
//! Everything printed about operations comes from events, whose text and
//! output the solver scrubs of secret values before emitting them
//! (`kiln_solver::events`): this module prints them as they are.

mod ops;
mod plain;
mod report;
mod terminal;
mod text;
mod tree;
mod tty;

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln_solver::{Event, Stats};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;

use self::ops::{Ops, OutputLine};
use self::terminal::Terminal;
use self::tty::{Line, Screen, Span, Style};
use crate::logs::RunLog;

/// How progress is shown (`--progress`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Progress {
    /// `tty` when stderr is a terminal, else `plain`.
    Auto,
    /// A live tree of the operations, with the output of running execs.
    Tty,
    /// One line per event: stable and greppable.
    Plain,
    /// Nothing but failures.
    Quiet,
}

/// The display chosen, once `auto` is resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Live tree on the terminal.
    Tty,
    /// Plain lines.
    Plain,
    /// Failures only.
    Quiet,
}

impl Progress {
    /// The mode: `auto` is `tty` when kiln `owns_terminal` (it started the
    /// pipeline program, or there is none; not when an SDK started kiln and
    /// prints on the same terminal) and stderr is a terminal that can move
    /// its cursor (`TERM` is not `dumb`); else `plain`.
    pub fn mode(self, owns_terminal: bool) -> Mode {
        match self {
            Progress::Tty => Mode::Tty,
            Progress::Plain => Mode::Plain,
            Progress::Quiet => Mode::Quiet,
            Progress::Auto => {
                let dumb = std::env::var("TERM").is_ok_and(|t| t == "dumb");
                if owns_terminal && std::io::stderr().is_terminal() && !dumb {
                    Mode::Tty
                } else {
                    Mode::Plain
                }
            }
        }
    }
}

/// Whether to use colours: not when `NO_COLOR` is set to anything but
/// the empty string (<https://no-color.org>).
pub fn color_allowed() -> bool {
    std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Display settings.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// How to show progress.
    pub mode: Mode,
    /// Print every line of exec output as it arrives (`--debug`).
    pub debug: bool,
    /// Use colours (terminal mode).
    pub color: bool,
}

/// The running display.
pub struct Display {
    options: Options,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Ops>,
    above: mpsc::UnboundedSender<String>,
}

impl Display {
    /// Starts following `events`; execs are recorded in `log`.
    pub fn start(options: Options, events: broadcast::Receiver<Arc<Event>>, log: Option<RunLog>) -> Self {
        let (stop, stopped) = oneshot::channel();
        let (above, above_rx) = mpsc::unbounded_channel();
        let follower = Follower {
            options,
            ops: Ops::default(),
            log,
            terminal: (options.mode == Mode::Tty).then(|| Terminal::stderr(options.color)),
            screen: if options.mode == Mode::Tty {
                Terminal::screen()
            } else {
                Screen { width: 80, height: 24 }
            },
            started: Instant::now(),
        };
        let task = tokio::spawn(follower.run(events, above_rx, stopped));
        Self {
            options,
            stop,
            task,
            above,
        }
    }

    /// The display mode.
    pub fn mode(&self) -> Mode {
        self.options.mode
    }

    /// Prints the lines `reader` yields (a pipeline program's output) above
    /// the live display, until it ends.
    pub fn forward(&self, reader: impl AsyncRead + Unpin + Send + 'static) -> JoinHandle<()> {
        let above = self.above.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(reader).split(b'\n');
            while let Ok(Some(line)) = lines.next_segment().await {
                if above.send(text::clean(&String::from_utf8_lossy(&line))).is_err() {
                    break;
                }
            }
        })
    }

    /// Stops following events (after taking those already sent) and prints
    /// the end: the whole tree (terminal mode), the report of every failure
    /// (every mode), and the summary line when given (not in quiet mode).
    pub async fn finish(self, summary: Option<(Stats, Duration)>) {
        let _ = self.stop.send(());
        let ops = self.task.await.unwrap_or_default();
        let mut err = std::io::stderr().lock();
        if self.options.mode == Mode::Tty {
            let width = Terminal::screen().width;
            let _ = Terminal::stderr(self.options.color).above(&tty::finished(&ops, width));
        }
        for failure in report::failures(&ops) {
            let _ = writeln!(err, "\n{failure}");
        }
        if let (Some((stats, wall)), false) = (summary, self.options.mode == Mode::Quiet) {
            let _ = writeln!(err, "{}", report::summary(&stats, wall));
        }
    }
}

/// The state of the display task.
struct Follower {
    options: Options,
    ops: Ops,
    log: Option<RunLog>,
    terminal: Option<Terminal>,
    /// The terminal's size, read again when it changes (SIGWINCH).
    screen: Screen,
    started: Instant,
}

impl Follower {
    async fn run(
        mut self,
        mut events: broadcast::Receiver<Arc<Event>>,
        mut above: mpsc::UnboundedReceiver<String>,
        mut stop: oneshot::Receiver<()>,
    ) -> Ops {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let mut resized = signal(SignalKind::window_change())
            .ok()
            .filter(|_| self.terminal.is_some());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut events_open = true;
        loop {
            tokio::select! {
                biased;
                _ = &mut stop => break,
                ev = events.recv(), if events_open => match ev {
                    Ok(ev) => self.event(&ev),
                    Err(broadcast::error::RecvError::Lagged(n)) => self.lagged(n),
                    Err(broadcast::error::RecvError::Closed) => events_open = false,
                },
                Some(line) = above.recv() => self.above(vec![plain_line(line)]),
                _ = tick.tick(), if self.terminal.is_some() => self.draw(),
                Some(()) = recv(&mut resized) => self.screen = Terminal::screen(),
            }
        }
        loop {
            match events.try_recv() {
                Ok(ev) => self.event(&ev),
                Err(broadcast::error::TryRecvError::Lagged(n)) => self.lagged(n),
                Err(_) => break,
            }
        }
        while let Ok(line) = above.try_recv() {
            self.above(vec![plain_line(line)]);
        }
        if let Some(terminal) = &mut self.terminal {
            let _ = terminal.clear();
        }
        self.ops
    }

    fn event(&mut self, ev: &Event) {
        let lines = self.ops.apply(ev, Instant::now());
        if let Some(log) = &mut self.log {
            log.record(ev);
        }
        if self.options.mode == Mode::Plain
            && let Some(line) = plain::line(ev)
        {
            let _ = writeln!(std::io::stderr().lock(), "{line}");
        }
        if self.options.debug && !lines.is_empty() {
            let lines = lines
                .iter()
                .map(|OutputLine { node, stream, text }| plain::output_line(node, *stream, text));
            self.above(lines.map(plain_line).collect());
        }
    }

    fn lagged(&mut self, n: u64) {
        self.ops.missed += n;
        if self.options.mode == Mode::Plain {
            let _ = writeln!(std::io::stderr().lock(), "[kiln] ({n} progress events not shown)");
        }
    }

    /// Prints lines that stay: above the live frame, or just on stderr.
    fn above(&mut self, lines: Vec<Line>) {
        match &mut self.terminal {
            Some(terminal) => {
                let _ = terminal.above(&lines);
            }
            None => {
                let mut err = std::io::stderr().lock();
                for line in lines {
                    let _ = writeln!(err, "{}", line.text());
                }
            }
        }
    }

    fn draw(&mut self) {
        if let Some(terminal) = &mut self.terminal {
            let frame = tty::live(&self.ops, self.started, Instant::now(), self.screen);
            let _ = terminal.draw(frame);
        }
    }
}

/// The next signal of `signal`, if there is one to wait for.
async fn recv(signal: &mut Option<Signal>) -> Option<()> {
    match signal {
        Some(signal) => signal.recv().await,
        None => std::future::pending().await,
    }
}

fn plain_line(text: String) -> Line {
    Line(vec![Span {
        text,
        style: Style::Plain,
    }])
}
