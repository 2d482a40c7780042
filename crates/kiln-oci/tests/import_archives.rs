//! Imports from hand-made OCI layouts, OCI archives and docker-archives (no
//! root, no registry): tag selection, nested indexes, verification of every
//! blob, docker-archive symlinked layers, and the errors.

mod common;

use std::fs;
use std::path::Path;

use common::{LayerTar, gzip};
use kiln_oci::{Failure, Platform, import_archive, import_oci_layout};
use kiln_store::{BlobStore, Digest};
use serde_json::json;

fn new_store() -> (tempfile::TempDir, BlobStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path().join("blobs"), dir.path().join("tmp")).unwrap();
    (dir, store)
}

/// An image's parts: uncompressed layer tar, config JSON.
struct Parts {
    tar: Vec<u8>,
    config: Vec<u8>,
}

fn parts(content: &str, arch: &str) -> Parts {
    let tar = LayerTar::new().file("hello", content.as_bytes(), 0o644).finish();
    let config = serde_json::to_vec(&json!({
        "architecture": arch, "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [Digest::of(&tar).to_string()]}
    }))
    .unwrap();
    Parts { tar, config }
}

fn put(layout: &Path, bytes: &[u8]) -> Digest {
    let d = Digest::of(bytes);
    fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
    fs::write(layout.join("blobs/sha256").join(d.hex()), bytes).unwrap();
    d
}

/// Writes an image (gzip layer) into the layout; returns (manifest digest, size).
fn add_image(layout: &Path, p: &Parts) -> (Digest, usize) {
    let layer = gzip(&p.tar);
    let ld = put(layout, &layer);
    let cd = put(layout, &p.config);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd.to_string(), "size": p.config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": ld.to_string(), "size": layer.len()}]
    }))
    .unwrap();
    (put(layout, &manifest), manifest.len())
}

fn write_index(layout: &Path, entries: serde_json::Value) {
    fs::write(layout.join("oci-layout"), r#"{"imageLayoutVersion": "1.0.0"}"#).unwrap();
    let index =
        json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": entries});
    fs::write(layout.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
}

fn manifest_entry(d: Digest, size: usize, name: &str) -> serde_json::Value {
    json!({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": d.to_string(), "size": size,
           "annotations": {"org.opencontainers.image.ref.name": name}})
}

/// A tar of a directory tree (paths relative to it), as an OCI archive is.
fn tar_dir(dir: &Path, out: &Path) {
    let mut b = tar::Builder::new(fs::File::create(out).unwrap());
    b.append_dir_all(".", dir).unwrap();
    b.finish().unwrap();
}

#[test]
fn layouts_choose_by_tag_and_follow_nested_indexes() {
    let t = tempfile::tempdir().unwrap();
    let layout = t.path().join("layout");
    let host = Platform::host();
    let one = parts("one", &host.architecture);
    let two = parts("two", &host.architecture);
    let wrong = parts("wrong", "s390x");
    let (d1, s1) = add_image(&layout, &one);
    let (d2, s2) = add_image(&layout, &two);
    let (dw, sw) = add_image(&layout, &wrong);
    // A nested index for tag "multi": the s390x image first, then `two`.
    let inner = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": dw.to_string(), "size": sw,
             "platform": {"os": "linux", "architecture": "s390x"}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": d2.to_string(), "size": s2,
             "platform": {"os": host.os, "architecture": host.architecture}}
        ]
    }))
    .unwrap();
    let di = put(&layout, &inner);
    write_index(
        &layout,
        json!([
            manifest_entry(d1, s1, "one"),
            {"mediaType": "application/vnd.oci.image.index.v1+json", "digest": di.to_string(), "size": inner.len(),
             "annotations": {"org.opencontainers.image.ref.name": "multi",
                             "io.containerd.image.name": "example.com/app:multi"}}
        ]),
    );

    let (_d, store) = new_store();
    let img = import_oci_layout(&layout, Some("one"), &host, &store).unwrap();
    assert_eq!(img.manifest_digest, d1);
    assert_eq!(img.diff_ids(), [Digest::of(&one.tar)]);
    assert!(img.reference.is_none());
    for l in &img.layers {
        assert!(store.contains(&l.digest));
    }

    let img = import_oci_layout(&layout, Some("multi"), &host, &store).unwrap();
    assert_eq!(img.manifest_digest, d2, "the host platform, not s390x");
    assert_eq!(img.index_digest, Some(di));
    assert_eq!(img.reference.unwrap().to_string(), "example.com/app:multi");
    let by_full_name = import_oci_layout(&layout, Some("example.com/app:multi"), &host, &store).unwrap();
    assert_eq!(by_full_name.manifest_digest, d2);

    let s390x = import_oci_layout(&layout, Some("multi"), &Platform::parse("linux/s390x").unwrap(), &store).unwrap();
    assert_eq!(s390x.manifest_digest, dw);

    let err = import_oci_layout(&layout, None, &host, &store).unwrap_err();
    assert!(
        matches!(err.failure(), Some(Failure::Ambiguous { count: 2, .. })),
        "{err}"
    );
    assert!(err.to_string().contains("one, multi"), "{err}");
    let err = import_oci_layout(&layout, Some("three"), &host, &store).unwrap_err();
    assert!(matches!(err.failure(), Some(Failure::TagNotFound { .. })), "{err}");

    // The same layout as an OCI archive.
    let archive = t.path().join("layout.tar");
    tar_dir(&layout, &archive);
    let (_d2, store2) = new_store();
    let from_archive = import_archive(&archive, Some("multi"), &host, &store2).unwrap();
    assert_eq!(from_archive.manifest_digest, d2);
    assert_eq!(from_archive.diff_ids(), [Digest::of(&two.tar)]);
}

