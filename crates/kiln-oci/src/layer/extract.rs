//! Writing tar entries into a layer directory, openat-style: every parent
//! directory is opened component by component with `O_NOFOLLOW`, and every
//! final operation is relative to the parent's descriptor and never
//! follows a symlink, so nothing can be written outside the layer or
//! through a symlink, whatever the archive holds.
//!
//! The parents of the previous entry stay open ([`Chain`]) and directories
//! are kept as a tree of names ([`Tree`]), so extraction time and memory
//! are linear in the number of entries whatever the layer's depth (which
//! is bounded by [`ExtractLimits::max_depth`] anyway).

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{
    AtFlags, Dir, FileType, Gid, Mode, OFlags, Timespec, Timestamps, Uid, XattrFlags, chmodat, chownat, fchmod, fchown,
    fsetxattr, futimens, linkat, makedev, mkdirat, mknodat, openat, statat, symlinkat, unlinkat, utimensat,
};
use rustix::io::Errno;
use tar::EntryType;

use super::ApplyStats;
use super::dirs::{Chain, NodeId, Tree, open_dir};
use super::limits::{ExtractLimits, Limit};
use super::lower::DirMeta;
use super::paths::{OPAQUE_MARKER, WHITEOUT_PREFIX, components, display, is_whiteout_name};
use super::stream::Entry;
use crate::error::{Error, Result};

/// The overlayfs xattr marking an opaque directory.
pub const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// Metadata of one entry, from its header and PAX records.
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: (i64, i64),
    atime: (i64, i64),
    xattrs: Vec<(String, Vec<u8>)>,
}

/// What was at an entry's path before it was written.
#[derive(PartialEq, Eq)]
enum Slot {
    Empty,
    Dir,
    Whiteout,
}

/// The state of one layer extraction.
pub(super) struct Extractor<'a> {
    ctx: Ctx<'a>,
    /// Every directory written, with the owner, mode and mtime set at the
    /// end (so that read-only modes and mtimes survive the writes into
    /// them) and the opaque marks (lowers are not consulted below those).
    tree: Tree,
    /// The directories down to the last entry's parent.
    chain: Chain,
}

/// What the extraction knows besides its directories.
struct Ctx<'a> {
    lowers: &'a [PathBuf],
    layer: String,
    limits: ExtractLimits,
    is_root: bool,
    stats: ApplyStats,
}

fn errno_io(e: Errno) -> io::Error {
    io::Error::from_raw_os_error(e.raw_os_error())
}

fn ts((sec, nsec): (i64, i64)) -> Timespec {
    Timespec {
        tv_sec: sec,
        tv_nsec: nsec as _,
    }
}

fn is_whiteout_stat(st: &rustix::fs::Stat) -> bool {
    FileType::from_raw_mode(st.st_mode) == FileType::CharacterDevice && st.st_rdev == 0
}

impl<'a> Extractor<'a> {
    pub(super) fn new(target: &Path, lowers: &'a [PathBuf], layer: String, limits: ExtractLimits) -> Result<Self> {
        let root = openat(
            rustix::fs::CWD,
            target,
            OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| Error::Io {
            op: "open layer directory".into(),
            path: target.to_path_buf(),
            source: errno_io(e),
        })?;
        Ok(Self {
            ctx: Ctx {
                lowers,
                layer,
                limits,
                is_root: rustix::process::geteuid().is_root(),
                stats: ApplyStats::default(),
            },
            tree: Tree::new(),
            chain: Chain::new(root),
        })
    }

