//! Secrets: `setSecret`, `secret(uri)` (`env://`, `file://`, `cmd://`) and
//! the `Secret` type. Values go to the engine's in-memory secret store; the
//! API objects (and so IDs) hold only names, keyed hashes and URIs.

use std::path::Path;
use std::sync::Arc;

use kiln_solver::HostAccess;

use crate::api::{Api, Output, Registry};
use crate::args::Args;
use crate::error::ApiError;
use crate::resolver;
use crate::values::{Object, Secret};

pub fn register(r: &mut Registry) {
    r.add("Query", "setSecret", resolver!(set_secret));
    r.add("Query", "secret", resolver!(secret));
    r.add("Secret", "id", resolver!(id));
    r.add("Secret", "name", resolver!(name));
    r.add("Secret", "plaintext", resolver!(plaintext));
    r.add("Secret", "uri", resolver!(uri));
}

/// Reads a secret value from its URI, on the client's host.
pub fn read_uri(host: &dyn HostAccess, uri: &str) -> Result<String, ApiError> {
    let bad = |why: String| ApiError::invalid(format!("secret {uri:?}: {why}"));
    if let Some(var) = uri.strip_prefix("env://") {
        host.env(var)
            .ok_or_else(|| bad(format!("environment variable {var} is not set")))
    } else if let Some(path) = uri.strip_prefix("file://") {
        host.read_to_string(Path::new(path))
            .map_err(|e| bad(format!("reading {path}: {e}")))
    } else if let Some(command) = uri.strip_prefix("cmd://") {
        let out = host
            .command_output(command)
            .map_err(|e| bad(format!("running the command: {e}")))?;
        if !out.status.success() {
            return Err(bad(format!("the command failed ({})", out.status)));
        }
        let mut value = String::from_utf8(out.stdout).map_err(|_| bad("the command's output is not UTF-8".into()))?;
        if value.ends_with('\n') {
            value.pop();
        }
        Ok(value)
    } else {
        Err(bad(
            "unsupported provider: use env://NAME, file://PATH or cmd://COMMAND".into(),
        ))
    }
}

fn secret_object(api: &Api, name: &str, plaintext: String, uri: Option<String>) -> Output {
    let r = api.session.add_secret(name, plaintext);
    Output::Object(Object::Secret(Secret {
        name: r.name,
        digest: r.digest,
        uri,
    }))
}

async fn set_secret(api: Arc<Api>, _: Object, args: Args) -> Result<Output, ApiError> {
    let plaintext = args.opt_string("plaintext").unwrap_or_default();
    Ok(secret_object(&api, &args.string("name")?, plaintext, None))
}

async fn secret(api: Arc<Api>, _: Object, args: Args) -> Result<Output, ApiError> {
    let uri = args.string("uri")?;
    let plaintext = read_uri(api.session.host().as_ref(), &uri)?;
    Ok(secret_object(&api, &uri, plaintext, Some(uri.clone())))
}

fn this(obj: Object) -> Result<Secret, ApiError> {
    match obj {
        Object::Secret(s) => Ok(s),
        other => Err(ApiError::internal(format!(
            "expected a Secret, got a {}",
            other.type_name()
        ))),
    }
}

async fn id(api: Arc<Api>, obj: Object, _: Args) -> Result<Output, ApiError> {
    api.id(&obj)
}

async fn name(_: Arc<Api>, obj: Object, _: Args) -> Result<Output, ApiError> {
    Ok(Output::string(this(obj)?.name))
}

async fn uri(_: Arc<Api>, obj: Object, _: Args) -> Result<Output, ApiError> {
    Ok(Output::string(this(obj)?.uri.unwrap_or_default()))
}

async fn plaintext(api: Arc<Api>, obj: Object, _: Args) -> Result<Output, ApiError> {
    let r = api.secret_ref(&this(obj)?)?;
    let value = api
        .session
        .secret(&r)
        .ok_or_else(|| ApiError::internal("a secret of this session vanished"))?;
    Ok(Output::string(value.as_str()))
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::os::unix::process::ExitStatusExt;
    use std::process::{ExitStatus, Output as ProcessOutput};

    use kiln_solver::{Export, ExportError, HostPathKind};
    use kiln_store::{CopyStats, HostError, HostTree, MergedView, PathFilter, Staged, Store, StoreError};

    use super::*;

    /// A host with one env var, one file and one command that works: the
    /// provider logic above the trait (the real host is tested in
    /// kiln-solver and by the SDK suites).
    struct FakeHost;

    impl HostAccess for FakeHost {
        fn kind(&self, _: &Path) -> HostPathKind {
            HostPathKind::Missing
        }
        fn env(&self, name: &str) -> Option<String> {
            (name == "TOKEN").then(|| "from-env".to_string())
        }
        fn read_to_string(&self, path: &Path) -> io::Result<String> {
            match path.to_str() {
                Some("/run/token") => Ok("from-file\n".into()),
                _ => Err(io::Error::from(io::ErrorKind::NotFound)),
            }
        }
        fn command_output(&self, command: &str) -> io::Result<ProcessOutput> {
            let (status, stdout) = match command {
                "vault read token" => (0, b"from-cmd\n".to_vec()),
                _ => (3 << 8, Vec::new()),
            };
            Ok(ProcessOutput {
                status: ExitStatus::from_raw(status),
                stdout,
                stderr: Vec::new(),
            })
        }
        fn export(&self, _: &MergedView, _: &Export) -> Result<CopyStats, ExportError> {
            unreachable!("not used by secret providers")
        }
        fn scan_dir(&self, _: &Store, _: &Path, _: &PathFilter) -> Result<HostTree, HostError> {
            unreachable!("not used by secret providers")
        }
        fn upload_dir(&self, _: &Store, _: &HostTree) -> Result<Staged, StoreError> {
            unreachable!("not used by secret providers")
        }
        fn registry_credentials(&self, _: &str) -> Result<kiln_oci::Credentials, kiln_oci::Error> {
            unreachable!("not used by secret providers")
        }
        fn warn(&self, _: &str) {
            unreachable!("not used by secret providers")
        }
    }

    #[test]
    fn providers_read_env_files_and_commands_of_the_client_host() {
        let host = &FakeHost;
        assert_eq!(read_uri(host, "env://TOKEN").unwrap(), "from-env");
        assert_eq!(read_uri(host, "file:///run/token").unwrap(), "from-file\n");
        assert_eq!(read_uri(host, "cmd://vault read token").unwrap(), "from-cmd");
        let err = |uri| read_uri(host, uri).unwrap_err().to_string();
        assert!(err("env://UNSET").contains("environment variable UNSET is not set"));
        assert!(err("file:///missing").contains("reading /missing"));
        assert!(err("cmd://exit 3").contains("the command failed"));
        assert!(err("vault://x").contains("unsupported provider"));
    }
}
