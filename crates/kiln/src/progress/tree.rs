//! Operations laid out as a tree: each under the operation it builds on
//! (its first input), independent branches side by side as siblings.
//!
//! A chain of steps with no branching stays at one indentation, so a long
//! linear pipeline does not march off to the right:
//!
//! ```text
//! pull busybox
//! exec apk add git
//! ├─ exec make test
//! │  exec make install
//! └─ exec npm ci
//! ```

use std::collections::HashMap;

use kiln_graph::Key;

use super::ops::{Op, Ops};

/// One line of a tree: the drawing before the operation, and the operation.
pub struct Row<'a> {
    /// Tree drawing (`│  ├─ `).
    pub prefix: String,
    /// The operation.
    pub op: &'a Op,
}

/// The operations for which `show` holds, as a tree. An operation whose
/// parent is not shown hangs from its nearest shown ancestor.
pub fn rows<'a>(ops: &'a Ops, show: impl Fn(&Op) -> bool) -> Vec<Row<'a>> {
    let mut children: HashMap<Key, Vec<&Op>> = HashMap::new();
    let mut roots = Vec::new();
    for op in ops.iter().filter(|op| show(op)) {
        let mut parent = ops.parent(op);
        while let Some(p) = parent.filter(|p| !show(p)) {
            parent = ops.parent(p);
        }
        match parent {
            Some(p) => children.entry(p.node).or_default().push(op),
            None => roots.push(op),
        }
    }
    let mut out = Vec::new();
    // (operation, prefix of its own line, prefix of the lines below it)
    let mut stack: Vec<(&Op, String, String)> = Vec::new();
    let branch = roots.len() > 1;
    push_children(&mut stack, &roots, "", branch);
    while let Some((op, first, rest)) = stack.pop() {
        out.push(Row { prefix: first, op });
        let kids = children.get(&op.node).map(Vec::as_slice).unwrap_or_default();
        push_children(&mut stack, kids, &rest, kids.len() > 1);
    }
    out
}

/// Pushes `kids` so that they pop in order: as branches (`├─`, `└─`) or,
/// for a single child, continuing the parent's column.
fn push_children<'a>(stack: &mut Vec<(&'a Op, String, String)>, kids: &[&'a Op], rest: &str, branch: bool) {
    for (i, kid) in kids.iter().enumerate().rev() {
        let (first, below) = match (branch, i + 1 == kids.len()) {
            (false, _) => (rest.to_string(), rest.to_string()),
            (true, true) => (format!("{rest}└─ "), format!("{rest}   ")),
            (true, false) => (format!("{rest}├─ "), format!("{rest}│  ")),
        };
        stack.push((kid, first, below));
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use kiln_solver::{Event, EventKind};

    use super::*;

    fn cached(ops: &mut Ops, node: u8, inputs: &[u8], description: &str) {
        ops.apply(
            &Event {
                node: Key([node; 32]),
                description: description.into(),
                kind: EventKind::Cached {
                    duration: Duration::ZERO,
                },
                inputs: inputs.iter().map(|i| Key([*i; 32])).collect(),
                image: None,
                exec: None,
            },
            Instant::now(),
        );
    }

    fn drawn(ops: &Ops, show: impl Fn(&Op) -> bool) -> String {
        rows(ops, show)
            .iter()
            .map(|r| format!("{}{}\n", r.prefix, r.op.description))
            .collect()
    }

    #[test]
    fn chains_stay_in_one_column_and_branches_indent() {
        let mut ops = Ops::default();
        cached(&mut ops, 1, &[], "pull busybox");
        cached(&mut ops, 2, &[1], "exec apk add git");
        cached(&mut ops, 3, &[2], "exec make test");
        cached(&mut ops, 4, &[3], "exec make install");
        cached(&mut ops, 5, &[2], "exec npm ci");
        cached(&mut ops, 6, &[5, 9], "exec npm test");
        cached(&mut ops, 7, &[], "upload .");
        assert_eq!(
            drawn(&ops, |_| true),
            "\
├─ pull busybox
│  exec apk add git
│  ├─ exec make test
│  │  exec make install
│  └─ exec npm ci
│     exec npm test
└─ upload .
"
        );
        // Hidden operations are skipped; their children move up.
        assert_eq!(
            drawn(&ops, |op| op.node != Key([2; 32]) && op.node != Key([7; 32])),
            "\
pull busybox
├─ exec make test
│  exec make install
└─ exec npm ci
   exec npm test
"
        );
    }
}