    /// Writes one tar entry.
    pub(super) fn entry<R: Read>(&mut self, mut entry: Entry<'_, R>) -> Result<()> {
        let kind = entry.kind;
        let name = String::from_utf8_lossy(&entry.path).into_owned();
        self.ctx.stats.entries += 1;
        let comps = components(&entry.path).map_err(|r| self.ctx.refuse(&name, r))?;
        let max_depth = self.ctx.limits.max_depth;
        if comps.len() > max_depth {
            return Err(self.ctx.over(&name, Limit::Depth, comps.len() as u64, max_depth as u64));
        }

        if let Some((last, parents)) = comps.split_last() {
            if let Some(i) = parents.iter().position(|c| is_whiteout_name(c)) {
                return Err(self.ctx.refuse(
                    &name,
                    format!(
                        "its parent {} is a whiteout name, not a directory",
                        display(&parents[..=i])
                    ),
                ));
            }
            if is_whiteout_name(last) {
                return self.whiteout(&name, parents, last);
            }
        }

        let meta = self.ctx.meta(&name, &entry)?;
        let Some((last, parents)) = comps.split_last() else {
            if kind != EntryType::Directory {
                return Err(self
                    .ctx
                    .refuse(&name, "it would replace the layer root with a non-directory"));
            }
            self.ctx.set_xattrs(&name, self.chain.root(), &meta.xattrs)?;
            self.tree.node_mut(Tree::ROOT).meta = Some(meta.dir());
            self.ctx.stats.dirs += 1;
            return Ok(());
        };
        let is_file = matches!(kind, EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse);
        if is_file {
            self.ctx.check_file_limits(&name, &entry)?;
        }
        self.open_parent(&name, parents)?;
        let pnode = self.chain.last();
        let parent = self.chain.last_fd();
        let last_os = OsStr::from_bytes(last);

        match kind {
            EntryType::Directory => {
                let slot = self.ctx.clear_slot(&mut self.tree, parent, pnode, &name, last, true)?;
                if slot != Slot::Dir {
                    mkdirat(parent, last_os, Mode::from_raw_mode(0o700))
                        .map_err(self.ctx.fail(&name, "create directory"))?;
                }
                let dir = open_dir(parent, last).map_err(self.ctx.fail(&name, "open directory"))?;
                let node = self.tree.child_or_insert(pnode, last);
                if slot == Slot::Whiteout {
                    // The whiteout hid a lower directory: this one must not
                    // merge with it.
                    self.ctx.set_opaque(&name, &dir, &mut self.tree, node)?;
                }
                self.ctx.set_xattrs(&name, &dir, &meta.xattrs)?;
                self.tree.node_mut(node).meta = Some(meta.dir());
                self.ctx.stats.dirs += 1;
            }
            _ if is_file => {
                self.ctx.clear_slot(&mut self.tree, parent, pnode, &name, last, false)?;
                let fd = openat(
                    parent,
                    last_os,
                    OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(self.ctx.fail(&name, "create file"))?;
                let mut file = File::from(fd);
                let stored = entry.data.len();
                match &entry.sparse {
                    Some(map) => map.write(&mut entry.data, &mut file),
                    None => io::copy(&mut entry.data, &mut file).map(drop),
                }
                .map_err(self.ctx.fail_io(&name, "write file"))?;
                self.ctx.stats.bytes += stored;
                // Order matters: chown clears setuid bits and file
                // capabilities, so it comes before xattrs and chmod.
                self.ctx.chown_fd(&name, &file, &meta)?;
                self.ctx.set_xattrs(&name, &file, &meta.xattrs)?;
                fchmod(&file, Mode::from_raw_mode(meta.mode)).map_err(self.ctx.fail(&name, "chmod"))?;
                futimens(&file, &meta.times()).map_err(self.ctx.fail(&name, "set times"))?;
                self.ctx.stats.files += 1;
            }
            EntryType::Symlink => {
                let target = entry
                    .link
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| self.ctx.refuse(&name, "symlink without a target"))?;
                self.ctx.clear_slot(&mut self.tree, parent, pnode, &name, last, false)?;
                symlinkat(OsStr::from_bytes(&target), parent, last_os)
                    .map_err(self.ctx.fail(&name, "create symlink"))?;
                self.ctx.chown_at(&name, parent, last_os, &meta)?;
                utimensat(parent, last_os, &meta.times(), AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(self.ctx.fail(&name, "set times"))?;
                self.ctx.stats.symlinks += 1;
            }
            EntryType::Link => {
                let raw_target = entry
                    .link
                    .ok_or_else(|| self.ctx.refuse(&name, "hardlink without a target"))?;
                self.hardlink(&name, pnode, &comps, &raw_target)?;
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let (file_type, dev) = match kind {
                    EntryType::Fifo => (FileType::Fifo, makedev(0, 0)),
                    _ => {
                        let major = entry.header.device_major().ok().flatten().unwrap_or(0);
                        let minor = entry.header.device_minor().ok().flatten().unwrap_or(0);
                        let ft = if kind == EntryType::Char {
                            FileType::CharacterDevice
                        } else {
                            FileType::BlockDevice
                        };
                        (ft, makedev(major, minor))
                    }
                };
                self.ctx.clear_slot(&mut self.tree, parent, pnode, &name, last, false)?;
                mknodat(parent, last_os, file_type, Mode::from_raw_mode(meta.mode & 0o777), dev).map_err(
                    self.ctx
                        .fail(&name, "create device node or fifo (devices need CAP_MKNOD)"),
                )?;
                self.ctx.chown_at(&name, parent, last_os, &meta)?;
                // Not a symlink (just created), so following is moot.
                chmodat(parent, last_os, Mode::from_raw_mode(meta.mode), AtFlags::empty())
                    .map_err(self.ctx.fail(&name, "chmod"))?;
                utimensat(parent, last_os, &meta.times(), AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(self.ctx.fail(&name, "set times"))?;
                self.ctx.stats.devices += 1;
            }
            other => {
                return Err(self.ctx.refuse(&name, format!("unsupported tar entry type {other:?}")));
            }
        }
        Ok(())
    }

    /// Moves the chain to the parent directories of an entry, opening
    /// (and creating if missing) those the previous entry did not share,
    /// one component at a time, refusing symlinks and non-directories.
    fn open_parent(&mut self, name: &str, parents: &[&[u8]]) -> Result<()> {
        let common = self.chain.common(&self.tree, parents);
        self.chain.truncate(common);
        self.chain
            .open_last(&self.tree)
            .map_err(self.ctx.fail(name, "open parent directory"))?;
        for (i, c) in parents.iter().enumerate().skip(common) {
            let pnode = self.chain.last();
            let parent = self.chain.last_fd();
            let c_os = OsStr::from_bytes(c);
            let (node, dir, lower) = match statat(parent, c_os, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => match FileType::from_raw_mode(st.st_mode) {
                    FileType::Directory => {
                        let dir = open_dir(parent, c).map_err(self.ctx.fail(name, "open parent directory"))?;
                        (self.tree.child_or_insert(pnode, c), dir, None)
                    }
                    FileType::Symlink => {
                        return Err(self.ctx.refuse(
                            name,
                            format!(
                                "its parent {} is a symlink and writing through symlinks is not allowed",
                                display(&parents[..=i])
                            ),
                        ));
                    }
                    _ if is_whiteout_stat(&st) => {
                        // Deleted from the lowers earlier in this layer, now
                        // needed as a directory: a fresh, opaque one.
                        unlinkat(parent, c_os, AtFlags::empty()).map_err(self.ctx.fail(name, "replace whiteout"))?;
                        let dir = self.ctx.mkdir(name, parent, c, DirMeta::DEFAULT)?;
                        let node = self.tree.insert(pnode, c, Some(DirMeta::DEFAULT));
                        self.ctx.set_opaque(name, &dir, &mut self.tree, node)?;
                        (node, dir, None)
                    }
                    _ => {
                        return Err(self.ctx.refuse(
                            name,
                            format!("its parent {} is not a directory", display(&parents[..=i])),
                        ));
                    }
                },
                Err(Errno::NOENT) => {
                    let view = self
                        .chain
                        .lower_child(&self.tree, self.ctx.lowers, c)
                        .map_err(self.ctx.fail_io(name, "look up parent in lower layers"))?;
                    let meta = view.meta().unwrap_or(DirMeta::DEFAULT);
                    let dir = self.ctx.mkdir(name, self.chain.last_fd(), c, meta)?;
                    (self.tree.insert(pnode, c, Some(meta)), dir, Some(view))
                }
                Err(e) => return Err(self.ctx.fail(name, "inspect parent directory")(e)),
            };
            self.chain.push(node, Some(dir), lower);
        }
        Ok(())
    }

    /// An OCI whiteout: `.wh..wh..opq` makes the parent opaque, `.wh.NAME`
    /// becomes a 0:0 character device NAME. Whiteouts only hide lower
    /// layers: what this layer itself has at NAME stays (a directory becomes
    /// opaque).
    fn whiteout(&mut self, name: &str, parents: &[&[u8]], last: &[u8]) -> Result<()> {
        self.open_parent(name, parents)?;
        let pnode = self.chain.last();
        let parent = self.chain.last_fd();
        if last == OPAQUE_MARKER {
            // The chain ends at this directory, so no view of the lowers
            // below it is cached: the mark applies to all that follows.
            self.ctx.set_opaque(name, parent, &mut self.tree, pnode)?;
            self.ctx.stats.opaque_dirs += 1;
            return Ok(());
        }
        let hidden = &last[WHITEOUT_PREFIX.len()..];
        if hidden.starts_with(WHITEOUT_PREFIX) {
            // Other `.wh..wh.` names are aufs bookkeeping: nothing to extract.
            return Ok(());
        }
        if hidden.is_empty() || hidden == b"." || hidden == b".." {
            return Err(self.ctx.refuse(name, "whiteout of an invalid name"));
        }
        let hidden_os = OsStr::from_bytes(hidden);
        match statat(parent, hidden_os, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
                let dir = open_dir(parent, hidden).map_err(self.ctx.fail(name, "open directory"))?;
                let node = self.tree.child_or_insert(pnode, hidden);
                self.ctx.set_opaque(name, &dir, &mut self.tree, node)?;
            }
            Ok(_) => {}
            Err(Errno::NOENT) => {
                mknodat(
                    parent,
                    hidden_os,
                    FileType::CharacterDevice,
                    Mode::empty(),
                    makedev(0, 0),
                )
                .map_err(
                    self.ctx
                        .fail(name, "create whiteout (a 0:0 character device; needs CAP_MKNOD)"),
                )?;
            }
            Err(e) => return Err(self.ctx.fail(name, "inspect whited-out entry")(e)),
        }
        self.ctx.stats.whiteouts += 1;
        Ok(())
    }

    /// A hardlink to an entry extracted earlier from this layer.
    fn hardlink(&mut self, name: &str, pnode: NodeId, comps: &[&[u8]], raw_target: &[u8]) -> Result<()> {
        let ctx = &self.ctx;
        let target = components(raw_target).map_err(|r| ctx.refuse(name, format!("hardlink target: {r}")))?;
        let shown = String::from_utf8_lossy(raw_target).into_owned();
        let Some((tlast, tparents)) = target.split_last() else {
            return Err(ctx.refuse(name, "hardlink to the layer root"));
        };
        if target == comps {
            return Err(ctx.refuse(name, "hardlink to itself"));
        }
        if target.iter().any(|c| is_whiteout_name(c)) {
            return Err(ctx.refuse(name, format!("hardlink target {shown:?} is a whiteout")));
        }
        // Walked from the root: at most the depth of a directory that
        // exists, which the depth limit bounds.
        let mut tparent = rustix::io::dup(self.chain.root()).map_err(ctx.fail(name, "open the layer root"))?;
        for (i, c) in tparents.iter().enumerate() {
            tparent = open_dir(&tparent, c).map_err(|e| match e {
                Errno::NOENT => ctx.refuse(name, format!("hardlink target {shown:?} is not in this layer")),
                Errno::NOTDIR | Errno::LOOP => ctx.refuse(
                    name,
                    format!(
                        "hardlink target {shown:?} passes through {}, which is not a directory",
                        display(&tparents[..=i])
                    ),
                ),
                e => ctx.fail(name, "open hardlink target directory")(e),
            })?;
        }
        let tlast_os = OsStr::from_bytes(tlast);
        match statat(&tparent, tlast_os, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
                return Err(ctx.refuse(name, format!("hardlink target {shown:?} is a directory")));
            }
            Ok(st) if is_whiteout_stat(&st) => {
                return Err(ctx.refuse(name, format!("hardlink target {shown:?} was deleted by a whiteout")));
            }
            Ok(_) => {}
            Err(Errno::NOENT) => {
                return Err(ctx.refuse(name, format!("hardlink target {shown:?} is not in this layer")));
            }
            Err(e) => return Err(ctx.fail(name, "inspect hardlink target")(e)),
        }
        let parent = self.chain.last_fd();
        let last = comps.last().expect("not the root");
        self.ctx.clear_slot(&mut self.tree, parent, pnode, name, last, false)?;
        linkat(&tparent, tlast_os, parent, OsStr::from_bytes(last), AtFlags::empty())
            .map_err(self.ctx.fail(name, "create hardlink"))?;
        self.ctx.stats.hardlinks += 1;
        Ok(())
    }

