//! Basic auth against a loopback registry: credentials from a temp
//! `$DOCKER_CONFIG/config.json` work; without them the pull fails with an
//! auth error. One test, because it sets an environment variable.

mod common;

use common::require_root;
use kiln_oci::{Failure, Platform, Reference, Registry, RegistryConfig};
use kiln_store::BlobStore;
use kiln_testkit::Registry as TestRegistry;

#[tokio::test]
async fn root_basic_auth_from_docker_config() {
    if !require_root("root_basic_auth_from_docker_config") {
        return;
    }
    let reg = TestRegistry::start_with_basic_auth("alice", "s3cret");
    reg.push(&kiln_testkit::busybox_layout(), "private/busybox:latest");
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path().join("blobs"), dir.path().join("tmp")).unwrap();
    let image = Reference::parse(&format!("{}/private/busybox:latest", reg.host())).unwrap();

    // No credentials (an empty docker config dir): an auth error.
    let empty = tempfile::tempdir().unwrap();
    let anonymous = Registry::new(RegistryConfig {
        docker_config: Some(empty.path().into()),
        ..Default::default()
    });
    let err = anonymous.resolve(&image, &Platform::host(), &store).await.unwrap_err();
    assert!(matches!(err.failure(), Some(Failure::Unauthorized(_))), "{err}");
    assert!(err.to_string().contains("credentials"), "{err}");

    // Wrong password: an auth error too.
    let wrong = tempfile::tempdir().unwrap();
    write_config(wrong.path(), &reg.host(), "alice:nope");
    let client = Registry::new(RegistryConfig {
        docker_config: Some(wrong.path().into()),
        ..Default::default()
    });
    let err = client.resolve(&image, &Platform::host(), &store).await.unwrap_err();
    assert!(matches!(err.failure(), Some(Failure::Unauthorized(_))), "{err}");

    // Credentials in $DOCKER_CONFIG/config.json: the pull works.
    let creds = tempfile::tempdir().unwrap();
    write_config(creds.path(), &reg.host(), "alice:s3cret");
    // SAFETY: this test binary runs this single test, so nothing else reads
    // the environment concurrently.
    unsafe { std::env::set_var("DOCKER_CONFIG", creds.path()) };
    let client = Registry::new(RegistryConfig::default());
    let pulled = client.pull(&image, &Platform::host(), &store).await.unwrap();
    assert!(!pulled.layers.is_empty());
    for l in &pulled.layers {
        assert!(store.contains(&l.digest));
    }
}

fn write_config(dir: &std::path::Path, host: &str, user_pass: &str) {
    use base64::Engine as _;
    let auth = base64::engine::general_purpose::STANDARD.encode(user_pass);
    let json = serde_json::json!({"auths": {host: {"auth": auth}}});
    std::fs::write(dir.join("config.json"), serde_json::to_vec(&json).unwrap()).unwrap();
}
