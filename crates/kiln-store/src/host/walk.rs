//! The filtered listing of a host directory, with the metadata of every
//! selected entry. Excluded subtrees are skipped by name, before anything
//! inside them is listed or even their own metadata is read; directories
//! under which no include pattern can match are not listed either.
//!
//! Directories are listed level by level, the directories of a level in
//! parallel, each one listed and its entries stat'ed relative to it; the
//! result is then put in walk order (parents before children, names
//! sorted), which is also the component-wise order of the paths.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

use super::access::{EntryType, FileStat, HostFs};
use super::{HostError, changed, err, parallel};
use crate::filter::PathFilter;

/// One selected path with its metadata.
#[derive(Debug, Clone)]
pub(crate) struct Found {
    /// Path relative to the scanned root.
    pub rel: PathBuf,
    /// Its metadata.
    pub stat: FileStat,
}

/// A listed directory.
struct Dir {
    rel: PathBuf,
    /// Selected entries, sorted by name; `Some(index)` for subdirectories.
    children: Vec<(OsString, FileStat, Option<usize>)>,
}

/// Lists the entries of `root` that `filter` selects, in walk order.
pub(crate) fn list(fs: &dyn HostFs, root: &Path, filter: &PathFilter) -> Result<Vec<Found>, HostError> {
    let mut dirs = vec![Dir {
        rel: PathBuf::new(),
        children: Vec::new(),
    }];
    let mut level = vec![0];
    while !level.is_empty() {
        let listed = parallel::map(&level, |&i| list_dir(fs, root, &dirs[i].rel, filter));
        let mut next = Vec::new();
        for (&i, children) in level.iter().zip(listed) {
            let mut kept = Vec::new();
            for (name, stat) in children? {
                let sub = (stat.kind == EntryType::Dir).then(|| {
                    dirs.push(Dir {
                        rel: dirs[i].rel.join(&name),
                        children: Vec::new(),
                    });
                    next.push(dirs.len() - 1);
                    dirs.len() - 1
                });
                kept.push((name, stat, sub));
            }
            dirs[i].children = kept;
        }
        level = next;
    }
    let mut out = Vec::new();
    emit(&mut dirs, 0, filter, &mut out);
    Ok(out)
}

/// The selected entries of one directory, sorted by name, with metadata.
fn list_dir(
    fs: &dyn HostFs,
    root: &Path,
    rel: &Path,
    filter: &PathFilter,
) -> Result<Vec<(OsString, FileStat)>, HostError> {
    let dir = root.join(rel);
    let mut names = fs.list(&dir).map_err(err(&dir))?;
    names.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let everything = filter.is_empty();
    names.retain(|(name, kind)| {
        if *kind == EntryType::Other {
            // Sockets, fifos and devices are not uploaded.
            return false;
        }
        if everything {
            return true;
        }
        let child = rel.join(name);
        if filter.prunes(&child) {
            return false;
        }
        filter.keeps(&child) || (*kind == EntryType::Dir && filter.may_include_under(&child))
    });
    let refs: Vec<&OsStr> = names.iter().map(|(n, _)| n.as_os_str()).collect();
    let stats = fs.lstat_in(&dir, &refs).map_err(err(&dir))?;
    names
        .into_iter()
        .zip(stats)
        .map(|((name, kind), stat)| {
            let path = || dir.join(&name);
            let stat = stat.map_err(|e| err(&path())(e))?;
            // The entry changed kind since it was listed.
            if (stat.kind == EntryType::Dir) != (kind == EntryType::Dir) || stat.kind == EntryType::Other {
                return Err(changed(&path()));
            }
            Ok((name, stat))
        })
        .collect()
}

/// Appends the entries under directory `i` in walk order; returns whether
/// any was added (a directory is kept if something under it is, or if the
/// filter keeps it).
fn emit(dirs: &mut [Dir], i: usize, filter: &PathFilter, out: &mut Vec<Found>) -> bool {
    let children = std::mem::take(&mut dirs[i].children);
    let mut added = false;
    for (name, stat, sub) in children {
        match sub {
            Some(d) => {
                let at = out.len();
                out.push(Found {
                    rel: dirs[d].rel.clone(),
                    stat,
                });
                let inner = emit(dirs, d, filter, out);
                if inner || filter.keeps(&dirs[d].rel) {
                    added = true;
                } else {
                    out.truncate(at);
                }
            }
            None => {
                out.push(Found {
                    rel: dirs[i].rel.join(name),
                    stat,
                });
                added = true;
            }
        }
    }
    added
}
