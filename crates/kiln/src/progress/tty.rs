//! Frames of the terminal display, drawn from [`Ops`] (pure: the terminal
//! side is in [`super::terminal`]).
//!
//! ```text
//! ⠹ kiln 4.2s  2 running · 1 done · 1 cached · 0 failed
//! ✔ pull busybox                                     CACHED
//! ✔ exec apk add git                                   1.0s
//! ├─ ⠹ exec make test                                  3.0s
//! └─ ⠹ exec npm ci                                     2.9s
//! ╭─ exec make test ──────────╮╭─ exec npm ci ──────────╮
//! │ compiling foo             ││ added 200 packages     │
//! ╰───────────────────────────╯╰────────────────────────╯
//! ```
//!
//! Running operations show a spinner and their time so far, finished ones
//! their duration, `CACHED` or `FAILED`; the last lines of output of running
//! execs sit in panes side by side (stacked when the terminal is narrow).
//! When the tree does not fit, finished branches that lead to nothing
//! running are left out, then the oldest lines.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use kiln_graph::Key;

use super::ops::{Op, Ops, State};
use super::text::{self, fit, truncate};
use super::tree;

const SPINNER: [&str; 10] = ["⠋", "⠙", "⠹", "⠸", "⠼", "⠴", "⠦", "⠧", "⠇", "⠏"];
/// Columns of the status at the right of an operation's line.
const STATUS_COLS: usize = 8;
/// Panes are at least this wide; below two of them they stack.
const PANE_MIN_WIDTH: usize = 40;
const PANE_MAX_COLUMNS: usize = 3;
/// Output lines per pane when there is room.
const PANE_LINES: usize = 4;

/// How a piece of text is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// As is.
    Plain,
    /// Faint (tree drawing, borders, finished work).
    Dim,
    /// Bold.
    Bold,
    /// Success.
    Green,
    /// Cache hits.
    Cyan,
    /// Failures.
    Red,
    /// Work in progress.
    Yellow,
}

/// Text in one style.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    /// The text (no newlines).
    pub text: String,
    /// Its style.
    pub style: Style,
}

/// One line of a frame, never wider than the frame.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Line(pub Vec<Span>);

impl Line {
    fn push(&mut self, text: impl Into<String>, style: Style) {
        self.0.push(Span {
            text: text.into(),
            style,
        });
    }

    /// The line without styles.
    pub fn text(&self) -> String {
        self.0.iter().map(|s| s.text.as_str()).collect()
    }
}

/// The size of the area to draw in.
#[derive(Debug, Clone, Copy)]
pub struct Screen {
    /// Columns.
    pub width: usize,
    /// Lines.
    pub height: usize,
}

/// The live frame at `now`, for a run that started at `started`.
pub fn live(ops: &Ops, started: Instant, now: Instant, screen: Screen) -> Vec<Line> {
    let width = screen.width.max(1);
    let spin = SPINNER[(now.saturating_duration_since(started).as_millis() / 100) as usize % SPINNER.len()];
    let mut frame = vec![header(ops, spin, now.saturating_duration_since(started), width)];
    let avail = screen.height.saturating_sub(1);

    let with_output: Vec<&Op> = ops
        .iter()
        .filter(|op| matches!(op.state, State::Running { .. }) && !op.output.is_empty())
        .collect();
    let cols = pane_columns(with_output.len(), width);
    let pane_rows = with_output.len().div_ceil(cols.max(1));
    let panes_full = pane_rows * (PANE_LINES + 2);

    let mut rows = tree::rows(ops, |_| true);
    if rows.len() + panes_full > avail {
        let active = active(ops);
        rows = tree::rows(ops, |op| active.contains(&op.node));
    }
    let tree_min = rows.len().min((avail / 2).max(1));
    let panes_height = panes_full.min(avail.saturating_sub(tree_min));
    let tree_height = avail - panes_height;
    let hidden = rows.len().saturating_sub(tree_height);
    if hidden > 0 {
        let mut more = Line::default();
        more.push(truncate(&format!("… {} more above", hidden + 1), width), Style::Dim);
        frame.push(more);
    }
    let skip = if hidden > 0 { hidden + 1 } else { 0 };
    for row in rows.iter().skip(skip) {
        frame.push(op_line(&row.prefix, row.op, Some((spin, now)), width));
    }
    frame.extend(panes(&with_output, width, panes_height));
    frame
}

