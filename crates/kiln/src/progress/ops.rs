//! The operations of a run as the solver's events describe them: state,
//! inputs and the last lines of output of each, in the order they appeared.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use kiln_graph::Key;
use kiln_solver::{Event, EventKind, Stream};

use super::text;

/// Lines of output kept per operation (a pane shows fewer).
const TAIL_LINES: usize = 20;

/// Where an operation is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Running since then.
    Running {
        /// When it started.
        since: Instant,
    },
    /// Ran and succeeded.
    Done {
        /// How long it ran.
        duration: Duration,
    },
    /// Came from the cache.
    Cached {
        /// How long it took when it ran.
        duration: Duration,
    },
    /// Failed.
    Failed {
        /// The error and the tail of the command's output.
        message: String,
    },
}

/// One operation.
#[derive(Debug, Clone)]
pub struct Op {
    /// Its definition digest.
    pub node: Key,
    /// What it does (`exec make test`).
    pub description: String,
    /// Its inputs' definition digests.
    pub inputs: Vec<Key>,
    /// Where it is.
    pub state: State,
    /// The last lines of its output.
    pub output: Tail,
}

/// The last lines a process wrote, both streams as they arrived.
#[derive(Debug, Clone, Default)]
pub struct Tail {
    lines: VecDeque<String>,
    /// The unfinished last line of each stream (stdout, stderr).
    partial: [Vec<u8>; 2],
}

impl Tail {
    /// Adds a chunk of `stream`; returns the lines it completed.
    fn push(&mut self, stream: Stream, bytes: &[u8]) -> Vec<String> {
        let partial = &mut self.partial[stream as usize];
        partial.extend_from_slice(bytes);
        let Some(end) = partial.iter().rposition(|&b| b == b'\n') else {
            return Vec::new();
        };
        let rest = partial.split_off(end + 1);
        let done = std::mem::replace(partial, rest);
        let lines: Vec<String> = String::from_utf8_lossy(&done).lines().map(text::clean).collect();
        self.keep(&lines);
        lines
    }

    /// Ends both streams; returns their unfinished lines.
    fn finish(&mut self) -> Vec<(Stream, String)> {
        let mut lines = Vec::new();
        for (stream, partial) in [Stream::Stdout, Stream::Stderr].into_iter().zip(&mut self.partial) {
            if !partial.is_empty() {
                lines.push((stream, text::clean(&String::from_utf8_lossy(&std::mem::take(partial)))));
            }
        }
        let texts: Vec<String> = lines.iter().map(|(_, t)| t.clone()).collect();
        self.keep(&texts);
        lines
    }

    fn keep(&mut self, lines: &[String]) {
        for line in lines {
            if self.lines.len() == TAIL_LINES {
                self.lines.pop_front();
            }
            self.lines.push_back(line.clone());
        }
    }

    /// The last `n` lines, unfinished ones included.
    pub fn last(&self, n: usize) -> Vec<String> {
        let mut all: Vec<String> = self.lines.iter().cloned().collect();
        all.extend(
            self.partial
                .iter()
                .filter(|p| !p.is_empty())
                .map(|p| text::clean(&String::from_utf8_lossy(p))),
        );
        let start = all.len().saturating_sub(n);
        all.split_off(start)
    }

    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.lines.is_empty() && self.partial.iter().all(|p| p.is_empty())
    }
}

/// A line of output an operation completed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputLine {
    /// The operation.
    pub node: Key,
    /// Which stream.
    pub stream: Stream,
    /// The line, cleaned for a terminal.
    pub text: String,
}

/// Every operation seen so far.
#[derive(Debug, Default)]
pub struct Ops {
    order: Vec<Key>,
    ops: HashMap<Key, Op>,
    /// Events lost because this listener fell behind.
    pub missed: u64,
}

