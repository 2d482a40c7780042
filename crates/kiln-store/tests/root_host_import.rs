//! Host uploads into snapshots: the first one whole, later ones as a layer
//! holding only what changed (root: the import makes files owned by root
//! and whiteouts are device nodes).

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use kiln_store::{MergedView, PathFilter, SnapshotId, Store};

fn write(path: &Path, content: &str) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, content).unwrap();
}

/// What a tree holds: (path, mode, kind and content), sorted.
fn listing_of_view(view: &MergedView) -> Vec<(PathBuf, u32, String)> {
    let mut out = Vec::new();
    view.walk("/", &mut |rel, e| {
        let kind = if e.meta.is_dir() {
            "dir".to_string()
        } else if e.meta.file_type().is_symlink() {
            format!("link {}", fs::read_link(&e.real)?.display())
        } else {
            format!("file {}", fs::read_to_string(&e.real)?)
        };
        assert_eq!(
            (e.meta.uid(), e.meta.gid()),
            (0, 0),
            "{} is owned by root",
            rel.display()
        );
        out.push((rel.to_path_buf(), e.meta.mode() & 0o7777, kind));
        Ok(true)
    })
    .unwrap();
    out
}

fn listing_of_host(root: &Path, filter: &PathFilter) -> Vec<(PathBuf, u32, String)> {
    kiln_store::host::scan(root, filter)
        .unwrap()
        .entries
        .iter()
        .map(|e| {
            let path = root.join(&e.rel);
            let kind = match &e.kind {
                kiln_store::host::HostKind::Dir => "dir".to_string(),
                kiln_store::host::HostKind::Symlink(t) => format!("link {}", t.display()),
                kiln_store::host::HostKind::File(_) => format!("file {}", fs::read_to_string(path).unwrap()),
            };
            (e.rel.clone(), e.mode, kind)
        })
        .collect()
}

/// Scans and imports `root`, commits the layer; returns it.
fn upload(store: &Store, root: &Path, filter: &PathFilter) -> SnapshotId {
    let tree = store.scan_host(root, filter).unwrap();
    let staged = store.import_host(&tree).unwrap();
    let id = staged.id();
    store.commit(vec![staged], None).unwrap();
    id
}

/// Regular files and whiteouts in one layer directory.
fn layer_entries(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for item in fs::read_dir(&d).unwrap() {
            let item = item.unwrap();
            if item.file_type().unwrap().is_dir() {
                pending.push(item.path());
            } else {
                out.push(item.path().strip_prefix(dir).unwrap().to_path_buf());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn root_later_uploads_write_only_what_changed() {
    if !kiln_testkit::require_root() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let store = Store::open(t.path().join("state")).unwrap();
    let src = t.path().join("src");
    for f in 0..20 {
        write(&src.join(format!("lib/f{f}.txt")), &format!("file {f}"));
    }
    write(&src.join("gone/a.txt"), "a");
    write(&src.join("gone/deep/b.txt"), "b");
    write(&src.join("becomes_dir"), "a file first");
    write(&src.join("skip/me.txt"), "excluded");
    write(&src.join("readme"), "v1");
    symlink("readme", src.join("link")).unwrap();
    let filter = PathFilter::new(&[], &["skip".into()]).unwrap();

    let first = upload(&store, &src, &filter);
    assert_eq!(store.record(first).unwrap().parent, None);
    assert_eq!(
        listing_of_view(&store.view(Some(first)).unwrap()),
        listing_of_host(&src, &filter)
    );

    write(&src.join("readme"), "v2");
    fs::remove_file(src.join("lib/f3.txt")).unwrap();
    fs::remove_dir_all(src.join("gone")).unwrap();
    fs::remove_file(src.join("becomes_dir")).unwrap();
    write(&src.join("becomes_dir/inner.txt"), "now a directory");
    write(&src.join("new/file.txt"), "new");
    fs::set_permissions(src.join("lib"), fs::Permissions::from_mode(0o700)).unwrap();
    fs::remove_file(src.join("link")).unwrap();
    symlink("lib", src.join("link")).unwrap();
    write(&src.join("skip/other.txt"), "still excluded");

    let second = upload(&store, &src, &filter);
    assert_eq!(store.record(second).unwrap().parent, Some(first));
    assert_eq!(
        listing_of_view(&store.view(Some(second)).unwrap()),
        listing_of_host(&src, &filter)
    );
    // The layer holds the changes only: whiteouts for the removed file and
    // directory, the rewritten, new and replaced entries.
    let expected: Vec<PathBuf> = [
        "becomes_dir/inner.txt",
        "gone",
        "lib/f3.txt",
        "link",
        "new/file.txt",
        "readme",
    ]
    .iter()
    .map(PathBuf::from)
    .collect();
    assert_eq!(layer_entries(&store.layer_dir(second)), expected);

    // The same selection again (its record lost): an empty layer on top.
    let tree = store.scan_host(&src, &filter).unwrap();
    let staged = store.import_host(&tree).unwrap();
    assert_eq!(staged.parent(), Some(second));
    assert!(layer_entries(&staged.diff()).is_empty());
}
