//! How the host scanner reaches the filesystem and the clock: a small
//! trait, so that tests can count what the scanner lists, stats and reads,
//! and present the metadata a coarse-grained filesystem would.

use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// A point in time as a filesystem records it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp {
    /// Seconds since the epoch.
    pub secs: i64,
    /// Nanoseconds within the second.
    pub nanos: u32,
}

impl Timestamp {
    /// The current time.
    pub fn now() -> Self {
        let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        Self {
            secs: d.as_secs() as i64,
            nanos: d.subsec_nanos(),
        }
    }

    /// This time minus `nanos` nanoseconds.
    pub fn minus_nanos(self, nanos: u64) -> Self {
        let total = self.secs as i128 * 1_000_000_000 + self.nanos as i128 - nanos as i128;
        Self {
            secs: total.div_euclid(1_000_000_000) as i64,
            nanos: total.rem_euclid(1_000_000_000) as u32,
        }
    }
}

/// What kind of entry a path is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EntryType {
    /// A directory.
    Dir,
    /// A regular file.
    File,
    /// A symbolic link.
    Symlink,
    /// A socket, fifo or device (never uploaded).
    Other,
}

/// The metadata the scanner compares to decide whether a file changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStat {
    /// Kind of entry.
    pub kind: EntryType,
    /// Permission bits (`mode & 0o7777`).
    pub mode: u32,
    /// Size in bytes.
    pub size: u64,
    /// Last modification of the content.
    pub mtime: Timestamp,
    /// Last change of the inode (content, mode, links, or a rename over it).
    pub ctime: Timestamp,
    /// Inode number.
    pub ino: u64,
    /// Device number.
    pub dev: u64,
}

impl FileStat {
    /// The metadata of a `stat` result.
    // The field types of `struct stat` differ between architectures.
    #[allow(clippy::unnecessary_cast)]
    pub fn from_stat(st: &rustix::fs::Stat) -> Self {
        let kind = match rustix::fs::FileType::from_raw_mode(st.st_mode as _) {
            rustix::fs::FileType::Directory => EntryType::Dir,
            rustix::fs::FileType::RegularFile => EntryType::File,
            rustix::fs::FileType::Symlink => EntryType::Symlink,
            _ => EntryType::Other,
        };
        Self {
            kind,
            mode: st.st_mode as u32 & 0o7777,
            size: st.st_size as u64,
            mtime: Timestamp {
                secs: st.st_mtime as i64,
                nanos: st.st_mtime_nsec as u32,
            },
            ctime: Timestamp {
                secs: st.st_ctime as i64,
                nanos: st.st_ctime_nsec as u32,
            },
            ino: st.st_ino as u64,
            dev: st.st_dev as u64,
        }
    }
}

/// The filesystem operations the host scanner uses. Implementations must be
/// usable from several threads at once.
pub trait HostFs: Sync {
    /// The names in directory `dir` with their kind (from the directory
    /// entry when the filesystem provides it).
    fn list(&self, dir: &Path) -> io::Result<Vec<(OsString, EntryType)>>;
    /// Metadata of `path`, not following a final symlink.
    fn lstat(&self, path: &Path) -> io::Result<FileStat>;
    /// Metadata of the entries `names` of directory `dir`, not following
    /// symlinks (the default stats each path).
    fn lstat_in(&self, dir: &Path, names: &[&OsStr]) -> io::Result<Vec<io::Result<FileStat>>> {
        Ok(names.iter().map(|n| self.lstat(&dir.join(n))).collect())
    }
    /// Opens a regular file for reading its content.
    fn open(&self, path: &Path) -> io::Result<Box<dyn Read + '_>>;
    /// The target of a symlink.
    fn read_link(&self, path: &Path) -> io::Result<PathBuf>;
    /// The current time, in the clock file times are taken from.
    fn now(&self) -> Timestamp;
}

/// The real filesystem and clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct RealFs;

impl HostFs for RealFs {
    fn list(&self, dir: &Path) -> io::Result<Vec<(OsString, EntryType)>> {
        let mut out = Vec::new();
        for item in fs::read_dir(dir)? {
            let item = item?;
            // Uses the directory entry's type; stats only when it is unknown.
            let ft = item.file_type()?;
            let kind = if ft.is_dir() {
                EntryType::Dir
            } else if ft.is_file() {
                EntryType::File
            } else if ft.is_symlink() {
                EntryType::Symlink
            } else {
                EntryType::Other
            };
            out.push((item.file_name(), kind));
        }
        Ok(out)
    }

    fn lstat(&self, path: &Path) -> io::Result<FileStat> {
        Ok(FileStat::from_stat(&rustix::fs::lstat(path)?))
    }

    /// Stats relative to the directory (no path lookup from the root for
    /// each entry).
    fn lstat_in(&self, dir: &Path, names: &[&OsStr]) -> io::Result<Vec<io::Result<FileStat>>> {
        use rustix::fs::{AtFlags, Mode, OFlags};
        let fd = rustix::fs::open(dir, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
        Ok(names
            .iter()
            .map(|n| {
                rustix::fs::statat(&fd, *n, AtFlags::SYMLINK_NOFOLLOW)
                    .map(|st| FileStat::from_stat(&st))
                    .map_err(io::Error::from)
            })
            .collect())
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn Read + '_>> {
        Ok(Box::new(File::open(path)?))
    }

    fn read_link(&self, path: &Path) -> io::Result<PathBuf> {
        fs::read_link(path)
    }

    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subtracting_crosses_second_boundaries() {
        let t = Timestamp { secs: 10, nanos: 20 };
        assert_eq!(
            t.minus_nanos(30),
            Timestamp {
                secs: 9,
                nanos: 999_999_990
            }
        );
        assert_eq!(t.minus_nanos(20), Timestamp { secs: 10, nanos: 0 });
    }
}
