//! The testkit itself: fixtures exist and are sound, the loopback registry
//! starts, accepts pushes of every fixture and enforces basic auth.
//! Only the debian test needs root (debootstrap); the rest runs as any user
//! that has the Debian packages from `scripts/setup.sh`.

use std::fs;
use std::path::Path;
use std::process::Command;

use kiln_testkit::{
    Registry, basic_authorization, busybox_docker_archive, busybox_layout, busybox_oci_archive, debian_layout,
    layered_layout, layout_digest, layout_is_index, multiarch_layout, require_root,
};

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&fs::read_to_string(path).unwrap()).unwrap()
}

fn blob(layout: &Path, digest: &str) -> serde_json::Value {
    json(
        &layout
            .join("blobs/sha256")
            .join(digest.strip_prefix("sha256:").unwrap()),
    )
}

fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

fn skopeo_inspect(args: &[&str]) -> serde_json::Value {
    let out = Command::new("skopeo")
        .arg("--insecure-policy")
        .arg("inspect")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo inspect {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn fixtures_are_oci_layouts() {
    let bb = busybox_layout();
    assert!(bb.join("oci-layout").is_file());
    assert!(!layout_is_index(&bb));
    let manifest = blob(&bb, &layout_digest(&bb));
    let config = blob(&bb, manifest["config"]["digest"].as_str().unwrap());
    assert_eq!(config["architecture"], host_arch());
    assert_eq!(config["os"], "linux");
    assert_eq!(config["config"]["Cmd"], serde_json::json!(["sh"]));
    assert_eq!(config["config"]["WorkingDir"], "/");
    assert_eq!(manifest["layers"].as_array().unwrap().len(), 1);
    assert_eq!(config["rootfs"]["diff_ids"].as_array().unwrap().len(), 1);

    let layered = layered_layout();
    let manifest = blob(&layered, &layout_digest(&layered));
    let types: Vec<&str> = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["mediaType"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "application/vnd.oci.image.layer.v1.tar+gzip",
            "application/vnd.oci.image.layer.v1.tar+gzip",
            "application/vnd.oci.image.layer.v1.tar+zstd",
            "application/vnd.oci.image.layer.v1.tar",
        ]
    );

    let multi = multiarch_layout();
    assert!(layout_is_index(&multi));
    let index = blob(&multi, &layout_digest(&multi));
    let platforms: Vec<(String, String)> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["platform"]["architecture"].as_str().unwrap().to_string(),
                m["digest"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(platforms.len(), 2);
    assert_ne!(platforms[0].0, host_arch(), "the wrong-arch image comes first");
    assert_eq!(platforms[1], (host_arch().to_string(), layout_digest(&bb)));

    assert!(busybox_oci_archive().is_file());
    assert!(busybox_docker_archive().is_file());
    let from_archive = skopeo_inspect(&[&format!("oci-archive:{}:latest", busybox_oci_archive().display())]);
    assert_eq!(from_archive["Digest"], layout_digest(&bb));
    skopeo_inspect(&[&format!("docker-archive:{}", busybox_docker_archive().display())]);
    // skopeo writes the normalised name (docker save would write "busybox:latest").
    let out = Command::new("tar")
        .arg("xOf")
        .arg(busybox_docker_archive())
        .arg("manifest.json")
        .output()
        .unwrap();
    assert!(out.status.success());
    let manifest: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        manifest[0]["RepoTags"],
        serde_json::json!(["docker.io/library/busybox:latest"])
    );
}

#[test]
fn registry_accepts_pushes_of_all_fixtures() {
    let reg = Registry::start();
    assert!(reg.host().starts_with("127.0.0.1:"));
    assert_eq!(reg.get("/v2/").status, 200);

    let bb = busybox_layout();
    let d = reg.push(&bb, "library/busybox:latest");
    assert_eq!(d, layout_digest(&bb));
    let d2 = reg.push(&bb, "library/busybox:1");
    assert_eq!(d2, d);
    let mut tags = reg.tags("library/busybox");
    tags.sort();
    assert_eq!(tags, ["1", "latest"]);

    let layered = layered_layout();
    assert_eq!(reg.push(&layered, "layered:v1"), layout_digest(&layered));
    assert_eq!(reg.tags("layered"), ["v1"]);

    let multi = multiarch_layout();
    let idx = reg.push_index(&multi, "multi:latest");
    assert_eq!(idx, layout_digest(&multi));
    // push() recognises an index by itself.
    assert_eq!(reg.push(&multi, "multi:again"), idx);
    let mut tags = reg.tags("multi");
    tags.sort();
    assert_eq!(tags, ["again", "latest"]);

    // The registry serves the index, and the host image behind it, by digest.
    // (distribution answers 404 for an index unless Accept allows it; get() sends
    // every manifest media type.)
    let resp = reg.request(
        &format!("/v2/multi/manifests/{idx}"),
        None,
        &[("Accept", "application/json")],
    );
    assert_eq!(resp.status, 404, "{}", resp.text());
    let resp = reg.get(&format!("/v2/multi/manifests/{idx}"));
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.header("docker-content-digest"), Some(idx.as_str()));
    assert_eq!(resp.json()["manifests"].as_array().unwrap().len(), 2);
    let resp = reg.get(&format!("/v2/multi/manifests/{d}"));
    assert_eq!(resp.status, 200, "{}", resp.text());

    // The zstd layer made it as is.
    let resp = reg.get(&format!("/v2/layered/manifests/{}", layout_digest(&layered)));
    assert!(resp.text().contains("tar+zstd"));

    // Other sources go through push_ref.
    let archive = format!("oci-archive:{}:latest", busybox_oci_archive().display());
    assert_eq!(reg.push_ref(&archive, "from-archive:latest", false), d);

    let inspected = skopeo_inspect(&[
        "--tls-verify=false",
        &format!("docker://{}", reg.image_ref("multi:latest")),
    ]);
    assert_eq!(inspected["Architecture"], host_arch());
    assert_eq!(inspected["Digest"], idx);

    assert!(reg.tags("does-not-exist").is_empty());
}