/// The whole tree once everything ended (printed to stay on the screen).
pub fn finished(ops: &Ops, width: usize) -> Vec<Line> {
    let width = width.max(1);
    tree::rows(ops, |_| true)
        .iter()
        .map(|row| op_line(&row.prefix, row.op, None, width))
        .collect()
}

/// Operations that are running or failed, and what they build on.
fn active(ops: &Ops) -> HashSet<Key> {
    let mut keep = HashSet::new();
    for op in ops.iter() {
        if matches!(op.state, State::Running { .. } | State::Failed { .. }) {
            let mut at = Some(op);
            while let Some(op) = at.filter(|op| keep.insert(op.node)) {
                at = ops.parent(op);
            }
        }
    }
    keep
}

fn header(ops: &Ops, spin: &str, elapsed: Duration, width: usize) -> Line {
    let (running, done, cached, failed) = ops.counts();
    let mut counts = format!("{running} running · {done} done · {cached} cached · {failed} failed");
    if ops.missed > 0 {
        counts.push_str(&format!(" · {} events missed", ops.missed));
    }
    let parts = [
        (format!("{spin} "), Style::Yellow),
        ("kiln ".to_string(), Style::Bold),
        (format!("{}  ", text::duration(elapsed)), Style::Bold),
        (counts, Style::Dim),
    ];
    let mut line = Line::default();
    let mut left = width;
    for (text, style) in parts {
        let t = truncate(&text, left);
        left -= text::width(&t);
        line.push(t, style);
    }
    line
}

/// One operation's line: tree drawing, icon, description, status at the
/// right. `live` holds the spinner frame and the time while running;
/// `None` draws it as ended.
fn op_line(prefix: &str, op: &Op, live: Option<(&str, Instant)>, width: usize) -> Line {
    let (icon, icon_style, status, status_style) = match (&op.state, live) {
        (State::Running { since }, Some((spin, now))) => (
            spin,
            Style::Yellow,
            text::duration(now.saturating_duration_since(*since)),
            Style::Yellow,
        ),
        (State::Running { .. }, None) => ("-", Style::Dim, "stopped".to_string(), Style::Dim),
        (State::Done { duration }, _) => ("✔", Style::Green, text::duration(*duration), Style::Dim),
        (State::Cached { .. }, _) => ("✔", Style::Dim, "CACHED".to_string(), Style::Cyan),
        (State::Failed { .. }, _) => ("✘", Style::Red, "FAILED".to_string(), Style::Red),
    };
    let mut line = Line::default();
    if width < STATUS_COLS + 6 {
        line.push(truncate(&format!("{icon} {}", op.description), width), icon_style);
        return line;
    }
    // The tree drawing goes first when space runs out.
    let prefix = if text::width(prefix) + 2 + STATUS_COLS + 12 > width {
        ""
    } else {
        prefix
    };
    let desc_cols = width - text::width(prefix) - 2 - STATUS_COLS;
    line.push(prefix, Style::Dim);
    line.push(icon, icon_style);
    line.push(" ", Style::Plain);
    line.push(fit(&op.description, desc_cols), Style::Plain);
    line.push(format!("{status:>STATUS_COLS$}"), status_style);
    line
}

/// How many panes fit side by side.
fn pane_columns(panes: usize, width: usize) -> usize {
    panes.min((width / PANE_MIN_WIDTH).clamp(1, PANE_MAX_COLUMNS))
}

