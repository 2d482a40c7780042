//! Pulls from a real registry (the distribution registry on loopback,
//! started by kiln-testkit) and imports from disk: by tag and by digest,
//! precise errors, platform choice from an index, mirrors, and the same
//! image through an OCI layout, an OCI archive and a docker-archive.
//! Loopback registries need no config: they are plain HTTP by default.

mod common;

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};

use common::require_root;
use kiln_oci::{
    Compression, Failure, Platform, Reference, Registry, RegistryConfig, ResolvedImage, apply_layer, import_archive,
    import_oci_layout,
};
use kiln_store::{BlobStore, Digest};
use kiln_testkit::Registry as TestRegistry;

fn new_store() -> (tempfile::TempDir, BlobStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path().join("blobs"), dir.path().join("tmp")).unwrap();
    (dir, store)
}

fn reference(s: &str) -> Reference {
    Reference::parse(s).unwrap()
}

/// Applies every layer of `image` (from `store`) into `root/0`, `root/1`,
/// ...; checks each diff id; returns the layer dirs, top-most first.
fn apply_all(image: &ResolvedImage, store: &BlobStore, root: &Path) -> (Vec<PathBuf>, HashSet<Compression>) {
    let mut lowers: Vec<PathBuf> = Vec::new();
    let mut kinds = HashSet::new();
    for (i, layer) in image.layers.iter().enumerate() {
        let dir = root.join(i.to_string());
        fs::create_dir_all(&dir).unwrap();
        let blob = store.open_blob(&layer.digest).unwrap();
        let stats = apply_layer(
            blob,
            &layer.media_type,
            &dir,
            &lowers,
            kiln_oci::ExtractLimits::default(),
        )
        .unwrap();
        assert_eq!(stats.diff_id, Some(layer.diff_id), "layer {i} diff id");
        kinds.insert(stats.compression.unwrap());
        lowers.insert(0, dir);
    }
    (lowers, kinds)
}

/// Finds `path` in the merged view of layer dirs (top-most first), honouring
/// whiteouts only at the leaf (enough for these fixtures).
fn find(layers: &[PathBuf], path: &str) -> Option<PathBuf> {
    layers
        .iter()
        .map(|l| l.join(path))
        .find(|p| fs::symlink_metadata(p).is_ok())
}

#[tokio::test]
async fn root_pull_by_tag_and_by_digest() {
    if !require_root("root_pull_by_tag_and_by_digest") {
        return;
    }
    let reg = TestRegistry::start();
    let pushed = reg.push(&kiln_testkit::busybox_layout(), "library/busybox:latest");
    let client = Registry::new(RegistryConfig::default());

    let (_d, store) = new_store();
    let by_tag = reference(&format!("{}/library/busybox:latest", reg.host()));
    let image = client.pull(&by_tag, &Platform::host(), &store).await.unwrap();
    let pinned = image.index_digest.unwrap_or(image.manifest_digest);
    assert_eq!(pinned.to_string(), pushed);
    assert_eq!(image.source, reg.host());
    assert!(store.contains(&image.manifest_digest));
    assert_eq!(
        Digest::of(&store.read(&image.manifest_digest).unwrap()),
        image.manifest_digest
    );
    assert!(store.contains(&image.config_digest));
    assert!(!image.layers.is_empty());
    for l in &image.layers {
        assert!(store.contains(&l.digest), "layer {} fetched", l.digest);
    }
    // Fetching again is a no-op.
    client.fetch_layers(&image, &store).await.unwrap();

    let root = tempfile::tempdir().unwrap();
    let (layers, _) = apply_all(&image, &store, root.path());
    assert!(find(&layers, "bin/busybox").is_some() || find(&layers, "bin/sh").is_some());

    // By digest, into a fresh store: same image.
    let (_d2, store2) = new_store();
    let by_digest = reference(&format!("{}/library/busybox@{pushed}", reg.host()));
    let again = client.pull(&by_digest, &Platform::host(), &store2).await.unwrap();
    assert_eq!(again.manifest_digest, image.manifest_digest);
    assert_eq!(again.diff_ids(), image.diff_ids());
}