impl Ops {
    /// Applies an event received at `now`; returns the output lines it completed.
    pub fn apply(&mut self, ev: &Event, now: Instant) -> Vec<OutputLine> {
        let op = match self.ops.entry(ev.node) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => {
                self.order.push(ev.node);
                e.insert(Op {
                    node: ev.node,
                    description: ev.description.clone(),
                    inputs: ev.inputs.clone(),
                    state: State::Running { since: now },
                    output: Tail::default(),
                })
            }
        };
        let with = |lines: Vec<(Stream, String)>| {
            lines
                .into_iter()
                .map(|(stream, text)| OutputLine {
                    node: ev.node,
                    stream,
                    text,
                })
                .collect::<Vec<_>>()
        };
        match &ev.kind {
            EventKind::Started => {
                op.state = State::Running { since: now };
                Vec::new()
            }
            EventKind::Output { stream, bytes } => with(
                op.output
                    .push(*stream, bytes)
                    .into_iter()
                    .map(|l| (*stream, l))
                    .collect(),
            ),
            EventKind::Notice { message } => with(
                op.output
                    .push(Stream::Stderr, format!("kiln: {message}\n").as_bytes())
                    .into_iter()
                    .map(|l| (Stream::Stderr, l))
                    .collect(),
            ),
            EventKind::Cached { duration } => {
                op.state = State::Cached { duration: *duration };
                Vec::new()
            }
            EventKind::Done { duration } => {
                op.state = State::Done { duration: *duration };
                with(op.output.finish())
            }
            EventKind::Failed { message } => {
                op.state = State::Failed {
                    message: message.clone(),
                };
                with(op.output.finish())
            }
        }
    }

    /// All operations, in the order they first appeared.
    pub fn iter(&self) -> impl Iterator<Item = &Op> {
        self.order.iter().filter_map(|k| self.ops.get(k))
    }

    /// The operation `op` builds on: its first input that was seen.
    pub fn parent(&self, op: &Op) -> Option<&Op> {
        op.inputs.iter().find_map(|k| self.ops.get(k))
    }

    /// Every operation `node` depends on (through any input), itself excluded.
    pub fn ancestors(&self, node: &Key) -> HashSet<Key> {
        let mut seen = HashSet::new();
        let mut todo: Vec<Key> = self.ops.get(node).map(|op| op.inputs.clone()).unwrap_or_default();
        while let Some(k) = todo.pop() {
            if let Some(op) = self.ops.get(&k)
                && seen.insert(k)
            {
                todo.extend(op.inputs.iter().copied());
            }
        }
        seen
    }

    /// Counts: (running, done, cached, failed).
    pub fn counts(&self) -> (usize, usize, usize, usize) {
        let mut c = (0, 0, 0, 0);
        for op in self.ops.values() {
            match op.state {
                State::Running { .. } => c.0 += 1,
                State::Done { .. } => c.1 += 1,
                State::Cached { .. } => c.2 += 1,
                State::Failed { .. } => c.3 += 1,
            }
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(node: u8, inputs: &[u8], kind: EventKind) -> Event {
        Event {
            node: Key([node; 32]),
            description: format!("op {node}"),
            kind,
            inputs: inputs.iter().map(|i| Key([*i; 32])).collect(),
            image: None,
            exec: None,
        }
    }

    fn out(node: u8, stream: Stream, text: &str) -> Event {
        ev(
            node,
            &[],
            EventKind::Output {
                stream,
                bytes: text.as_bytes().into(),
            },
        )
    }

    fn get(ops: &Ops, node: u8) -> &Op {
        ops.iter().find(|op| op.node == Key([node; 32])).unwrap()
    }

    #[test]
    fn follows_states_and_output_lines_per_stream() {
        let now = Instant::now();
        let mut ops = Ops::default();
        ops.apply(
            &ev(
                1,
                &[],
                EventKind::Cached {
                    duration: Duration::ZERO,
                },
            ),
            now,
        );
        ops.apply(&ev(2, &[1], EventKind::Started), now);
        assert!(ops.apply(&out(2, Stream::Stdout, "one\ntw"), now).len() == 1);
        let lines = ops.apply(&out(2, Stream::Stderr, "err\n"), now);
        assert_eq!(lines[0].text, "err");
        assert_eq!(lines[0].stream, Stream::Stderr);
        assert_eq!(get(&ops, 2).output.last(5), vec!["one", "err", "tw"]);
        let rest = ops.apply(
            &ev(
                2,
                &[1],
                EventKind::Done {
                    duration: Duration::from_secs(1),
                },
            ),
            now,
        );
        assert_eq!(rest[0].text, "tw");
        assert_eq!(ops.counts(), (0, 1, 1, 0));
        let two = get(&ops, 2);
        assert_eq!(ops.parent(two).unwrap().node, Key([1; 32]));
        assert_eq!(ops.ancestors(&Key([2; 32])), HashSet::from([Key([1; 32])]));
    }
}