    /// Sets owner, mode and mtime of every directory written, now that
    /// nothing more is written into them, and returns what was done.
    pub(super) fn finish(mut self) -> Result<ApplyStats> {
        // Depth first, children before their parent: a parent made
        // unreadable (mode 0) would otherwise hide them from an
        // unprivileged caller.
        self.chain.truncate(0);
        let mut stack = vec![(Tree::ROOT, 0, false)];
        while let Some((id, depth, children_done)) = stack.pop() {
            if !children_done {
                if depth > 0 {
                    self.chain.truncate(depth - 1);
                    self.chain.push(id, None, None);
                }
                stack.push((id, depth, true));
                stack.extend(self.tree.children(id).map(|c| (c, depth + 1, false)));
                continue;
            }
            let Some(meta) = self.tree.node(id).meta else {
                continue;
            };
            self.chain.truncate(depth);
            let opened = self.chain.open_last(&self.tree);
            let name = || self.chain.display(&self.tree);
            opened.map_err(|e| self.ctx.fail(&name(), "open directory")(e))?;
            let fd = self.chain.last_fd();
            let owner = fchown(fd, Some(Uid::from_raw(meta.uid)), Some(Gid::from_raw(meta.gid)));
            self.ctx
                .chown_result(owner)
                .map_err(|e| self.ctx.fail(&name(), "chown directory")(e))?;
            fchmod(fd, Mode::from_raw_mode(meta.mode)).map_err(|e| self.ctx.fail(&name(), "chmod directory")(e))?;
            futimens(fd, &Meta::from_dir(meta).times())
                .map_err(|e| self.ctx.fail(&name(), "set directory times")(e))?;
        }
        Ok(self.ctx.stats)
    }
}

