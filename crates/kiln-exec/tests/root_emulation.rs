//! Root only: kiln registers a qemu-user-static binfmt_misc handler with the
//! fix-binary flag when the kernel has none for a foreign architecture.
//! (The SDK suite's test_platforms.py runs arm64 containers through it.)

use std::fs;
use std::path::Path;
use std::process::Command;

const BINFMT: &str = "/proc/sys/fs/binfmt_misc";

#[test]
fn root_emulation_registers_a_handler_when_none_is_there() {
    if !kiln_testkit::require_root() {
        return;
    }
    let (arch, qemu) = if std::env::consts::ARCH == "aarch64" {
        ("amd64", "x86_64")
    } else {
        ("arm64", "aarch64")
    };
    let handler = Path::new(BINFMT).join(format!("qemu-{qemu}"));
    // Whatever handler a previous run (or the distribution) left goes first.
    if handler.exists() {
        fs::write(&handler, "-1").unwrap();
    }
    assert!(!handler.exists());

    kiln_exec::emulation::ensure(arch).unwrap();

    let text = fs::read_to_string(&handler).unwrap();
    assert!(text.starts_with("enabled\n"), "{text}");
    assert!(
        text.contains(&format!("interpreter /usr/bin/qemu-{qemu}-static\n")),
        "{text}"
    );
    let flags = text.lines().find_map(|l| l.strip_prefix("flags: ")).unwrap();
    assert!(flags.contains('F'), "{text}");
    // The kernel runs a foreign binary through it: qemu's own, asked for
    // its version, would not tell; a static binary of the architecture does.
    let busybox = foreign_busybox();
    let out = Command::new(&busybox).args(["uname", "-m"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), format!("{qemu}\n"));
    // Asked again: kept, not registered twice.
    kiln_exec::emulation::ensure(arch).unwrap();
    assert_eq!(fs::read_to_string(&handler).unwrap(), text);
}

/// The foreign busybox binary of the multiplatform fixture, extracted into
/// a temporary directory (kept for the test's life).
fn foreign_busybox() -> std::path::PathBuf {
    let layout = kiln_testkit::multiplatform_layout();
    let blob = |digest: &str| layout.join("blobs/sha256").join(digest.trim_start_matches("sha256:"));
    let json =
        |digest: &str| -> serde_json::Value { serde_json::from_slice(&fs::read(blob(digest)).unwrap()).unwrap() };
    let index = json(kiln_testkit::layout_digest(&layout).as_str());
    let host = kiln_testkit::layout_digest(&kiln_testkit::busybox_layout());
    let foreign = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["digest"] != host.as_str())
        .unwrap();
    let manifest = json(foreign["digest"].as_str().unwrap());
    let layer = blob(manifest["layers"][0]["digest"].as_str().unwrap());
    let dir = tempfile::tempdir().unwrap().keep();
    let status = Command::new("tar")
        .arg("-xzf")
        .arg(&layer)
        .arg("-C")
        .arg(&dir)
        .arg("bin/busybox")
        .status()
        .unwrap();
    assert!(status.success());
    dir.join("bin/busybox")
}
