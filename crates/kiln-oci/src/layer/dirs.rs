//! The directories of a layer being extracted, kept so that each entry
//! costs what its path adds to the previous entry's, not its whole depth:
//!
//! - [`Tree`]: every directory written, as a node with its parent and its
//!   own name (never a full path), for the metadata set at the end and the
//!   opaque marks;
//! - [`Chain`]: the directories from the layer root down to the current
//!   entry's parent, with descriptors open for the deepest ones and what
//!   the lower layers show there. Tar entries come in tree order, so the
//!   next entry usually shares most of the chain.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags, openat};

use super::lower::{DirMeta, LowerView};

/// Index of a directory in a [`Tree`].
pub(super) type NodeId = usize;

/// One directory.
pub(super) struct Node {
    name: Box<[u8]>,
    children: HashMap<Box<[u8]>, NodeId>,
    /// Owner, mode and mtime to set at the end; `None` leaves it as it is.
    pub meta: Option<DirMeta>,
    /// This layer made it opaque: lowers are not looked at below it.
    pub opaque: bool,
}

/// The directories of the layer, from its root ([`Tree::ROOT`]).
pub(super) struct Tree {
    nodes: Vec<Node>,
}

impl Tree {
    /// The layer root.
    pub(super) const ROOT: NodeId = 0;

    pub(super) fn new() -> Self {
        Self {
            nodes: vec![Node {
                name: Box::default(),
                children: HashMap::new(),
                meta: None,
                opaque: false,
            }],
        }
    }

    pub(super) fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id]
    }

    pub(super) fn node_mut(&mut self, id: NodeId) -> &mut Node {
        &mut self.nodes[id]
    }

    pub(super) fn name(&self, id: NodeId) -> &[u8] {
        &self.nodes[id].name
    }

    /// The directory `name` in `parent`, if there is one.
    pub(super) fn child(&self, parent: NodeId, name: &[u8]) -> Option<NodeId> {
        self.nodes[parent].children.get(name).copied()
    }

    /// The directory `name` in `parent`, added (with no metadata to set)
    /// if missing.
    pub(super) fn child_or_insert(&mut self, parent: NodeId, name: &[u8]) -> NodeId {
        match self.child(parent, name) {
            Some(id) => id,
            None => self.insert(parent, name, None),
        }
    }

    /// A new directory `name` in `parent`, replacing any there was.
    pub(super) fn insert(&mut self, parent: NodeId, name: &[u8], meta: Option<DirMeta>) -> NodeId {
        let id = self.nodes.len();
        self.nodes.push(Node {
            name: name.into(),
            children: HashMap::new(),
            meta,
            opaque: false,
        });
        self.nodes[parent].children.insert(name.into(), id);
        id
    }

    /// Forgets the directory `name` in `parent` and everything below it
    /// (it was removed).
    pub(super) fn remove(&mut self, parent: NodeId, name: &[u8]) {
        self.nodes[parent].children.remove(name);
    }

    /// The directories in `id`.
    pub(super) fn children(&self, id: NodeId) -> impl Iterator<Item = NodeId> + '_ {
        self.nodes[id].children.values().copied()
    }
}

/// Descriptors kept open at most, besides the root's: deeper chains reopen
/// what they need from the closest open ancestor.
const OPEN_LEVELS: usize = 32;

struct Level {
    node: NodeId,
    fd: Option<OwnedFd>,
    /// What the lowers show here, once needed.
    lower: Option<LowerView>,
}

/// A path of directories from the layer root (level 0) down.
pub(super) struct Chain {
    levels: Vec<Level>,
}