impl Ctx<'_> {
    fn refuse(&self, entry: &str, reason: impl Into<String>) -> Error {
        Error::UnsafeEntry {
            entry: entry.to_string(),
            layer: self.layer.clone(),
            reason: reason.into(),
        }
    }

    fn over(&self, entry: &str, limit: Limit, actual: u64, max: u64) -> Error {
        Error::LimitExceeded {
            entry: entry.to_string(),
            layer: self.layer.clone(),
            limit,
            actual,
            max,
        }
    }

    fn fail(&self, entry: &str, op: &'static str) -> impl FnOnce(Errno) -> Error + '_ {
        let entry = entry.to_string();
        move |e| Error::Extract {
            entry,
            layer: self.layer.clone(),
            op,
            source: errno_io(e),
        }
    }

    fn fail_io(&self, entry: &str, op: &'static str) -> impl FnOnce(io::Error) -> Error + '_ {
        let entry = entry.to_string();
        move |source| Error::Extract {
            entry,
            layer: self.layer.clone(),
            op,
            source,
        }
    }

    /// Refuses a file over the size limits, before anything is written.
    fn check_file_limits<R>(&self, name: &str, entry: &Entry<'_, R>) -> Result<()> {
        let stored = entry.data.len();
        let size = entry.sparse.as_ref().map_or(stored, |m| m.size());
        if let Some(max) = self.limits.max_entry_size
            && size > max
        {
            return Err(self.over(name, Limit::EntrySize, size, max));
        }
        let total = self.stats.bytes.saturating_add(stored);
        if let Some(max) = self.limits.max_total_bytes
            && total > max
        {
            return Err(self.over(name, Limit::TotalBytes, total, max));
        }
        Ok(())
    }

    /// Reads mode, owner, times and xattrs of an entry.
    fn meta<R>(&self, name: &str, entry: &Entry<'_, R>) -> Result<Meta> {
        let h = &entry.header;
        let bad = |what: &str, e: io::Error| self.refuse(name, format!("unreadable {what} in its header: {e}"));
        let pax_id = |what: &str, v: &[u8]| {
            std::str::from_utf8(v)
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| self.refuse(name, format!("unreadable {what} in its PAX records")))
        };
        let (mut uid, mut gid, mut mtime, mut atime) = (None, None, None, None);
        let mut xattrs = Vec::new();
        for (key, value) in &entry.pax {
            if let Some(xname) = key.strip_prefix("SCHILY.xattr.") {
                xattrs.push((xname.to_string(), value.clone()));
                continue;
            }
            match key.as_str() {
                "uid" => uid = Some(pax_id("uid", value)?),
                "gid" => gid = Some(pax_id("gid", value)?),
                "mtime" => mtime = parse_pax_time(value).or(mtime),
                "atime" => atime = parse_pax_time(value),
                _ => {}
            }
        }
        let mode = h.mode().map_err(|e| bad("mode", e))? & 0o7777;
        let uid = uid.map_or_else(|| h.uid().map_err(|e| bad("uid", e)), Ok)?;
        let gid = gid.map_or_else(|| h.gid().map_err(|e| bad("gid", e)), Ok)?;
        let (uid, gid) = match (u32::try_from(uid), u32::try_from(gid)) {
            (Ok(u), Ok(g)) if u != u32::MAX && g != u32::MAX => (u, g),
            _ => return Err(self.refuse(name, format!("owner {uid}:{gid} is out of range"))),
        };
        let mtime = match mtime {
            Some(t) => t,
            None => (h.mtime().map_err(|e| bad("mtime", e))? as i64, 0),
        };
        Ok(Meta {
            mode,
            uid,
            gid,
            mtime,
            atime: atime.unwrap_or(mtime),
            xattrs,
        })
    }

    /// Creates the parent directory `name` in `parent` with the owner of
    /// `meta` (its mode and mtime are set at the end).
    fn mkdir(&mut self, entry: &str, parent: &OwnedFd, name: &[u8], meta: DirMeta) -> Result<OwnedFd> {
        mkdirat(parent, OsStr::from_bytes(name), Mode::from_raw_mode(0o755))
            .map_err(self.fail(entry, "create parent directory"))?;
        let dir = open_dir(parent, name).map_err(self.fail(entry, "open parent directory"))?;
        self.chown_fd(entry, &dir, &Meta::from_dir(meta))?;
        self.stats.implicit_dirs += 1;
        Ok(dir)
    }

    /// Makes room for a new entry `last` in `parent`: an existing directory
    /// stays when a directory replaces it (they merge); anything else is
    /// removed.
    fn clear_slot(
        &self,
        tree: &mut Tree,
        parent: &OwnedFd,
        pnode: NodeId,
        name: &str,
        last: &[u8],
        new_is_dir: bool,
    ) -> Result<Slot> {
        let last_os = OsStr::from_bytes(last);
        let st = match statat(parent, last_os, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::NOENT) => return Ok(Slot::Empty),
            Err(e) => return Err(self.fail(name, "inspect existing entry")(e)),
        };
        let is_dir = FileType::from_raw_mode(st.st_mode) == FileType::Directory;
        if is_dir && new_is_dir {
            return Ok(Slot::Dir);
        }
        if is_dir {
            remove_tree(parent, last_os).map_err(self.fail(name, "remove the directory it replaces"))?;
            tree.remove(pnode, last);
            return Ok(Slot::Empty);
        }
        unlinkat(parent, last_os, AtFlags::empty()).map_err(self.fail(name, "remove the entry it replaces"))?;
        Ok(if is_whiteout_stat(&st) {
            Slot::Whiteout
        } else {
            Slot::Empty
        })
    }

    fn set_opaque(&self, name: &str, dir: &impl AsFd, tree: &mut Tree, node: NodeId) -> Result<()> {
        fsetxattr(dir, OPAQUE_XATTR, b"y", XattrFlags::empty()).map_err(self.fail(
            name,
            "mark directory opaque (trusted.overlay.opaque needs CAP_SYS_ADMIN)",
        ))?;
        tree.node_mut(node).opaque = true;
        Ok(())
    }

    /// Applies PAX xattrs. Policy: `trusted.*` is never applied (those
    /// attributes steer overlayfs and the kernel, e.g. `trusted.overlay.*`
    /// redirects; images have no business setting them). Others
    /// (`security.capability`, `user.*`, ...) are applied; when the
    /// filesystem or our privileges refuse one (EPERM, ENOTSUP, ...), it is
    /// skipped with a warning and counted in [`ApplyStats::xattrs_skipped`].
    fn set_xattrs(&mut self, name: &str, fd: &impl AsFd, xattrs: &[(String, Vec<u8>)]) -> Result<()> {
        for (key, value) in xattrs {
            if key.starts_with("trusted.") {
                tracing::warn!(entry = name, layer = %self.layer, xattr = %key, "not applying a trusted.* xattr from a layer");
                self.stats.xattrs_skipped += 1;
                continue;
            }
            match fsetxattr(fd, key.as_str(), value, XattrFlags::empty()) {
                Ok(()) => {}
                Err(e @ (Errno::PERM | Errno::ACCESS | Errno::NOTSUP | Errno::INVAL | Errno::RANGE | Errno::NOSPC)) => {
                    tracing::warn!(entry = name, layer = %self.layer, xattr = %key, error = %e, "skipping xattr");
                    self.stats.xattrs_skipped += 1;
                }
                Err(e) => return Err(self.fail(name, "set xattr")(e)),
            }
        }
        Ok(())
    }

    /// A chown's result: without root, ownership cannot be given away, so
    /// ours is kept and counted.
    fn chown_result(&mut self, r: rustix::io::Result<()>) -> rustix::io::Result<()> {
        match r {
            Err(Errno::PERM) if !self.is_root => {
                self.stats.ownership_skipped += 1;
                Ok(())
            }
            r => r,
        }
    }

    fn chown_fd(&mut self, name: &str, fd: &impl AsFd, meta: &Meta) -> Result<()> {
        let r = fchown(fd, Some(Uid::from_raw(meta.uid)), Some(Gid::from_raw(meta.gid)));
        self.chown_result(r).map_err(self.fail(name, "chown"))
    }

    fn chown_at(&mut self, name: &str, parent: &OwnedFd, last: &OsStr, meta: &Meta) -> Result<()> {
        let r = chownat(
            parent,
            last,
            Some(Uid::from_raw(meta.uid)),
            Some(Gid::from_raw(meta.gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        );
        self.chown_result(r).map_err(self.fail(name, "chown"))
    }
}

impl Meta {
    fn from_dir(d: DirMeta) -> Self {
        Meta {
            mode: d.mode,
            uid: d.uid,
            gid: d.gid,
            mtime: d.mtime,
            atime: d.mtime,
            xattrs: Vec::new(),
        }
    }

    fn dir(&self) -> DirMeta {
        DirMeta {
            mode: self.mode,
            uid: self.uid,
            gid: self.gid,
            mtime: self.mtime,
        }
    }

    fn times(&self) -> Timestamps {
        Timestamps {
            last_access: ts(self.atime),
            last_modification: ts(self.mtime),
        }
    }
}

/// Parses a PAX time, `seconds[.fraction]`.
fn parse_pax_time(v: &[u8]) -> Option<(i64, i64)> {
    let s = std::str::from_utf8(v).ok()?;
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    let secs: i64 = secs.parse().ok()?;
    let mut nanos: i64 = 0;
    for (i, ch) in frac.chars().take(9).enumerate() {
        nanos += i64::from(ch.to_digit(10)?) * 10i64.pow(8 - i as u32);
    }
    if secs < 0 && nanos > 0 {
        // -1.5 means 1.5 s before the epoch.
        return Some((secs - 1, 1_000_000_000 - nanos));
    }
    Some((secs, nanos))
}

/// Removes the directory `name` in `parent` and everything under it,
/// without following symlinks.
fn remove_tree(parent: &OwnedFd, name: &OsStr) -> rustix::io::Result<()> {
    let dir = openat(
        parent,
        name,
        OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mut children = Vec::new();
    for entry in Dir::read_from(&dir)? {
        let entry = entry?;
        let n = entry.file_name().to_bytes();
        if n == b"." || n == b".." {
            continue;
        }
        children.push(n.to_vec());
    }
    for child in children {
        let c = OsStr::from_bytes(&child);
        let st = statat(&dir, c, AtFlags::SYMLINK_NOFOLLOW)?;
        if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
            remove_tree(&dir, c)?;
        } else {
            unlinkat(&dir, c, AtFlags::empty())?;
        }
    }
    unlinkat(parent, name, AtFlags::REMOVEDIR)
}

#[cfg(test)]
mod tests {
    use super::parse_pax_time;

    #[test]
    fn pax_times() {
        assert_eq!(parse_pax_time(b"1700000000"), Some((1_700_000_000, 0)));
        assert_eq!(parse_pax_time(b"1700000000.5"), Some((1_700_000_000, 500_000_000)));
        assert_eq!(parse_pax_time(b"1.123456789123"), Some((1, 123_456_789)));
        assert_eq!(parse_pax_time(b"x"), None);
    }
}
