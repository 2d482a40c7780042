//! Layer extraction without root: normal layers, compression detection, and
//! malicious tarballs that must be refused with nothing written outside the
//! layer directory.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use common::{LayerTar, MTIME, gzip, zstd};
use kiln_oci::{Compression, Error, apply_layer};
use kiln_store::Digest;

const TAR: &str = "application/vnd.oci.image.layer.v1.tar";

/// A temp dir with an empty layer directory at `l/target` and bait files
/// around it that no layer may touch.
struct Sandbox {
    dir: tempfile::TempDir,
    target: PathBuf,
    outside: PathBuf,
}

impl Sandbox {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("l/target");
        fs::create_dir_all(&target).unwrap();
        let outside = dir.path().join("outside");
        fs::create_dir_all(&outside).unwrap();
        fs::write(outside.join("passwd"), "original").unwrap();
        fs::create_dir_all(dir.path().join("etc")).unwrap();
        fs::write(dir.path().join("etc/passwd"), "original").unwrap();
        fs::write(dir.path().join("l/x"), "original").unwrap();
        Self { dir, target, outside }
    }

    /// Everything outside the layer directory: path → (kind, content).
    fn outside_state(&self) -> BTreeMap<PathBuf, String> {
        fn walk(p: &Path, skip: &Path, out: &mut BTreeMap<PathBuf, String>) {
            for e in fs::read_dir(p).unwrap() {
                let path = e.unwrap().path();
                if path == skip {
                    continue;
                }
                let m = fs::symlink_metadata(&path).unwrap();
                let v = if m.is_dir() {
                    walk(&path, skip, out);
                    format!("dir {:o}", m.mode())
                } else if m.is_file() {
                    format!("file {:o} {}", m.mode(), fs::read_to_string(&path).unwrap())
                } else {
                    format!("other {:o}", m.mode())
                };
                out.insert(path, v);
            }
        }
        let mut out = BTreeMap::new();
        walk(self.dir.path(), &self.target, &mut out);
        out
    }

    fn apply(&self, tar: &[u8]) -> kiln_oci::Result<kiln_oci::ApplyStats> {
        apply_layer(tar, TAR, &self.target, &[], kiln_oci::ExtractLimits::default())
    }

    /// Applies `tar`, expects a refusal naming `entry`, and checks nothing
    /// outside the layer changed.
    fn assert_refused(&self, tar: &[u8], entry: &str) -> String {
        let before = self.outside_state();
        let err = self.apply(tar).expect_err("a malicious layer must be refused");
        let msg = err.to_string();
        match &err {
            Error::UnsafeEntry { entry: e, layer, .. } => {
                assert_eq!(e, entry, "{msg}");
                assert_eq!(layer, &self.target.display().to_string());
            }
            other => panic!("expected UnsafeEntry for {entry}, got {other:?}"),
        }
        assert!(msg.contains("refusing to extract"), "{msg}");
        assert!(msg.contains(entry), "{msg}");
        assert_eq!(before, self.outside_state(), "something outside the layer changed");
        msg
    }
}

#[test]
fn refuses_dotdot_paths() {
    for name in ["../../etc/passwd", "a/../../../etc/passwd", "/../etc/passwd", "./../x"] {
        let s = Sandbox::new();
        let tar = LayerTar::new()
            .file("ok", b"fine", 0o644)
            .file(name, b"pwned", 0o644)
            .finish();
        let msg = s.assert_refused(&tar, name);
        assert!(msg.contains("`..`"), "{msg}");
        assert_eq!(fs::read_to_string(s.dir.path().join("etc/passwd")).unwrap(), "original");
    }
}

#[test]
fn refuses_writing_through_an_absolute_symlink() {
    let s = Sandbox::new();
    let tar = LayerTar::new()
        .symlink("evil", s.outside.to_str().unwrap())
        .file("evil/passwd", b"pwned", 0o644)
        .finish();
    let msg = s.assert_refused(&tar, "evil/passwd");
    assert!(msg.contains("symlink"), "{msg}");
    assert_eq!(fs::read_to_string(s.outside.join("passwd")).unwrap(), "original");

    // The classic: evil -> /etc, then evil/<file>. Uses a fresh name so that a
    // bug would only leave a stray file, never clobber the host.
    let s = Sandbox::new();
    let probe = format!("kiln-oci-test-{}", std::process::id());
    let tar = LayerTar::new()
        .symlink("evil", "/etc")
        .file(&format!("evil/{probe}"), b"pwned", 0o644)
        .finish();
    s.assert_refused(&tar, &format!("evil/{probe}"));
    assert!(!Path::new("/etc").join(&probe).exists());
    // The symlink itself was created as is: absolute targets are fine.
    assert_eq!(fs::read_link(s.target.join("evil")).unwrap(), Path::new("/etc"));
}