#[test]
fn tampered_blobs_are_refused() {
    let t = tempfile::tempdir().unwrap();
    let layout = t.path().join("layout");
    let host = Platform::host();
    let p = parts("x", &host.architecture);
    let (d, s) = add_image(&layout, &p);
    write_index(&layout, json!([manifest_entry(d, s, "latest")]));
    // Corrupt the layer blob in place (same size).
    let layer_digest = Digest::of(&gzip(&p.tar));
    let path = layout.join("blobs/sha256").join(layer_digest.hex());
    let mut bytes = fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    fs::write(&path, &bytes).unwrap();

    let (_d, store) = new_store();
    let err = import_oci_layout(&layout, None, &host, &store).unwrap_err();
    assert!(matches!(err.failure(), Some(Failure::DigestMismatch { .. })), "{err}");
    assert!(!store.contains(&layer_digest));
    assert!(err.to_string().contains(&layout.display().to_string()), "{err}");

    // A missing blob.
    fs::remove_file(&path).unwrap();
    let err = import_oci_layout(&layout, None, &host, &store).unwrap_err();
    assert!(matches!(err.failure(), Some(Failure::BlobUnknown(_))), "{err}");
}

#[test]
fn docker_archives_with_symlinked_layers_and_repo_tags() {
    let t = tempfile::tempdir().unwrap();
    let host = Platform::host();
    let p = parts("docker", &host.architecture);
    let p2 = {
        // A second image sharing the base layer, plus one of its own.
        let extra = LayerTar::new().file("extra", b"more", 0o644).finish();
        let config = serde_json::to_vec(&json!({
            "architecture": host.architecture, "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [Digest::of(&p.tar).to_string(), Digest::of(&extra).to_string()]}
        }))
        .unwrap();
        (extra, config)
    };
    let dir = t.path().join("save");
    fs::create_dir_all(dir.join("aaa")).unwrap();
    fs::create_dir_all(dir.join("bbb")).unwrap();
    fs::create_dir_all(dir.join("ccc")).unwrap();
    fs::write(dir.join("aaa/layer.tar"), &p.tar).unwrap();
    std::os::unix::fs::symlink("../aaa/layer.tar", dir.join("bbb/layer.tar")).unwrap();
    fs::write(dir.join("ccc/layer.tar"), &p2.0).unwrap();
    fs::write(dir.join("img1.json"), &p.config).unwrap();
    fs::write(dir.join("img2.json"), &p2.1).unwrap();
    let manifest = json!([
        {"Config": "img1.json", "RepoTags": ["busybox:latest"], "Layers": ["aaa/layer.tar"]},
        {"Config": "img2.json", "RepoTags": ["example.com/app:v2"], "Layers": ["bbb/layer.tar", "ccc/layer.tar"]}
    ]);
    fs::write(dir.join("manifest.json"), serde_json::to_vec(&manifest).unwrap()).unwrap();
    let archive = t.path().join("docker.tar");
    {
        let mut b = tar::Builder::new(fs::File::create(&archive).unwrap());
        b.follow_symlinks(false);
        b.append_dir_all(".", &dir).unwrap();
        b.finish().unwrap();
    }

    let (_d, store) = new_store();
    let one = import_archive(&archive, Some("busybox"), &host, &store).unwrap();
    assert_eq!(
        one.reference.as_ref().unwrap().to_string(),
        "docker.io/library/busybox:latest"
    );
    assert_eq!(one.diff_ids(), [Digest::of(&p.tar)]);
    assert_eq!(one.layers[0].digest, Digest::of(&p.tar));
    assert_eq!(one.config_digest, Digest::of(&p.config));

    let two = import_archive(&archive, Some("example.com/app:v2"), &host, &store).unwrap();
    assert_eq!(two.diff_ids(), [Digest::of(&p.tar), Digest::of(&p2.0)]);
    // The synthesised manifest is stored and deterministic.
    assert!(store.contains(&two.manifest_digest));
    let again = import_archive(&archive, Some("example.com/app:v2"), &host, &store).unwrap();
    assert_eq!(again.manifest_digest, two.manifest_digest);

    let err = import_archive(&archive, None, &host, &store).unwrap_err();
    assert!(matches!(err.failure(), Some(Failure::Ambiguous { .. })), "{err}");
    assert!(err.to_string().contains("busybox:latest, example.com/app:v2"), "{err}");

    // A layer whose content does not match the config's diff id.
    fs::write(dir.join("img1.json"), &p2.1).unwrap();
    let bad_manifest =
        json!([{"Config": "img1.json", "RepoTags": ["bad:1"], "Layers": ["aaa/layer.tar", "aaa/layer.tar"]}]);
    fs::write(dir.join("manifest.json"), serde_json::to_vec(&bad_manifest).unwrap()).unwrap();
    let bad = t.path().join("bad.tar");
    {
        let mut b = tar::Builder::new(fs::File::create(&bad).unwrap());
        b.follow_symlinks(false);
        b.append_dir_all(".", &dir).unwrap();
        b.finish().unwrap();
    }
    let err = import_archive(&bad, None, &host, &store).unwrap_err();
    assert!(matches!(err.failure(), Some(Failure::DigestMismatch { .. })), "{err}");
    assert!(err.to_string().starts_with("import docker-archive from"), "{err}");
}

#[test]
fn compressed_or_unknown_archives_are_explained() {
    let t = tempfile::tempdir().unwrap();
    let host = Platform::host();
    let (_d, store) = new_store();
    let gz = t.path().join("x.tar.gz");
    fs::write(&gz, gzip(&LayerTar::new().file("a", b"b", 0o644).finish())).unwrap();
    let err = import_archive(&gz, None, &host, &store).unwrap_err();
    assert!(err.to_string().contains("decompress it first"), "{err}");

    let plain = t.path().join("x.tar");
    fs::write(&plain, LayerTar::new().file("a", b"b", 0o644).finish()).unwrap();
    let err = import_archive(&plain, None, &host, &store).unwrap_err();
    assert!(err.to_string().contains("neither index.json"), "{err}");

    let err = import_oci_layout(t.path(), None, &host, &store).unwrap_err();
    assert!(err.to_string().contains("not an OCI image layout"), "{err}");
}
