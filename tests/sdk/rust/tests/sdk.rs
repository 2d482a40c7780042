//! End-to-end checks of kiln driven by the official Dagger Rust SDK
//! (`dagger-sdk`, pinned in Cargo.toml). run.sh runs this test binary under
//! `kiln run` (one session shared by all tests) and again with the SDK
//! spawning `kiln session` itself (`_EXPERIMENTAL_DAGGER_CLI_BIN`).

use std::fs;
use std::path::{Path, PathBuf};

use dagger_sdk::core::gql_client::GraphQlExtension;
use dagger_sdk::core::graphql_client::GraphQLError;
use dagger_sdk::errors::DaggerError;
use dagger_sdk::{ContainerWithExecOptsBuilder, HostDirectoryOptsBuilder, ReturnType};

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let dir = std::env::temp_dir().join(format!("kiln-rust-sdk-{tag}-{}-{nanos}", std::process::id()));
        fs::create_dir_all(&dir).expect("creating a temporary directory");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn write(path: &Path, text: &str) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
}

/// Runs `body` with a client; panics (failing the test) if the SDK reports an error.
async fn with_client<F, Fut>(body: F)
where
    F: FnOnce(dagger_sdk::DaggerConn) -> Fut + 'static,
    Fut: std::future::Future<Output = eyre::Result<()>> + 'static,
{
    if let Err(e) = dagger_sdk::connect(body).await {
        panic!("dagger-sdk connect failed: {e:?}");
    }
}

#[tokio::test]
async fn hello_world() {
    with_client(|client| async move {
        let out = client
            .container()
            .from("busybox")
            .with_exec(vec!["echo", "hi"])
            .stdout()
            .await?;
        assert_eq!(out, "hi\n");
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn host_directory_with_exclude() {
    let tmp = TempDir::new("hostdir");
    let src = tmp.0.join("src");
    write(&src.join("a.txt"), "alpha\n");
    write(&src.join("sub/b.txt"), "bravo\n");
    write(&src.join("debug.log"), "noise\n");
    write(&src.join("node_modules/dep/index.js"), "module.exports = 1;\n");
    let out_dir = tmp.0.join("out");
    let src_arg = src.to_string_lossy().into_owned();
    let out_arg = out_dir.to_string_lossy().into_owned();

    with_client(move |client| async move {
        let dir = client.host().directory_opts(
            src_arg,
            HostDirectoryOptsBuilder::default()
                .exclude(vec!["node_modules", "*.log"])
                .build()?,
        );

        // The directory itself, seen through the API.
        let mut entries: Vec<String> = dir
            .entries()
            .await?
            .into_iter()
            .map(|e| e.trim_end_matches('/').to_string())
            .collect();
        entries.sort();
        assert_eq!(entries, ["a.txt", "sub"]);
        assert_eq!(dir.file("sub/b.txt").contents().await?, "bravo\n");

        // Mounted into a container (the SDK sends the directory's ID first).
        let ctr = client
            .container()
            .from("busybox")
            .with_mounted_directory("/src", dir.clone())
            .with_workdir("/src");
        let listing = ctr.with_exec(vec!["sh", "-c", "ls -A1 /src | sort"]).stdout().await?;
        assert_eq!(listing, "a.txt\nsub\n");
        let text = ctr.with_exec(vec!["cat", "a.txt", "sub/b.txt"]).stdout().await?;
        assert_eq!(text, "alpha\nbravo\n");

        // Copied in, changed, and exported back to the host.
        let exported = client
            .container()
            .from("busybox")
            .with_directory("/work", dir)
            .with_exec(vec!["sh", "-c", "tr a-z A-Z < /work/a.txt > /work/upper.txt"])
            .directory("/work")
            .export(out_arg.clone())
            .await?;
        assert_eq!(exported, out_arg);
        Ok(())
    })
    .await;

    let mut names: Vec<String> = fs::read_dir(&out_dir)
        .expect("export wrote the directory")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["a.txt", "sub", "upper.txt"]);
    assert_eq!(fs::read_to_string(out_dir.join("upper.txt")).unwrap(), "ALPHA\n");
}

#[tokio::test]
async fn failing_exec_reports_exit_code_and_output() {
    with_client(|client| async move {
        let script = "echo to-stdout; echo to-stderr >&2; exit 3";
        let err = client
            .container()
            .from("busybox")
            .with_exec(vec!["sh", "-c", script])
            .stdout()
            .await
            .expect_err("a command exiting 3 must fail the query");

        // dagger-sdk surfaces GraphQL errors as DaggerError::Query(DomainError),
        // and decodes the EXEC_ERROR extension into GraphQlExtension::ExecError.
        let DaggerError::Query(GraphQLError::DomainError { message, fields }) = &err else {
            panic!("expected a GraphQL domain error, got {err:?}");
        };
        assert!(!message.is_empty());
        let first = fields.first().expect("the error list is not empty");
        let Some(GraphQlExtension::ExecError {
            cmd,
            exit_code,
            stdout,
            stderr,
        }) = &first.extensions
        else {
            panic!("expected an EXEC_ERROR extension, got {:?}", first.extensions);
        };
        assert_eq!(cmd, &["sh", "-c", script]);
        assert_eq!(*exit_code, 3);
        assert_eq!(stdout.trim_end(), "to-stdout");
        assert_eq!(stderr.trim_end(), "to-stderr");
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn expect_any_lets_a_failing_exit_code_through() {
    with_client(|client| async move {
        let ctr = client.container().from("busybox").with_exec_opts(
            vec!["sh", "-c", "echo partial; exit 5"],
            ContainerWithExecOptsBuilder::default()
                .expect(ReturnType::Any)
                .build()?,
        );
        assert_eq!(ctr.exit_code().await?, 5);
        assert_eq!(ctr.stdout().await?, "partial\n");
        Ok(())
    })
    .await;
}

#[tokio::test]
async fn non_exec_error_is_a_plain_domain_error() {
    with_client(|client| async move {
        let err = client
            .container()
            .from("busybox")
            .file("/does/not/exist")
            .contents()
            .await
            .expect_err("reading a missing file must fail");
        let DaggerError::Query(GraphQLError::DomainError { fields, .. }) = &err else {
            panic!("expected a GraphQL domain error, got {err:?}");
        };
        assert!(
            matches!(
                fields.first().and_then(|f| f.extensions.as_ref()),
                None | Some(GraphQlExtension::Other)
            ),
            "unexpected extensions: {fields:?}"
        );
        Ok(())
    })
    .await;
}