#[test]
fn refuses_writing_through_a_relative_symlink() {
    let s = Sandbox::new();
    let tar = LayerTar::new()
        .symlink("evil", "../..")
        .file("evil/x", b"pwned", 0o644)
        .finish();
    s.assert_refused(&tar, "evil/x");
    assert_eq!(fs::read_to_string(s.dir.path().join("l/x")).unwrap(), "original");

    let s = Sandbox::new();
    let tar = LayerTar::new()
        .symlink("evil", "../../outside")
        .dir("evil/sub", 0o755)
        .finish();
    s.assert_refused(&tar, "evil/sub");
    assert!(!s.outside.join("sub").exists());
}

#[test]
fn refuses_hardlinks_that_leave_the_layer() {
    let cases: &[(&str, &str)] = &[
        ("/etc/shadow", "not in this layer"),
        ("../x", "`..`"),
        ("../../outside/passwd", "`..`"),
        ("missing", "not in this layer"),
        ("evil/passwd", "not a directory"),
        ("dir", "is a directory"),
        ("h", "itself"),
    ];
    for (target, why) in cases {
        let s = Sandbox::new();
        let tar = LayerTar::new()
            .symlink("evil", s.outside.to_str().unwrap())
            .dir("dir", 0o755)
            .hardlink("h", target)
            .finish();
        let msg = s.assert_refused(&tar, "h");
        assert!(msg.contains(why), "{target}: {msg}");
        assert!(
            fs::symlink_metadata(s.target.join("h")).is_err(),
            "{target}: the link was made"
        );
        assert_eq!(fs::metadata(s.outside.join("passwd")).unwrap().nlink(), 1);
    }
}