#[tokio::test]
async fn root_pull_errors_are_precise() {
    if !require_root("root_pull_errors_are_precise") {
        return;
    }
    let reg = TestRegistry::start();
    reg.push(&kiln_testkit::busybox_layout(), "library/busybox:latest");
    let client = Registry::new(RegistryConfig::default());
    let (_d, store) = new_store();
    let host = reg.host();

    let err = client
        .resolve(
            &reference(&format!("{host}/library/busybox:lates")),
            &Platform::host(),
            &store,
        )
        .await
        .unwrap_err();
    assert_eq!(err.failure(), Some(&Failure::ManifestUnknown), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("busybox:lates") && msg.contains(&host) && msg.contains("check the tag"),
        "{msg}"
    );

    let absent = Digest::of(b"not pushed");
    let err = client
        .resolve(
            &reference(&format!("{host}/library/busybox@{absent}")),
            &Platform::host(),
            &store,
        )
        .await
        .unwrap_err();
    assert_eq!(err.failure(), Some(&Failure::ManifestUnknown), "{err}");

    let err = client
        .resolve(
            &reference(&format!("{host}/nobody/nothing:1")),
            &Platform::host(),
            &store,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err.failure(),
            Some(Failure::RepositoryUnknown | Failure::ManifestUnknown)
        ),
        "{err}"
    );
    assert!(err.to_string().contains("nobody/nothing"), "{err}");
}

#[tokio::test]
async fn root_multiarch_picks_the_host_platform() {
    if !require_root("root_multiarch_picks_the_host_platform") {
        return;
    }
    let reg = TestRegistry::start();
    let pushed = reg.push(&kiln_testkit::multiarch_layout(), "multi:latest");
    let client = Registry::new(RegistryConfig::default());
    let (_d, store) = new_store();

    let image = client
        .pull(
            &reference(&format!("{}/multi:latest", reg.host())),
            &Platform::host(),
            &store,
        )
        .await
        .unwrap();
    assert_eq!(image.index_digest.map(|d| d.to_string()), Some(pushed));
    assert!(Platform::host().matches(&image.platform()), "{:?}", image.platform());
    let root = tempfile::tempdir().unwrap();
    let (layers, _) = apply_all(&image, &store, root.path());
    let os_release = find(&layers, "etc/os-release")
        .map(|p| fs::read_to_string(p).unwrap())
        .unwrap_or_default();
    assert!(
        !os_release.contains("ID=wrong-arch"),
        "picked the wrong platform: {os_release}"
    );

    let err = client
        .resolve(
            &reference(&format!("{}/multi:latest", reg.host())),
            &Platform::parse("plan9/386").unwrap(),
            &store,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err.failure(), Some(Failure::NoMatchingPlatform { .. })),
        "{err}"
    );
    assert!(err.to_string().contains("plan9/386"), "{err}");
}

#[tokio::test]
async fn root_docker_hub_name_is_served_by_the_loopback_mirror() {
    if !require_root("root_docker_hub_name_is_served_by_the_loopback_mirror") {
        return;
    }
    let reg = TestRegistry::start();
    let pushed = reg.push(&kiln_testkit::busybox_layout(), "library/busybox:latest");
    let mut config = RegistryConfig::default();
    config.mirrors.insert("docker.io".into(), vec![reg.host()]);
    let client = Registry::new(config);
    let (_d, store) = new_store();

    // The mirror answers, so docker.io is never contacted.
    let image = client
        .pull(&reference("busybox"), &Platform::host(), &store)
        .await
        .unwrap();
    assert_eq!(image.source, reg.host());
    assert_eq!(image.index_digest.unwrap_or(image.manifest_digest).to_string(), pushed);
    assert_eq!(
        image.reference.as_ref().unwrap().to_string(),
        "docker.io/library/busybox:latest"
    );
    for l in &image.layers {
        assert!(store.contains(&l.digest));
    }
}

