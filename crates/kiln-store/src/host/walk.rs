//! The filtered listing of a host directory, with the metadata of every
//! selected entry. Excluded subtrees are skipped by name, before anything
//! inside them is listed or even their own metadata is read; directories
//! under which no include pattern can match are not listed either.
//!
//! Directories are listed level by level, the directories of a level in
//! parallel, each one listed and its entries stat'ed relative to it; the
//! result is then put in walk order (parents before children, names
//! sorted), which is also the component-wise order of the paths.
//!
//! With a filter that honours `.gitignore`, each directory's entries are
//! also matched against the `.gitignore` files of that directory and
//! every one above it (up to the git repository's root, which may be above
//! the walked root), the deepest match deciding as in git; `.git` itself
//! is left out. Ignored directories are never listed.

use std::ffi::{OsStr, OsString};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ignore::gitignore::{Gitignore, GitignoreBuilder};

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

/// The `.gitignore` files that apply in a directory, outermost first.
type Ignores = Arc<Vec<Gitignore>>;

/// A listed directory.
struct Dir {
    rel: PathBuf,
    /// Selected entries, sorted by name; `Some(index)` for subdirectories.
    children: Vec<(OsString, FileStat, Option<usize>)>,
    /// The `.gitignore` files of its parents (when the filter honours them).
    ignores: Ignores,
}

/// Lists the entries of `root` that `filter` selects, in walk order.
pub(crate) fn list(fs: &dyn HostFs, root: &Path, filter: &PathFilter) -> Result<Vec<Found>, HostError> {
    let ignores = match filter.gitignore() {
        true => Arc::new(ancestor_ignores(fs, root)),
        false => Ignores::default(),
    };
    let mut dirs = vec![Dir {
        rel: PathBuf::new(),
        children: Vec::new(),
        ignores,
    }];
    let mut level = vec![0];
    while !level.is_empty() {
        let listed = parallel::map(&level, |&i| list_dir(fs, root, &dirs[i].rel, filter, &dirs[i].ignores));
        let mut next = Vec::new();
        for (&i, listed) in level.iter().zip(listed) {
            let (children, ignores) = listed?;
            let mut kept = Vec::new();
            for (name, stat) in children {
                let sub = (stat.kind == EntryType::Dir).then(|| {
                    dirs.push(Dir {
                        rel: dirs[i].rel.join(&name),
                        children: Vec::new(),
                        ignores: ignores.clone(),
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

/// The selected entries of one directory, sorted by name, with metadata,
/// and the `.gitignore` files that apply under it.
fn list_dir(
    fs: &dyn HostFs,
    root: &Path,
    rel: &Path,
    filter: &PathFilter,
    ignores: &Ignores,
) -> Result<(Vec<(OsString, FileStat)>, Ignores), HostError> {
    let dir = root.join(rel);
    let mut names = fs.list(&dir).map_err(err(&dir))?;
    names.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let ignores = match filter.gitignore() {
        true => with_own_ignore(fs, &dir, ignores, &names)?,
        false => ignores.clone(),
    };
    if filter.gitignore() {
        names.retain(|(name, kind)| name != ".git" && !ignored(&ignores, &dir.join(name), *kind == EntryType::Dir));
    }
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
    let listed = names
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
        .collect::<Result<_, _>>()?;
    Ok((listed, ignores))
}

/// Whether `path` is ignored: the deepest `.gitignore` with a say decides
/// (a `!pattern` there brings it back).
fn ignored(ignores: &[Gitignore], path: &Path, is_dir: bool) -> bool {
    for gitignore in ignores.iter().rev() {
        let found = gitignore.matched(path, is_dir);
        if found.is_ignore() {
            return true;
        }
        if found.is_whitelist() {
            return false;
        }
    }
    false
}

/// `ignores` with `dir`'s own `.gitignore` (if `names` has one) added.
fn with_own_ignore(
    fs: &dyn HostFs,
    dir: &Path,
    ignores: &Ignores,
    names: &[(OsString, EntryType)],
) -> Result<Ignores, HostError> {
    if !names
        .iter()
        .any(|(n, kind)| n == ".gitignore" && *kind == EntryType::File)
    {
        return Ok(ignores.clone());
    }
    let own = read_gitignore(fs, dir).map_err(err(&dir.join(".gitignore")))?;
    Ok(Arc::new(ignores.iter().cloned().chain([own]).collect()))
}

/// The `.gitignore` of `dir` as a matcher rooted there. Lines that are not
/// valid patterns are skipped, as git skips them.
fn read_gitignore(fs: &dyn HostFs, dir: &Path) -> std::io::Result<Gitignore> {
    let mut text = String::new();
    fs.open(&dir.join(".gitignore"))?.read_to_string(&mut text)?;
    let mut builder = GitignoreBuilder::new(dir);
    for line in text.lines() {
        let _ = builder.add_line(None, line);
    }
    builder.build().map_err(std::io::Error::other)
}

/// The `.gitignore` files above `root` that apply to it: those of its
/// parents up to the git repository's root (the first that holds `.git`),
/// outermost first. None when `root` is in no repository.
fn ancestor_ignores(fs: &dyn HostFs, root: &Path) -> Vec<Gitignore> {
    if fs.lstat(&root.join(".git")).is_ok() {
        return Vec::new();
    }
    let mut found = Vec::new();
    for dir in root.ancestors().skip(1) {
        if fs
            .lstat(&dir.join(".gitignore"))
            .is_ok_and(|s| s.kind == EntryType::File)
            && let Ok(gitignore) = read_gitignore(fs, dir)
        {
            found.push(gitignore);
        }
        if fs.lstat(&dir.join(".git")).is_ok() {
            found.reverse();
            return found;
        }
    }
    // Not in a repository: the walked tree's own files only.
    Vec::new()
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
