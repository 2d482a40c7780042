//! Layer extraction as root: overlayfs whiteouts and opaque directories,
//! ownership, device nodes, and the real merged view through an overlayfs
//! mount of the applied layers.

mod common;

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use common::{LayerTar, require_root};
use kiln_oci::apply_layer;
use kiln_oci::layer::OPAQUE_XATTR as OPAQUE_XATTR_NAME;

const TAR: &str = "application/vnd.oci.image.layer.v1.tar";

fn base_layer() -> Vec<u8> {
    LayerTar::new()
        .dir("etc", 0o755)
        .file("etc/keep", b"keep", 0o644)
        .file("etc/gone", b"gone", 0o644)
        .dir("var", 0o750)
        .dir("var/cache", 0o700)
        .file("var/cache/old", b"old", 0o644)
        .file("var/cache/old2", b"old2", 0o644)
        .dir("data", 0o755)
        .file("data/x", b"x", 0o644)
        .file_owned("home/user/file", b"mine", 0o600, (1000, 1000))
        .finish()
}

fn upper_layer() -> Vec<u8> {
    LayerTar::new()
        .file("etc/.wh.gone", b"", 0o644)
        // var/cache is only in the lower layer: created here with its mode.
        .file("var/cache/.wh..wh..opq", b"", 0o644)
        .file("var/cache/new", b"new", 0o644)
        .file(".wh.data", b"", 0o644)
        // Whiteout and re-creation in the same layer: the dir must hide the lower one.
        .file(".wh.home", b"", 0o644)
        .dir("home", 0o755)
        .file("home/fresh", b"fresh", 0o644)
        .finish()
}

fn is_whiteout(p: &Path) -> bool {
    let m = fs::symlink_metadata(p).unwrap();
    m.file_type().is_char_device() && m.rdev() == 0
}

/// Applies an uncompressed layer with the default limits.
fn apply(layer: &[u8], target: &Path, lowers: &[PathBuf]) -> kiln_oci::ApplyStats {
    apply_layer(layer, TAR, target, lowers, kiln_oci::ExtractLimits::default()).unwrap()
}

#[test]
fn root_whiteouts_become_overlayfs_whiteouts() {
    if !require_root("root_whiteouts_become_overlayfs_whiteouts") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let (l1, l2) = (t.path().join("l1"), t.path().join("l2"));
    fs::create_dir_all(&l1).unwrap();
    fs::create_dir_all(&l2).unwrap();
    apply(base_layer().as_slice(), &l1, &[]);
    let stats = apply(upper_layer().as_slice(), &l2, std::slice::from_ref(&l1));
    assert_eq!(stats.whiteouts, 3);
    assert_eq!(stats.opaque_dirs, 1);

    assert!(is_whiteout(&l2.join("etc/gone")));
    assert!(is_whiteout(&l2.join("data")));
    assert!(!l2.join("etc/keep").exists());
    // Never extracted as files.
    assert!(fs::symlink_metadata(l2.join("etc/.wh.gone")).is_err());
    assert!(fs::symlink_metadata(l2.join("var/cache/.wh..wh..opq")).is_err());
    // Opaque dir created from the lower's metadata.
    assert_eq!(
        xattr::get(l2.join("var/cache"), OPAQUE_XATTR_NAME).unwrap().as_deref(),
        Some(&b"y"[..])
    );
    let m = fs::metadata(l2.join("var/cache")).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o700);
    assert_eq!(fs::metadata(l2.join("var")).unwrap().mode() & 0o7777, 0o750);
    // Re-created after its whiteout: a dir, opaque.
    assert!(l2.join("home").is_dir());
    assert_eq!(
        xattr::get(l2.join("home"), OPAQUE_XATTR_NAME).unwrap().as_deref(),
        Some(&b"y"[..])
    );
    // Ownership from the base layer.
    let f = fs::metadata(l1.join("home/user/file")).unwrap();
    assert_eq!((f.uid(), f.gid()), (1000, 1000));
}

#[test]
fn root_ownership_and_devices_are_applied() {
    if !require_root("root_ownership_and_devices_are_applied") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let tar = LayerTar::new()
        .file_owned("f", b"x", 0o4750, (123, 456))
        .raw(tar::EntryType::Directory, "d", None, b"", 0o2770, (7, 8))
        .raw(tar::EntryType::Symlink, "l", Some("/nowhere"), b"", 0o777, (9, 10))
        .raw(tar::EntryType::Char, "null", None, b"", 0o666, (0, 0))
        .pax(&[(
            "SCHILY.xattr.security.capability",
            &[1, 0, 0, 2, 0, 32, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        )])
        .file("ping", b"p", 0o755)
        .finish();
    let stats = apply(tar.as_slice(), t.path(), &[]);
    let m = |p: &str| fs::symlink_metadata(t.path().join(p)).unwrap();
    assert_eq!((m("f").uid(), m("f").gid(), m("f").mode() & 0o7777), (123, 456, 0o4750));
    assert_eq!((m("d").uid(), m("d").gid(), m("d").mode() & 0o7777), (7, 8, 0o2770));
    assert_eq!((m("l").uid(), m("l").gid()), (9, 10));
    assert!(m("null").file_type().is_char_device());
    assert_eq!(stats.ownership_skipped, 0);
    assert_eq!(stats.devices, 1);
    assert!(
        xattr::get(t.path().join("ping"), "security.capability")
            .unwrap()
            .is_some()
    );
}

struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = rustix::mount::unmount(&self.0, rustix::mount::UnmountFlags::DETACH);
    }
}

