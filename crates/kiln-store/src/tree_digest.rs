//! Content digests of trees: what a path of a tree holds (names, kinds,
//! permission bits, owners, file bytes, link targets), independent of where
//! or when it was built. Used for `Directory.digest`/`File.digest` and to
//! key operations that read only part of a tree.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use sha2::{Digest as _, Sha256};

use crate::Digest;
use crate::merged::{Entry, MergedView};

fn entry_bytes(h: &mut Sha256, rel: &[u8], e: &Entry) -> io::Result<()> {
    let m = &e.meta;
    let ft = m.file_type();
    h.update((rel.len() as u64).to_le_bytes());
    h.update(rel);
    h.update((m.mode() & 0o7777).to_le_bytes());
    h.update(m.uid().to_le_bytes());
    h.update(m.gid().to_le_bytes());
    if ft.is_dir() {
        h.update(b"d");
    } else if ft.is_file() {
        let mut fh = Sha256::new();
        io::copy(&mut File::open(&e.real)?, &mut fh)?;
        h.update(b"f");
        h.update(m.len().to_le_bytes());
        h.update(fh.finalize());
    } else if ft.is_symlink() {
        let t = std::fs::read_link(&e.real)?;
        let t = t.as_os_str().as_encoded_bytes();
        h.update(b"l");
        h.update((t.len() as u64).to_le_bytes());
        h.update(t);
    } else {
        let kind: &[u8] = if ft.is_char_device() {
            b"c"
        } else if ft.is_block_device() {
            b"b"
        } else {
            b"p"
        };
        h.update(kind);
        h.update(m.rdev().to_le_bytes());
    }
    Ok(())
}

/// The digest of what `path` holds in `view` (symlinks on the way are
/// followed inside the tree), or `None` when there is nothing there.
pub fn tree_digest(view: &MergedView, path: impl AsRef<Path>) -> io::Result<Option<Digest>> {
    let rel = view.resolve(path, true)?;
    let root = match view.lookup(&rel)? {
        Some(e) => e,
        None if rel.as_os_str().is_empty() => {
            // The root of an empty tree: an empty directory.
            return Ok(Some(Digest::from_bytes(Sha256::digest(b"kiln/tree/v1 empty").into())));
        }
        None => return Ok(None),
    };
    let mut h = Sha256::new();
    h.update(b"kiln/tree/v1");
    if !root.is_dir() {
        entry_bytes(&mut h, b"", &root)?;
        return Ok(Some(Digest::from_bytes(h.finalize().into())));
    }
    view.walk(&rel, &mut |sub, e| {
        entry_bytes(&mut h, sub.as_os_str().as_encoded_bytes(), e)?;
        Ok(true)
    })?;
    Ok(Some(Digest::from_bytes(h.finalize().into())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn digests_follow_content_and_ignore_place_and_time() {
        let t = tempfile::tempdir().unwrap();
        let (a, b) = (t.path().join("a"), t.path().join("b"));
        for root in [&a, &b] {
            fs::create_dir_all(root.join("src/sub")).unwrap();
            fs::write(root.join("src/sub/x.txt"), "x").unwrap();
            fs::write(root.join("src/y.txt"), "y").unwrap();
            fs::write(root.join("other.txt"), "o").unwrap();
        }
        fs::write(b.join("other.txt"), "changed elsewhere").unwrap();
        let (va, vb) = (MergedView::new(vec![a.clone()]), MergedView::new(vec![b.clone()]));
        let da = tree_digest(&va, "/src").unwrap().unwrap();
        assert_eq!(
            da,
            tree_digest(&vb, "src").unwrap().unwrap(),
            "same content, other tree"
        );
        assert_ne!(tree_digest(&va, "/").unwrap(), tree_digest(&vb, "/").unwrap());
        assert_eq!(
            tree_digest(&va, "/src/y.txt").unwrap(),
            tree_digest(&vb, "/src/y.txt").unwrap()
        );
        fs::write(b.join("src/sub/x.txt"), "X").unwrap();
        assert_ne!(da, tree_digest(&vb, "/src").unwrap().unwrap());
        assert!(tree_digest(&va, "/missing").unwrap().is_none());
        assert!(tree_digest(&MergedView::new(vec![]), "/").unwrap().is_some());
    }
}
