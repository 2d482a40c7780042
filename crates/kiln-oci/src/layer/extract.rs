//! Writing tar entries into a layer directory, openat-style: every parent
//! directory is opened component by component with `O_NOFOLLOW`, and every
//! final operation is relative to the parent's descriptor and never
//! follows a symlink, so nothing can be written outside the layer or
//! through a symlink, whatever the archive holds.

use std::collections::{BTreeMap, HashSet};
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
use super::lower::{DirMeta, lower_dir};
use super::paths::{Components, OPAQUE_MARKER, WHITEOUT_PREFIX, components, display, is_whiteout_name};
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
    root: OwnedFd,
    lowers: &'a [PathBuf],
    layer: String,
    /// Directories whose owner, mode and mtime are set at the end (so that
    /// read-only modes and mtimes survive the writes into them).
    dirs: BTreeMap<Components, DirMeta>,
    /// Directories this layer made opaque: lowers are not consulted below.
    opaque: HashSet<Components>,
    is_root: bool,
    pub(super) stats: ApplyStats,
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
    pub(super) fn new(target: &Path, lowers: &'a [PathBuf], layer: String) -> Result<Self> {
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
            root,
            lowers,
            layer,
            dirs: BTreeMap::new(),
            opaque: HashSet::new(),
            is_root: rustix::process::geteuid().is_root(),
            stats: ApplyStats::default(),
        })
    }

    fn refuse(&self, entry: &str, reason: impl Into<String>) -> Error {
        Error::UnsafeEntry {
            entry: entry.to_string(),
            layer: self.layer.clone(),
            reason: reason.into(),
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

    /// Writes one tar entry.
    pub(super) fn entry<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<()> {
        let kind = entry.header().entry_type();
        if matches!(
            kind,
            EntryType::XGlobalHeader | EntryType::XHeader | EntryType::GNULongName | EntryType::GNULongLink
        ) {
            return Ok(());
        }
        let raw = entry.path_bytes().into_owned();
        let name = String::from_utf8_lossy(&raw).into_owned();
        self.stats.entries += 1;
        let comps = components(&raw).map_err(|r| self.refuse(&name, r))?;

        if let Some((last, parents)) = comps.split_last() {
            if let Some(i) = parents.iter().position(|c| is_whiteout_name(c)) {
                return Err(self.refuse(
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

        let meta = self.meta(&name, &mut entry)?;
        let Some((last, parents)) = comps.split_last() else {
            if kind != EntryType::Directory {
                return Err(self.refuse(&name, "it would replace the layer root with a non-directory"));
            }
            let root = rustix::io::dup(&self.root).map_err(self.fail(&name, "open the layer root"))?;
            self.set_xattrs(&name, &root, &meta.xattrs)?;
            self.dirs.insert(
                Vec::new(),
                DirMeta {
                    mode: meta.mode,
                    uid: meta.uid,
                    gid: meta.gid,
                    mtime: meta.mtime,
                },
            );
            self.stats.dirs += 1;
            return Ok(());
        };
        let parent = self.open_parent(&name, parents)?;
        let last_os = OsStr::from_bytes(last);

        match kind {
            EntryType::Directory => {
                let slot = self.clear_slot(&name, &parent, &comps, true)?;
                if slot != Slot::Dir {
                    mkdirat(&parent, last_os, Mode::from_raw_mode(0o700))
                        .map_err(self.fail(&name, "create directory"))?;
                }
                let dir = self.open_dir(&name, &parent, last_os)?;
                if slot == Slot::Whiteout {
                    // The whiteout hid a lower directory: this one must not
                    // merge with it.
                    self.set_opaque(&name, &dir, &comps)?;
                }
                self.set_xattrs(&name, &dir, &meta.xattrs)?;
                self.dirs.insert(
                    comps.clone(),
                    DirMeta {
                        mode: meta.mode,
                        uid: meta.uid,
                        gid: meta.gid,
                        mtime: meta.mtime,
                    },
                );
                self.stats.dirs += 1;
            }
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                self.clear_slot(&name, &parent, &comps, false)?;
                let fd = openat(
                    &parent,
                    last_os,
                    OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(self.fail(&name, "create file"))?;
                let mut file = File::from(fd);
                let n = io::copy(&mut entry, &mut file).map_err(self.fail_io(&name, "write file"))?;
                self.stats.bytes += n;
                // Order matters: chown clears setuid bits and file
                // capabilities, so it comes before xattrs and chmod.
                self.chown_fd(&name, &file, &meta)?;
                self.set_xattrs(&name, &file, &meta.xattrs)?;
                fchmod(&file, Mode::from_raw_mode(meta.mode)).map_err(self.fail(&name, "chmod"))?;
                futimens(
                    &file,
                    &Timestamps {
                        last_access: ts(meta.atime),
                        last_modification: ts(meta.mtime),
                    },
                )
                .map_err(self.fail(&name, "set times"))?;
                self.stats.files += 1;
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .map(|c| c.into_owned())
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| self.refuse(&name, "symlink without a target"))?;
                self.clear_slot(&name, &parent, &comps, false)?;
                symlinkat(OsStr::from_bytes(&target), &parent, last_os).map_err(self.fail(&name, "create symlink"))?;
                self.chown_at(&name, &parent, last_os, &meta)?;
                utimensat(
                    &parent,
                    last_os,
                    &Timestamps {
                        last_access: ts(meta.atime),
                        last_modification: ts(meta.mtime),
                    },
                    AtFlags::SYMLINK_NOFOLLOW,
                )
                .map_err(self.fail(&name, "set times"))?;
                self.stats.symlinks += 1;
            }
            EntryType::Link => {
                let raw_target = entry
                    .link_name_bytes()
                    .map(|c| c.into_owned())
                    .ok_or_else(|| self.refuse(&name, "hardlink without a target"))?;
                self.hardlink(&name, &parent, &comps, &raw_target)?;
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                let (file_type, dev) = match kind {
                    EntryType::Fifo => (FileType::Fifo, makedev(0, 0)),
                    _ => {
                        let major = entry.header().device_major().ok().flatten().unwrap_or(0);
                        let minor = entry.header().device_minor().ok().flatten().unwrap_or(0);
                        let ft = if kind == EntryType::Char {
                            FileType::CharacterDevice
                        } else {
                            FileType::BlockDevice
                        };
                        (ft, makedev(major, minor))
                    }
                };
                self.clear_slot(&name, &parent, &comps, false)?;
                mknodat(&parent, last_os, file_type, Mode::from_raw_mode(meta.mode & 0o777), dev)
                    .map_err(self.fail(&name, "create device node or fifo (devices need CAP_MKNOD)"))?;
                self.chown_at(&name, &parent, last_os, &meta)?;
                // Not a symlink (just created), so following is moot.
                chmodat(&parent, last_os, Mode::from_raw_mode(meta.mode), AtFlags::empty())
                    .map_err(self.fail(&name, "chmod"))?;
                utimensat(
                    &parent,
                    last_os,
                    &Timestamps {
                        last_access: ts(meta.atime),
                        last_modification: ts(meta.mtime),
                    },
                    AtFlags::SYMLINK_NOFOLLOW,
                )
                .map_err(self.fail(&name, "set times"))?;
                self.stats.devices += 1;
            }
            other => {
                return Err(self.refuse(&name, format!("unsupported tar entry type {other:?}")));
            }
        }
        Ok(())
    }

    /// Reads mode, owner, times and xattrs of an entry.
    fn meta<R: Read>(&self, name: &str, entry: &mut tar::Entry<'_, R>) -> Result<Meta> {
        let h = entry.header();
        let bad = |what: &str, e: io::Error| self.refuse(name, format!("unreadable {what} in its header: {e}"));
        let mode = h.mode().map_err(|e| bad("mode", e))? & 0o7777;
        let uid = h.uid().map_err(|e| bad("uid", e))?;
        let gid = h.gid().map_err(|e| bad("gid", e))?;
        let (uid, gid) = match (u32::try_from(uid), u32::try_from(gid)) {
            (Ok(u), Ok(g)) if u != u32::MAX && g != u32::MAX => (u, g),
            _ => return Err(self.refuse(name, format!("owner {uid}:{gid} is out of range"))),
        };
        let mut mtime = (h.mtime().map_err(|e| bad("mtime", e))? as i64, 0);
        let mut atime = None;
        let mut xattrs = Vec::new();
        if let Some(exts) = entry.pax_extensions().map_err(|e| bad("PAX records", e))? {
            for ext in exts {
                let ext = ext.map_err(|e| bad("PAX record", e))?;
                let Ok(key) = ext.key() else { continue };
                if let Some(xname) = key.strip_prefix("SCHILY.xattr.") {
                    xattrs.push((xname.to_string(), ext.value_bytes().to_vec()));
                } else if key == "mtime" {
                    mtime = parse_pax_time(ext.value_bytes()).unwrap_or(mtime);
                } else if key == "atime" {
                    atime = parse_pax_time(ext.value_bytes());
                }
            }
        }
        Ok(Meta {
            mode,
            uid,
            gid,
            mtime,
            atime: atime.unwrap_or(mtime),
            xattrs,
        })
    }

    /// Opens (creating if missing) the parent directories of an entry, one
    /// component at a time, refusing symlinks and non-directories.
    fn open_parent(&mut self, name: &str, parents: &[Vec<u8>]) -> Result<OwnedFd> {
        let mut fd = rustix::io::dup(&self.root).map_err(self.fail(name, "open the layer root"))?;
        let mut lowers_hidden = self.opaque.contains(&Vec::new());
        for i in 0..parents.len() {
            let prefix = &parents[..=i];
            let c = OsStr::from_bytes(&parents[i]);
            match statat(&fd, c, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(st) => match FileType::from_raw_mode(st.st_mode) {
                    FileType::Directory => {}
                    FileType::Symlink => {
                        return Err(self.refuse(
                            name,
                            format!(
                                "its parent {} is a symlink and writing through symlinks is not allowed",
                                display(prefix)
                            ),
                        ));
                    }
                    _ if is_whiteout_stat(&st) => {
                        // Deleted from the lowers earlier in this layer, now
                        // needed as a directory: a fresh, opaque one.
                        unlinkat(&fd, c, AtFlags::empty()).map_err(self.fail(name, "replace whiteout"))?;
                        mkdirat(&fd, c, Mode::from_raw_mode(0o755))
                            .map_err(self.fail(name, "create parent directory"))?;
                        let dir = self.open_dir(name, &fd, c)?;
                        self.set_opaque(name, &dir, prefix)?;
                        self.chown_fd(name, &dir, &Meta::from_dir(DirMeta::DEFAULT))?;
                        self.dirs.insert(prefix.to_vec(), DirMeta::DEFAULT);
                        self.stats.implicit_dirs += 1;
                    }
                    _ => {
                        return Err(self.refuse(name, format!("its parent {} is not a directory", display(prefix))));
                    }
                },
                Err(Errno::NOENT) => {
                    let from_lower = if lowers_hidden {
                        None
                    } else {
                        lower_dir(self.lowers, prefix).map_err(self.fail_io(name, "look up parent in lower layers"))?
                    };
                    let meta = from_lower.unwrap_or(DirMeta::DEFAULT);
                    mkdirat(&fd, c, Mode::from_raw_mode(0o755)).map_err(self.fail(name, "create parent directory"))?;
                    let dir = self.open_dir(name, &fd, c)?;
                    self.chown_fd(name, &dir, &Meta::from_dir(meta))?;
                    self.dirs.insert(prefix.to_vec(), meta);
                    self.stats.implicit_dirs += 1;
                }
                Err(e) => return Err(self.fail(name, "inspect parent directory")(e)),
            }
            fd = self.open_dir(name, &fd, c)?;
            if self.opaque.contains(prefix) {
                lowers_hidden = true;
            }
        }
        Ok(fd)
    }

    /// Opens an existing directory without creating anything (for hardlink
    /// targets and the final metadata pass).
    fn open_existing(&self, parents: &[Vec<u8>]) -> std::result::Result<OwnedFd, (usize, Errno)> {
        let mut fd = rustix::io::dup(&self.root).map_err(|e| (0, e))?;
        for (i, c) in parents.iter().enumerate() {
            fd = openat(
                &fd,
                OsStr::from_bytes(c),
                OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::RDONLY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| (i, e))?;
        }
        Ok(fd)
    }

    fn open_dir(&self, name: &str, parent: &OwnedFd, c: &OsStr) -> Result<OwnedFd> {
        openat(
            parent,
            c,
            OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(self.fail(name, "open directory"))
    }

    /// Makes room for a new entry at `comps`: an existing directory stays
    /// when a directory replaces it (they merge); anything else is removed.
    fn clear_slot(&mut self, name: &str, parent: &OwnedFd, comps: &Components, new_is_dir: bool) -> Result<Slot> {
        let last = OsStr::from_bytes(comps.last().expect("not the root"));
        let st = match statat(parent, last, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::NOENT) => return Ok(Slot::Empty),
            Err(e) => return Err(self.fail(name, "inspect existing entry")(e)),
        };
        let is_dir = FileType::from_raw_mode(st.st_mode) == FileType::Directory;
        if is_dir && new_is_dir {
            return Ok(Slot::Dir);
        }
        if is_dir {
            remove_tree(parent, last).map_err(self.fail(name, "remove the directory it replaces"))?;
            self.dirs.retain(|k, _| !k.starts_with(comps));
            self.opaque.retain(|k| !k.starts_with(comps));
            return Ok(Slot::Empty);
        }
        unlinkat(parent, last, AtFlags::empty()).map_err(self.fail(name, "remove the entry it replaces"))?;
        Ok(if is_whiteout_stat(&st) {
            Slot::Whiteout
        } else {
            Slot::Empty
        })
    }

    /// An OCI whiteout: `.wh..wh..opq` makes the parent opaque, `.wh.NAME`
    /// becomes a 0:0 character device NAME. Whiteouts only hide lower
    /// layers: what this layer itself has at NAME stays (a directory becomes
    /// opaque).
    fn whiteout(&mut self, name: &str, parents: &[Vec<u8>], last: &[u8]) -> Result<()> {
        let parent = self.open_parent(name, parents)?;
        if last == OPAQUE_MARKER {
            self.set_opaque(name, &parent, parents)?;
            self.stats.opaque_dirs += 1;
            return Ok(());
        }
        let hidden = &last[WHITEOUT_PREFIX.len()..];
        if hidden.starts_with(WHITEOUT_PREFIX) {
            // Other `.wh..wh.` names are aufs bookkeeping: nothing to extract.
            return Ok(());
        }
        if hidden.is_empty() || hidden == b"." || hidden == b".." {
            return Err(self.refuse(name, "whiteout of an invalid name"));
        }
        let hidden_os = OsStr::from_bytes(hidden);
        match statat(&parent, hidden_os, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
                let dir = self.open_dir(name, &parent, hidden_os)?;
                let mut comps = parents.to_vec();
                comps.push(hidden.to_vec());
                self.set_opaque(name, &dir, &comps)?;
            }
            Ok(_) => {}
            Err(Errno::NOENT) => {
                mknodat(
                    &parent,
                    hidden_os,
                    FileType::CharacterDevice,
                    Mode::empty(),
                    makedev(0, 0),
                )
                .map_err(self.fail(name, "create whiteout (a 0:0 character device; needs CAP_MKNOD)"))?;
            }
            Err(e) => return Err(self.fail(name, "inspect whited-out entry")(e)),
        }
        self.stats.whiteouts += 1;
        Ok(())
    }

    /// A hardlink to an entry extracted earlier from this layer.
    fn hardlink(&mut self, name: &str, parent: &OwnedFd, comps: &Components, raw_target: &[u8]) -> Result<()> {
        let target = components(raw_target).map_err(|r| self.refuse(name, format!("hardlink target: {r}")))?;
        let shown = String::from_utf8_lossy(raw_target).into_owned();
        let Some((tlast, tparents)) = target.split_last() else {
            return Err(self.refuse(name, "hardlink to the layer root"));
        };
        if &target == comps {
            return Err(self.refuse(name, "hardlink to itself"));
        }
        if target.iter().any(|c| is_whiteout_name(c)) {
            return Err(self.refuse(name, format!("hardlink target {shown:?} is a whiteout")));
        }
        let tparent = self.open_existing(tparents).map_err(|(i, e)| match e {
            Errno::NOENT => self.refuse(name, format!("hardlink target {shown:?} is not in this layer")),
            Errno::NOTDIR | Errno::LOOP => self.refuse(
                name,
                format!(
                    "hardlink target {shown:?} passes through {}, which is not a directory",
                    display(&tparents[..=i])
                ),
            ),
            e => self.fail(name, "open hardlink target directory")(e),
        })?;
        let tlast_os = OsStr::from_bytes(tlast);
        match statat(&tparent, tlast_os, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
                return Err(self.refuse(name, format!("hardlink target {shown:?} is a directory")));
            }
            Ok(st) if is_whiteout_stat(&st) => {
                return Err(self.refuse(name, format!("hardlink target {shown:?} was deleted by a whiteout")));
            }
            Ok(_) => {}
            Err(Errno::NOENT) => {
                return Err(self.refuse(name, format!("hardlink target {shown:?} is not in this layer")));
            }
            Err(e) => return Err(self.fail(name, "inspect hardlink target")(e)),
        }
        self.clear_slot(name, parent, comps, false)?;
        let last = OsStr::from_bytes(comps.last().expect("not the root"));
        linkat(&tparent, tlast_os, parent, last, AtFlags::empty()).map_err(self.fail(name, "create hardlink"))?;
        self.stats.hardlinks += 1;
        Ok(())
    }

    fn set_opaque(&mut self, name: &str, dir: &OwnedFd, comps: &[Vec<u8>]) -> Result<()> {
        fsetxattr(dir, OPAQUE_XATTR, b"y", XattrFlags::empty()).map_err(self.fail(
            name,
            "mark directory opaque (trusted.overlay.opaque needs CAP_SYS_ADMIN)",
        ))?;
        self.opaque.insert(comps.to_vec());
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

    fn chown_result(&mut self, name: &str, r: rustix::io::Result<()>) -> Result<()> {
        match r {
            Ok(()) => Ok(()),
            // Without root, ownership cannot be given away: keep ours.
            Err(Errno::PERM) if !self.is_root => {
                self.stats.ownership_skipped += 1;
                Ok(())
            }
            Err(e) => Err(self.fail(name, "chown")(e)),
        }
    }

    fn chown_fd(&mut self, name: &str, fd: &impl AsFd, meta: &Meta) -> Result<()> {
        let r = fchown(fd, Some(Uid::from_raw(meta.uid)), Some(Gid::from_raw(meta.gid)));
        self.chown_result(name, r)
    }

    fn chown_at(&mut self, name: &str, parent: &OwnedFd, last: &OsStr, meta: &Meta) -> Result<()> {
        let r = chownat(
            parent,
            last,
            Some(Uid::from_raw(meta.uid)),
            Some(Gid::from_raw(meta.gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        );
        self.chown_result(name, r)
    }

    /// Sets owner, mode and mtime of every directory written, now that
    /// nothing more is written into them.
    pub(super) fn finish(&mut self) -> Result<()> {
        let dirs = std::mem::take(&mut self.dirs);
        // Children first: a parent made unreadable (mode 0) would otherwise
        // hide them from an unprivileged caller.
        for (comps, meta) in dirs.iter().rev() {
            let name = display(comps);
            // A directory later replaced by something else is skipped.
            let Ok(fd) = self.open_existing(comps) else {
                continue;
            };
            self.chown_fd(&name, &fd, &Meta::from_dir(*meta))?;
            fchmod(&fd, Mode::from_raw_mode(meta.mode)).map_err(self.fail(&name, "chmod directory"))?;
            futimens(
                &fd,
                &Timestamps {
                    last_access: ts(meta.mtime),
                    last_modification: ts(meta.mtime),
                },
            )
            .map_err(self.fail(&name, "set directory times"))?;
        }
        Ok(())
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
