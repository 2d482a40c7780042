//! Secrets: `setSecret`, `secret(uri)` (`env://`, `file://`, `cmd://`) and
//! the `Secret` type. Values go to the engine's in-memory secret store; the
//! API objects (and so IDs) hold only names, keyed hashes and URIs.

use std::sync::Arc;

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

/// Reads a secret value from its URI.
pub fn read_uri(uri: &str) -> Result<String, ApiError> {
    let bad = |why: String| ApiError::invalid(format!("secret {uri:?}: {why}"));
    if let Some(var) = uri.strip_prefix("env://") {
        std::env::var(var).map_err(|_| bad(format!("environment variable {var} is not set")))
    } else if let Some(path) = uri.strip_prefix("file://") {
        std::fs::read_to_string(path).map_err(|e| bad(format!("reading {path}: {e}")))
    } else if let Some(command) = uri.strip_prefix("cmd://") {
        let out = std::process::Command::new("sh")
            .args(["-c", command])
            .stderr(std::process::Stdio::inherit())
            .output()
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
    let plaintext = read_uri(&uri)?;
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
    use super::*;

    #[test]
    fn providers_read_env_files_and_commands() {
        // SAFETY: single-threaded test setting a variable only it reads.
        unsafe { std::env::set_var("KILN_TEST_SECRET_PROVIDER", "from-env") };
        assert_eq!(read_uri("env://KILN_TEST_SECRET_PROVIDER").unwrap(), "from-env");
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), "from-file\n").unwrap();
        assert_eq!(
            read_uri(&format!("file://{}", f.path().display())).unwrap(),
            "from-file\n"
        );
        assert_eq!(read_uri("cmd://printf 'from-cmd\\n'").unwrap(), "from-cmd");
        assert!(
            read_uri("env://KILN_TEST_SECRET_UNSET")
                .unwrap_err()
                .to_string()
                .contains("not set")
        );
        assert!(
            read_uri("vault://x")
                .unwrap_err()
                .to_string()
                .contains("unsupported provider")
        );
        assert!(read_uri("cmd://exit 3").is_err());
    }
}