/// Panes with the last output lines of `ops`, in at most `height` lines.
fn panes(ops: &[&Op], width: usize, height: usize) -> Vec<Line> {
    let cols = pane_columns(ops.len(), width);
    if cols == 0 || height < 3 {
        return Vec::new();
    }
    let mut per_pane = PANE_LINES;
    let rows_needed = ops.len().div_ceil(cols);
    while rows_needed * (per_pane + 2) > height && per_pane > 1 {
        per_pane -= 1;
    }
    let rows = rows_needed.min(height / (per_pane + 2));
    let pane_width = width / cols;
    let mut out = Vec::new();
    for row in ops.chunks(cols).take(rows) {
        let tails: Vec<Vec<String>> = row.iter().map(|op| op.output.last(per_pane)).collect();
        for i in 0..per_pane + 2 {
            let mut line = Line::default();
            for (col, op) in row.iter().enumerate() {
                let w = if col + 1 == cols {
                    width - pane_width * (cols - 1)
                } else {
                    pane_width
                };
                pane_segment(&mut line, op, &tails[col], i, per_pane, w);
            }
            out.push(line);
        }
    }
    out
}

/// Line `i` of a pane `w` columns wide.
fn pane_segment(line: &mut Line, op: &Op, tail: &[String], i: usize, per_pane: usize, w: usize) {
    if w < 6 {
        line.push(" ".repeat(w), Style::Plain);
        return;
    }
    let inner = w - 4;
    if i == 0 {
        let title = truncate(&op.description, w - 6);
        let rule = "─".repeat(w - 5 - text::width(&title));
        line.push("╭─ ", Style::Dim);
        line.push(title, Style::Plain);
        line.push(format!(" {rule}╮"), Style::Dim);
    } else if i == per_pane + 1 {
        line.push(format!("╰{}╯", "─".repeat(w - 2)), Style::Dim);
    } else {
        let text = tail.get(i - 1).map(String::as_str).unwrap_or_default();
        line.push("│ ", Style::Dim);
        line.push(fit(text, inner), Style::Plain);
        line.push(" │", Style::Dim);
    }
}

#[cfg(test)]
mod tests {
    use kiln_solver::{Event, EventKind, Stream};

    use super::*;

    /// A scripted run: events applied at given offsets from its start.
    struct Script {
        ops: Ops,
        start: Instant,
    }

    impl Script {
        fn new() -> Self {
            Self {
                ops: Ops::default(),
                start: Instant::now(),
            }
        }

        fn at(&mut self, ms: u64, node: u8, inputs: &[u8], description: &str, kind: EventKind) -> &mut Self {
            let ev = Event {
                node: Key([node; 32]),
                description: description.into(),
                kind,
                inputs: inputs.iter().map(|i| Key([*i; 32])).collect(),
                image: None,
                exec: None,
            };
            self.ops.apply(&ev, self.start + Duration::from_millis(ms));
            self
        }

        fn output(&mut self, node: u8, text: &str) -> &mut Self {
            let kind = EventKind::Output {
                stream: Stream::Stdout,
                bytes: text.as_bytes().into(),
            };
            self.at(0, node, &[], "", kind)
        }

        fn frame(&self, ms: u64, width: usize, height: usize) -> String {
            let now = self.start + Duration::from_millis(ms);
            let lines = live(&self.ops, self.start, now, Screen { width, height });
            for l in &lines {
                assert!(text::width(&l.text()) <= width, "too wide: {:?}", l.text());
            }
            lines.iter().map(|l| format!("{}\n", l.text().trim_end())).collect()
        }
    }

    fn secs(s: u64) -> EventKind {
        EventKind::Done {
            duration: Duration::from_secs(s),
        }
    }