#[test]
fn basic_auth_registry_rejects_anonymous_and_accepts_credentials() {
    let reg = Registry::start_with_basic_auth("kiln", "s3cret pass");
    assert_eq!(reg.credentials(), Some(("kiln", "s3cret pass")));

    let anon = reg.get_anonymous("/v2/");
    assert_eq!(anon.status, 401);
    assert!(
        anon.header("www-authenticate").unwrap_or("").starts_with("Basic"),
        "{:?}",
        anon.headers
    );

    let wrong = reg.request("/v2/", Some(&basic_authorization("kiln", "nope")), &[]);
    assert_eq!(wrong.status, 401);

    assert_eq!(reg.get("/v2/").status, 200);

    let bb = busybox_layout();
    assert_eq!(reg.push(&bb, "private/busybox:latest"), layout_digest(&bb));
    assert_eq!(reg.tags("private/busybox"), ["latest"]);
    assert_eq!(reg.get_anonymous("/v2/private/busybox/tags/list").status, 401);
}

#[test]
fn registries_are_independent_and_stop_on_drop() {
    let a = Registry::start();
    let b = Registry::start();
    assert_ne!(a.port(), b.port());
    a.push(&busybox_layout(), "only-in-a:latest");
    assert_eq!(a.tags("only-in-a"), ["latest"]);
    assert!(b.tags("only-in-a").is_empty());
    let port = a.port();
    let storage = a.storage_dir();
    assert!(storage.is_dir());
    drop(a);
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "registry still listening after drop"
    );
    assert!(!storage.exists(), "temp dir not removed");
}

#[test]
fn root_debian_fixture() {
    if !require_root() {
        return;
    }
    let deb = debian_layout();
    let manifest = blob(&deb, &layout_digest(&deb));
    let config = blob(&deb, manifest["config"]["digest"].as_str().unwrap());
    assert_eq!(config["config"]["Cmd"], serde_json::json!(["bash"]));
    assert_eq!(config["architecture"], host_arch());
    assert_eq!(manifest["layers"].as_array().unwrap().len(), 1);
    let reg = Registry::start();
    assert_eq!(reg.push(&deb, "debian:bookworm"), layout_digest(&deb));
}
