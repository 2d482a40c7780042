//! The filtered listing of a host directory. Excluded subtrees are skipped
//! by name, before anything inside them is listed or even their own
//! metadata is read; directories under which no include pattern can match
//! are not listed either.

use std::path::{Path, PathBuf};

use super::access::{EntryType, HostFs};
use super::{HostError, err};
use crate::filter::PathFilter;

/// One selected path, in walk order (parents before children, names sorted).
#[derive(Debug, Clone)]
pub(crate) struct Listed {
    /// Path relative to the scanned root.
    pub rel: PathBuf,
    /// Kind, as the directory entry says.
    pub kind: EntryType,
}

/// Lists the entries of `root` that `filter` selects.
pub(crate) fn list(fs: &dyn HostFs, root: &Path, filter: &PathFilter) -> Result<Vec<Listed>, HostError> {
    let mut out = Vec::new();
    list_dir(fs, root, Path::new(""), filter, &mut out)?;
    Ok(out)
}

/// Appends the selected entries under `rel`; returns whether any was added.
fn list_dir(
    fs: &dyn HostFs,
    root: &Path,
    rel: &Path,
    filter: &PathFilter,
    out: &mut Vec<Listed>,
) -> Result<bool, HostError> {
    let dir = root.join(rel);
    let mut names = fs.list(&dir).map_err(err(&dir))?;
    names.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let mut added = false;
    for (name, kind) in names {
        let child = rel.join(&name);
        if filter.prunes(&child) {
            continue;
        }
        match kind {
            EntryType::Dir => {
                let keeps = filter.keeps(&child);
                if !keeps && !filter.may_include_under(&child) {
                    continue;
                }
                let at = out.len();
                out.push(Listed {
                    rel: child.clone(),
                    kind,
                });
                let inner = list_dir(fs, root, &child, filter, out)?;
                if inner || keeps {
                    added = true;
                } else {
                    out.truncate(at);
                }
            }
            EntryType::File | EntryType::Symlink if filter.keeps(&child) => {
                out.push(Listed { rel: child, kind });
                added = true;
            }
            // Sockets, fifos and devices are not uploaded.
            _ => {}
        }
    }
    Ok(added)
}