    /// Two branches running in parallel after a cached pull and a finished step.
    fn parallel() -> Script {
        let mut s = Script::new();
        s.at(
            0,
            1,
            &[],
            "pull busybox",
            EventKind::Cached {
                duration: Duration::ZERO,
            },
        )
        .at(0, 2, &[1], "exec apk add git", EventKind::Started)
        .at(1100, 2, &[1], "exec apk add git", secs(1))
        .at(1200, 3, &[2], "exec make test", EventKind::Started)
        .at(1300, 4, &[2], "exec npm ci", EventKind::Started)
        .output(3, "compiling foo\ncompiling bar\n")
        .output(4, "added 200 packages\npartial");
        s
    }

    #[test]
    fn wide_terminals_show_the_tree_and_output_panes_side_by_side() {
        assert_eq!(
            parallel().frame(4200, 80, 24),
            "\
⠹ kiln 4.2s  2 running · 1 done · 1 cached · 0 failed
✔ pull busybox                                                            CACHED
✔ exec apk add git                                                          1.0s
├─ ⠹ exec make test                                                         3.0s
└─ ⠹ exec npm ci                                                            2.9s
╭─ exec make test ─────────────────────╮╭─ exec npm ci ────────────────────────╮
│ compiling foo                        ││ added 200 packages                   │
│ compiling bar                        ││ partial                              │
│                                      ││                                      │
│                                      ││                                      │
╰──────────────────────────────────────╯╰──────────────────────────────────────╯
"
        );
    }

    #[test]
    fn narrow_terminals_stack_panes_and_drop_the_tree_drawing() {
        assert_eq!(
            parallel().frame(4200, 30, 24),
            "\
⠹ kiln 4.2s  2 running · 1 do…
✔ pull busybox          CACHED
✔ exec apk add git        1.0s
├─ ⠹ exec make test       3.0s
└─ ⠹ exec npm ci          2.9s
╭─ exec make test ───────────╮
│ compiling foo              │
│ compiling bar              │
│                            │
│                            │
╰────────────────────────────╯
╭─ exec npm ci ──────────────╮
│ added 200 packages         │
│ partial                    │
│                            │
│                            │
╰────────────────────────────╯
"
        );
        let tiny = parallel().frame(4200, 20, 24);
        assert_eq!(tiny.lines().nth(3), Some("⠹ exec make…    3.0s"), "{tiny}");
    }

    #[test]
    fn short_terminals_keep_what_is_running_and_shrink_panes() {
        let mut s = parallel();
        for n in 10..20 {
            s.at(1300, n, &[1], &format!("exec step {n}"), secs(2));
        }
        assert_eq!(
            s.frame(4200, 60, 10),
            "\
⠹ kiln 4.2s  2 running · 11 done · 1 cached · 0 failed
✔ pull busybox                                        CACHED
✔ exec apk add git                                      1.0s
├─ ⠹ exec make test                                     3.0s
└─ ⠹ exec npm ci                                        2.9s
╭─ exec make test ─────────────────────────────────────────╮
│ compiling bar                                            │
╰──────────────────────────────────────────────────────────╯
"
        );
        // With room, the finished steps are back.
        assert!(s.frame(4200, 60, 40).contains("exec step 19"));
    }

    #[test]
    fn failures_and_the_final_tree() {
        let mut s = parallel();
        s.at(
            5000,
            3,
            &[2],
            "exec make test",
            EventKind::Failed {
                message: "exit code: 2".into(),
            },
        )
        .at(6000, 4, &[2], "exec npm ci", secs(5));
        let lines: String = finished(&s.ops, 50)
            .iter()
            .map(|l| format!("{}\n", l.text().trim_end()))
            .collect();
        assert_eq!(
            lines,
            "\
✔ pull busybox                              CACHED
✔ exec apk add git                            1.0s
├─ ✘ exec make test                         FAILED
└─ ✔ exec npm ci                              5.0s
"
        );
        let frame = s.frame(6100, 50, 10);
        assert_eq!(
            frame.lines().next(),
            Some("⠙ kiln 6.1s  0 running · 2 done · 1 cached · 1 fa…")
        );
    }
}