#[test]
fn root_overlay_merged_view_hides_whiteouts() {
    if !require_root("root_overlay_merged_view_hides_whiteouts") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let (l1, l2, mnt) = (t.path().join("l1"), t.path().join("l2"), t.path().join("mnt"));
    for d in [&l1, &l2, &mnt] {
        fs::create_dir_all(d).unwrap();
    }
    apply(base_layer().as_slice(), &l1, &[]);
    apply(upper_layer().as_slice(), &l2, std::slice::from_ref(&l1));

    let opts = format!("lowerdir={}:{}", l2.display(), l1.display());
    let copts = std::ffi::CString::new(opts.clone()).unwrap();
    rustix::mount::mount(
        "overlay",
        &mnt,
        "overlay",
        rustix::mount::MountFlags::RDONLY,
        copts.as_c_str(),
    )
    .unwrap_or_else(|e| panic!("mount overlay {opts}: {e}"));
    let _guard = Mount(mnt.clone());

    let names = |p: &str| {
        let mut v: Vec<String> = fs::read_dir(mnt.join(p))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names("etc"), ["keep"]);
    assert_eq!(fs::read_to_string(mnt.join("etc/keep")).unwrap(), "keep");
    assert!(!mnt.join("etc/gone").exists());
    assert!(!mnt.join("data").exists());
    assert_eq!(names("var/cache"), ["new"]);
    assert_eq!(names("home"), ["fresh"]);
    assert_eq!(names(""), ["etc", "home", "var"]);
}

#[test]
fn root_overlay_upper_dir_diffs_back_into_a_layer() {
    if !require_root("root_overlay_upper_dir_diffs_back_into_a_layer") {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let p = |n: &str| t.path().join(n);
    for d in ["l1", "up", "work", "mnt", "l2", "view"] {
        fs::create_dir_all(p(d)).unwrap();
    }
    apply(base_layer().as_slice(), &p("l1"), &[]);

    // Change the tree through a writable overlay mount.
    let opts = format!(
        "lowerdir={},upperdir={},workdir={},redirect_dir=off,metacopy=off",
        p("l1").display(),
        p("up").display(),
        p("work").display()
    );
    let copts = std::ffi::CString::new(opts.clone()).unwrap();
    rustix::mount::mount(
        "overlay",
        p("mnt"),
        "overlay",
        rustix::mount::MountFlags::empty(),
        copts.as_c_str(),
    )
    .unwrap_or_else(|e| panic!("mount overlay {opts}: {e}"));
    {
        let _guard = Mount(p("mnt"));
        let m = |n: &str| p("mnt").join(n);
        fs::remove_file(m("etc/gone")).unwrap();
        fs::write(m("etc/keep"), "changed").unwrap();
        fs::remove_dir_all(m("var/cache")).unwrap();
        fs::create_dir(m("var/cache")).unwrap();
        fs::write(m("var/cache/new"), "new").unwrap();
        fs::hard_link(m("etc/keep"), m("etc/keep-link")).unwrap();
        std::os::unix::fs::chown(m("home/user/file"), Some(2000), Some(2000)).unwrap();
    }

    let mut blob = Vec::new();
    let stats = kiln_oci::diff_to_layer(&p("up"), kiln_oci::Compression::Gzip, &mut blob).unwrap();
    assert!(stats.whiteouts >= 2, "{stats:?}");
    let mut names = Vec::new();
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(blob.as_slice()));
    for e in archive.entries().unwrap() {
        names.push(e.unwrap().path().unwrap().display().to_string());
    }
    assert!(names.contains(&"etc/.wh.gone".to_string()), "{names:?}");
    assert!(names.contains(&"var/cache/.wh..wh..opq".to_string()), "{names:?}");

    // Applied on top of the base, it gives the same merged view.
    apply_layer(
        blob.as_slice(),
        "application/vnd.oci.image.layer.v1.tar+gzip",
        &p("l2"),
        &[p("l1")],
        kiln_oci::ExtractLimits::default(),
    )
    .unwrap();
    let lower = format!("lowerdir={}:{}", p("l2").display(), p("l1").display());
    let clower = std::ffi::CString::new(lower).unwrap();
    rustix::mount::mount(
        "overlay",
        p("view"),
        "overlay",
        rustix::mount::MountFlags::RDONLY,
        clower.as_c_str(),
    )
    .unwrap();
    let _guard = Mount(p("view"));
    let v = |n: &str| p("view").join(n);
    assert!(!v("etc/gone").exists());
    assert_eq!(fs::read_to_string(v("etc/keep")).unwrap(), "changed");
    assert_eq!(
        fs::metadata(v("etc/keep")).unwrap().ino(),
        fs::metadata(v("etc/keep-link")).unwrap().ino()
    );
    let mut cache: Vec<_> = fs::read_dir(v("var/cache"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    cache.sort();
    assert_eq!(cache, ["new"]);
    assert_eq!(fs::metadata(v("home/user/file")).unwrap().uid(), 2000);
    assert_eq!(fs::read_to_string(v("data/x")).unwrap(), "x");
}