#[test]
fn refuses_a_path_through_a_symlink_that_replaced_a_dir() {
    let s = Sandbox::new();
    let tar = LayerTar::new()
        .dir("a", 0o755)
        .file("a/first", b"ok", 0o644)
        .symlink("a", s.outside.to_str().unwrap())
        .file("a/b", b"pwned", 0o644)
        .finish();
    s.assert_refused(&tar, "a/b");
    assert!(!s.outside.join("b").exists());
    // The symlink replaced the directory (and what was in it).
    assert!(
        fs::symlink_metadata(s.target.join("a"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
}

#[test]
fn refuses_whiteout_and_root_tricks() {
    let s = Sandbox::new();
    s.assert_refused(&LayerTar::new().file(".wh.x/y", b"", 0o644).finish(), ".wh.x/y");
    let s = Sandbox::new();
    s.assert_refused(&LayerTar::new().file(".wh...", b"", 0o644).finish(), ".wh...");
    let s = Sandbox::new();
    let tar = LayerTar::new()
        .symlink("evil", s.outside.to_str().unwrap())
        .file("evil/.wh..wh..opq", b"", 0o644)
        .finish();
    s.assert_refused(&tar, "evil/.wh..wh..opq");
    let s = Sandbox::new();
    let tar = LayerTar::new()
        .symlink("evil", s.outside.to_str().unwrap())
        .file("evil/.wh.passwd", b"", 0o644)
        .finish();
    s.assert_refused(&tar, "evil/.wh.passwd");
    assert_eq!(fs::read_to_string(s.outside.join("passwd")).unwrap(), "original");
    let s = Sandbox::new();
    s.assert_refused(&LayerTar::new().symlink("./", "/etc").finish(), "./");
    let s = Sandbox::new();
    s.assert_refused(&LayerTar::new().file("/", b"x", 0o644).finish(), "/");
    let s = Sandbox::new();
    let tar = LayerTar::new().file("f", b"x", 0o644).file("f/g", b"x", 0o644).finish();
    let msg = s.assert_refused(&tar, "f/g");
    assert!(msg.contains("not a directory"), "{msg}");
}

fn normal_layer() -> Vec<u8> {
    LayerTar::new()
        .dir("./", 0o755)
        .dir("bin", 0o755)
        .file("bin/tool", b"#!/bin/sh\necho hi\n", 0o755)
        .file("bin/suid", b"s", 0o4755)
        .hardlink("bin/tool-link", "bin/tool")
        .symlink("bin/sh", "/bin/tool")
        .symlink("rel", "bin/tool")
        .dir("tmp", 0o1777)
        .dir("secret", 0o700)
        .file("secret/key", b"k", 0o600)
        .dir("ro", 0o555)
        .file("ro/f", b"read-only dir content", 0o444)
        .file("replaced", b"one", 0o644)
        .file("replaced", b"two", 0o600)
        .file("was-file", b"x", 0o644)
        .dir("was-file", 0o750)
        .dir("was-dir", 0o755)
        .file("was-dir/inner", b"gone", 0o644)
        .file("was-dir", b"now a file", 0o644)
        .dir("merged", 0o700)
        .file("merged/a", b"a", 0o644)
        .dir("merged", 0o750)
        .file("merged/b", b"b", 0o644)
        .file("deep/implicit/file", b"parents made up", 0o644)
        .file("from-lower/child", b"c", 0o644)
        .raw(tar::EntryType::Fifo, "fifo", None, b"", 0o640, (0, 0))
        .file_owned("owned", b"o", 0o640, (1234, 5678))
        .finish()
}

#[test]
fn applies_a_normal_layer() {
    let s = Sandbox::new();
    let lower = s.dir.path().join("lower");
    fs::create_dir_all(lower.join("from-lower")).unwrap();
    fs::set_permissions(lower.join("from-lower"), fs::Permissions::from_mode(0o710)).unwrap();
    let tar = normal_layer();
    let stats = apply_layer(
        tar.as_slice(),
        TAR,
        &s.target,
        &[lower],
        kiln_oci::ExtractLimits::default(),
    )
    .unwrap();
    let t = |p: &str| s.target.join(p);
    let mode = |p: &str| fs::symlink_metadata(t(p)).unwrap().mode() & 0o7777;
    let mtime = |p: &str| fs::symlink_metadata(t(p)).unwrap().mtime() as u64;

    assert_eq!(fs::read_to_string(t("bin/tool")).unwrap(), "#!/bin/sh\necho hi\n");
    assert_eq!(mode("bin/tool"), 0o755);
    assert_eq!(mode("bin/suid"), 0o4755);
    assert_eq!(mode("tmp"), 0o1777);
    assert_eq!(mode("secret"), 0o700);
    assert_eq!(mode("ro"), 0o555);
    assert_eq!(fs::read_to_string(t("ro/f")).unwrap(), "read-only dir content");
    assert_eq!(
        fs::metadata(t("bin/tool")).unwrap().ino(),
        fs::metadata(t("bin/tool-link")).unwrap().ino()
    );
    assert_eq!(fs::metadata(t("bin/tool")).unwrap().nlink(), 2);
    assert_eq!(fs::read_link(t("bin/sh")).unwrap(), Path::new("/bin/tool"));
    assert_eq!(fs::read_link(t("rel")).unwrap(), Path::new("bin/tool"));
    assert_eq!(fs::read_to_string(t("replaced")).unwrap(), "two");
    assert_eq!(mode("replaced"), 0o600);
    assert!(t("was-file").is_dir());
    assert_eq!(mode("was-file"), 0o750);
    assert_eq!(fs::read_to_string(t("was-dir")).unwrap(), "now a file");
    assert_eq!(fs::read_to_string(t("merged/a")).unwrap(), "a");
    assert_eq!(fs::read_to_string(t("merged/b")).unwrap(), "b");
    assert_eq!(mode("merged"), 0o750);
    assert_eq!(mode("deep"), 0o755);
    assert_eq!(mode("deep/implicit"), 0o755);
    assert_eq!(mode("from-lower"), 0o710, "a missing parent takes the lower dir's mode");
    assert!(fs::symlink_metadata(t("fifo")).unwrap().file_type().is_fifo());
    assert_eq!(mode("fifo"), 0o640);

    for p in [
        "bin/tool", "bin", "secret", "ro", "merged", "bin/sh", "rel", "fifo", "tmp",
    ] {
        assert_eq!(mtime(p), MTIME, "mtime of {p}");
    }
    let owned = fs::metadata(t("owned")).unwrap();
    if rustix::process::geteuid().is_root() {
        assert_eq!((owned.uid(), owned.gid()), (1234, 5678));
        assert_eq!(stats.ownership_skipped, 0);
    } else {
        assert!(stats.ownership_skipped > 0);
    }

    assert_eq!(stats.diff_id, Some(Digest::of(&tar)));
    assert_eq!(stats.compression, Some(Compression::None));
    assert_eq!(stats.hardlinks, 1);
    assert_eq!(stats.symlinks, 2);
    assert_eq!(stats.devices, 1);
    assert_eq!(stats.implicit_dirs, 3);
    assert_eq!(stats.dirs, 9);
    assert_eq!(stats.files, 14);
    assert_eq!(stats.whiteouts, 0);
}

#[test]
fn detects_gzip_zstd_and_plain_layers() {
    let tar = LayerTar::new()
        .dir("d", 0o755)
        .file("d/f", b"same content", 0o644)
        .finish();
    let variants: Vec<(Vec<u8>, &str, Compression)> = vec![
        (tar.clone(), TAR, Compression::None),
        (
            gzip(&tar),
            "application/vnd.oci.image.layer.v1.tar+gzip",
            Compression::Gzip,
        ),
        (
            gzip(&tar),
            "application/vnd.docker.image.rootfs.diff.tar.gzip",
            Compression::Gzip,
        ),
        (
            zstd(&tar),
            "application/vnd.oci.image.layer.v1.tar+zstd",
            Compression::Zstd,
        ),
        (gzip(&tar), "application/octet-stream", Compression::Gzip),
        (zstd(&tar), "", Compression::Zstd),
        (tar.clone(), "application/octet-stream", Compression::None),
        (gzip(&tar), TAR, Compression::Gzip),
    ];
    for (bytes, media_type, expected) in variants {
        let dir = tempfile::tempdir().unwrap();
        let stats = apply_layer(
            bytes.as_slice(),
            media_type,
            dir.path(),
            &[],
            kiln_oci::ExtractLimits::default(),
        )
        .unwrap();
        assert_eq!(stats.compression, Some(expected), "{media_type}");
        assert_eq!(stats.diff_id, Some(Digest::of(&tar)), "{media_type}");
        assert_eq!(fs::read_to_string(dir.path().join("d/f")).unwrap(), "same content");
    }
}

#[test]
fn reports_corrupt_streams_with_the_layer() {
    let dir = tempfile::tempdir().unwrap();
    let tar = LayerTar::new().file("f", &[7u8; 100_000], 0o644).finish();
    let mut gz = gzip(&tar);
    let n = gz.len();
    gz.truncate(n / 2);
    let err = apply_layer(
        gz.as_slice(),
        "application/vnd.oci.image.layer.v1.tar+gzip",
        dir.path(),
        &[],
        kiln_oci::ExtractLimits::default(),
    )
    .unwrap_err();
    assert!(matches!(err, Error::Layer { .. } | Error::Extract { .. }), "{err:?}");
    assert!(err.to_string().contains(&dir.path().display().to_string()), "{err}");
}

#[test]
fn skips_trusted_xattrs_and_applies_user_ones() {
    let dir = tempfile::tempdir().unwrap();
    let tar = LayerTar::new()
        .pax(&[
            ("SCHILY.xattr.user.kiln", b"yes"),
            ("SCHILY.xattr.trusted.overlay.redirect", b"/etc"),
        ])
        .file("f", b"x", 0o644)
        .pax(&[("mtime", b"1700000000.25")])
        .file("g", b"x", 0o644)
        .finish();
    let stats = apply_layer(tar.as_slice(), TAR, dir.path(), &[], kiln_oci::ExtractLimits::default()).unwrap();
    assert!(stats.xattrs_skipped >= 1);
    let f = dir.path().join("f");
    if let Ok(Some(v)) = xattr::get(&f, "user.kiln") {
        assert_eq!(v, b"yes");
    }
    assert_eq!(xattr::get(&f, "trusted.overlay.redirect").ok().flatten(), None);
    let g = fs::metadata(dir.path().join("g")).unwrap();
    assert_eq!((g.mtime(), g.mtime_nsec()), (1_700_000_000, 250_000_000));
}