#[tokio::test]
async fn root_layered_image_applies_with_whiteouts() {
    if !require_root("root_layered_image_applies_with_whiteouts") {
        return;
    }
    let reg = TestRegistry::start();
    reg.push(&kiln_testkit::layered_layout(), "layered:latest");
    let client = Registry::new(RegistryConfig::default());
    let (_d, store) = new_store();
    let image = client
        .pull(
            &reference(&format!("{}/layered:latest", reg.host())),
            &Platform::host(),
            &store,
        )
        .await
        .unwrap();
    let root = tempfile::tempdir().unwrap();
    let (layers, kinds) = apply_all(&image, &store, root.path());
    assert_eq!(
        kinds,
        HashSet::from([Compression::Gzip, Compression::Zstd, Compression::None])
    );

    // The merged view through a real overlayfs mount.
    let mnt = root.path().join("mnt");
    fs::create_dir_all(&mnt).unwrap();
    let lowerdir: Vec<String> = layers.iter().map(|p| p.display().to_string()).collect();
    let opts = std::ffi::CString::new(format!("lowerdir={}", lowerdir.join(":"))).unwrap();
    rustix::mount::mount(
        "overlay",
        &mnt,
        "overlay",
        rustix::mount::MountFlags::RDONLY,
        opts.as_c_str(),
    )
    .expect("mount the layers with overlayfs");
    let list = |p: &str| {
        let mut v: Vec<String> = fs::read_dir(mnt.join(p))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    };
    let data = list("data");
    let opaque = list("data/opaque");
    let hard_is_keep = fs::read(mnt.join("data/hard")).ok() == fs::read(mnt.join("data/keep")).ok();
    let link = fs::read_link(mnt.join("data/link")).ok();
    rustix::mount::unmount(&mnt, rustix::mount::UnmountFlags::DETACH).unwrap();
    assert_eq!(data, ["hard", "keep", "link", "new", "opaque"]);
    assert_eq!(opaque, ["c"]);
    assert!(hard_is_keep);
    assert_eq!(link, Some(PathBuf::from("keep")));
}

#[test]
fn root_imports_agree_on_diff_ids() {
    if !require_root("root_imports_agree_on_diff_ids") {
        return;
    }
    let host = Platform::host();
    let (_d, store) = new_store();
    let layout = import_oci_layout(&kiln_testkit::busybox_layout(), Some("latest"), &host, &store).unwrap();
    let oci = import_archive(&kiln_testkit::busybox_oci_archive(), None, &host, &store).unwrap();
    let docker = import_archive(&kiln_testkit::busybox_docker_archive(), None, &host, &store).unwrap();

    assert!(!layout.layers.is_empty());
    assert_eq!(layout.diff_ids(), oci.diff_ids());
    assert_eq!(layout.diff_ids(), docker.diff_ids());
    assert_eq!(layout.manifest_digest, oci.manifest_digest);
    for image in [&layout, &oci, &docker] {
        assert!(store.contains(&image.manifest_digest));
        assert!(store.contains(&image.config_digest));
        for l in &image.layers {
            assert!(store.contains(&l.digest));
        }
    }
    // docker-archive layers are stored uncompressed: digest = diff id.
    for l in &docker.layers {
        assert_eq!(l.digest, l.diff_id);
        assert_eq!(l.media_type, "application/vnd.oci.image.layer.v1.tar");
    }
    let root = tempfile::tempdir().unwrap();
    apply_all(&docker, &store, root.path());

    let err = import_oci_layout(&kiln_testkit::busybox_layout(), Some("nope"), &host, &store).unwrap_err();
    assert!(matches!(err.failure(), Some(Failure::TagNotFound { .. })), "{err}");
    assert!(err.to_string().contains("latest"), "lists the available tags: {err}");
}