/// Opens the directory `name` in `parent`, never following a symlink.
pub(super) fn open_dir(parent: &OwnedFd, name: &[u8]) -> rustix::io::Result<OwnedFd> {
    openat(
        parent,
        OsStr::from_bytes(name),
        OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

impl Chain {
    pub(super) fn new(root: OwnedFd) -> Self {
        Self {
            levels: vec![Level {
                node: Tree::ROOT,
                fd: Some(root),
                lower: None,
            }],
        }
    }

    /// The deepest level (0: the root).
    pub(super) fn depth(&self) -> usize {
        self.levels.len() - 1
    }

    /// The directory at the deepest level.
    pub(super) fn last(&self) -> NodeId {
        self.levels[self.depth()].node
    }

    /// The path of the deepest level, for messages.
    pub(super) fn display(&self, tree: &Tree) -> String {
        let names: Vec<&[u8]> = self.levels[1..].iter().map(|l| tree.name(l.node)).collect();
        super::paths::display(&names)
    }

    /// The layer root's descriptor.
    pub(super) fn root(&self) -> &OwnedFd {
        self.levels[0].fd.as_ref().expect("the root stays open")
    }

    /// How many of `path`'s components the chain already has.
    pub(super) fn common(&self, tree: &Tree, path: &[&[u8]]) -> usize {
        self.levels[1..]
            .iter()
            .zip(path)
            .take_while(|(l, c)| tree.name(l.node) == **c)
            .count()
    }

    /// Keeps the levels down to `depth`. If that level's descriptor was
    /// closed and an open level below it is nearer than the closest open
    /// ancestor, it is reopened from there through `..`: climbing back up
    /// a deep chain then costs a step per level, not a walk from the root.
    /// (`..` of a directory of the layer is its parent in the layer: the
    /// layer root is never left, and nothing renames directories.)
    pub(super) fn truncate(&mut self, depth: usize) {
        let open = |i: &usize| self.levels[*i].fd.is_some();
        if depth < self.depth() && self.levels[depth].fd.is_none() {
            let above = (0..depth).rev().find(open).expect("the root stays open");
            if let Some(below) = (depth + 1..self.levels.len())
                .find(open)
                .filter(|b| b - depth < depth - above)
            {
                let mut fd = self.levels[below].fd.as_ref().and_then(|fd| open_dir(fd, b"..").ok());
                for _ in depth + 1..below {
                    fd = fd.and_then(|fd| open_dir(&fd, b"..").ok());
                }
                // On failure, open_last walks down from the ancestor.
                self.levels[depth].fd = fd;
            }
        }
        self.levels.truncate(depth + 1);
    }

    /// Goes one level down, to `node` (a child of the deepest level), open
    /// as `fd` or to be opened when needed.
    pub(super) fn push(&mut self, node: NodeId, fd: Option<OwnedFd>, lower: Option<LowerView>) {
        self.levels.push(Level { node, fd, lower });
        if let Some(old) = self.levels.len().checked_sub(OPEN_LEVELS + 1).filter(|i| *i > 0) {
            self.levels[old].fd = None;
        }
    }

    /// Opens the deepest level if it is not, from its closest open
    /// ancestor, component by component without following symlinks.
    pub(super) fn open_last(&mut self, tree: &Tree) -> rustix::io::Result<()> {
        let last = self.depth();
        let from = (0..=last)
            .rev()
            .find(|i| self.levels[*i].fd.is_some())
            .expect("the root stays open");
        for i in from + 1..=last {
            let parent = self.levels[i - 1].fd.as_ref().expect("opened in the previous step");
            let fd = open_dir(parent, tree.name(self.levels[i].node))?;
            self.levels[i].fd = Some(fd);
            if i - 1 > 0 && i - 1 + OPEN_LEVELS <= last {
                self.levels[i - 1].fd = None;
            }
        }
        Ok(())
    }

    /// The deepest level's descriptor (after [`Chain::open_last`]).
    pub(super) fn last_fd(&self) -> &OwnedFd {
        self.levels[self.depth()].fd.as_ref().expect("open_last was called")
    }

    /// What the lowers show at `name` below the deepest level (nothing
    /// below a directory this layer made opaque).
    pub(super) fn lower_child(&mut self, tree: &Tree, lowers: &[PathBuf], name: &[u8]) -> io::Result<LowerView> {
        let have = (0..=self.depth()).rev().find(|i| self.levels[*i].lower.is_some());
        let mut rel: PathBuf = self.levels[1..=have.unwrap_or(0)]
            .iter()
            .map(|l| Path::new(OsStr::from_bytes(tree.name(l.node))))
            .collect();
        if have.is_none() {
            self.levels[0].lower = Some(LowerView::root(lowers));
        }
        for i in have.unwrap_or(0) + 1..=self.depth() {
            rel.push(OsStr::from_bytes(tree.name(self.levels[i].node)));
            let view = self.view_below(i - 1, tree, lowers, &rel)?;
            self.levels[i].lower = Some(view);
        }
        rel.push(OsStr::from_bytes(name));
        self.view_below(self.depth(), tree, lowers, &rel)
    }

    /// What the lowers show at `rel`, a child of level `i`.
    fn view_below(&self, i: usize, tree: &Tree, lowers: &[PathBuf], rel: &Path) -> io::Result<LowerView> {
        let level = &self.levels[i];
        if tree.node(level.node).opaque {
            return Ok(LowerView::default());
        }
        let view = level.lower.as_ref().expect("views are made from the root down");
        view.child(lowers, rel)
    }
}
