//! Registry credentials from a docker `config.json` (`$DOCKER_CONFIG`
//! honoured), read with the `docker_credential` crate.
//!
//! Only inline credentials (`auths.<host>.auth` or `username`/`password`)
//! are used: this crate must not run processes, so `credsStore` and
//! `credHelpers` entries are ignored (with a warning). Identity tokens
//! (OAuth refresh tokens) are not supported either; such hosts are accessed
//! anonymously.

use std::fmt;
use std::io;
use std::path::Path;

use docker_credential::{CredentialRetrievalError, DockerCredential};

use crate::config::canonical_registry;
use crate::error::{Error, Result};
use crate::reference::DOCKER_HUB;

/// Credentials for one registry host.
#[derive(Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Credentials {
    /// No credentials (anonymous pulls; bearer tokens are still fetched).
    Anonymous,
    /// Username and password (HTTP basic auth, or exchanged for a token).
    Basic { username: String, password: String },
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::Anonymous => f.write_str("Anonymous"),
            Credentials::Basic { username, .. } => write!(f, "Basic({username}, <redacted>)"),
        }
    }
}

impl Credentials {
    /// As `oci-client` wants them.
    pub(crate) fn to_auth(&self) -> oci_client::secrets::RegistryAuth {
        match self {
            Credentials::Anonymous => oci_client::secrets::RegistryAuth::Anonymous,
            Credentials::Basic { username, password } => {
                oci_client::secrets::RegistryAuth::Basic(username.clone(), password.clone())
            }
        }
    }

    /// Looks up the credentials for registry `host` in `<dir>/config.json`.
    /// A missing directory or file means anonymous.
    pub fn lookup(dir: Option<&Path>, host: &str) -> Result<Self> {
        let Some(dir) = dir else {
            return Ok(Credentials::Anonymous);
        };
        let path = dir.join("config.json");
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Credentials::Anonymous),
            Err(e) => {
                return Err(Error::Credentials {
                    path,
                    reason: e.to_string(),
                });
            }
        };
        let mut json: serde_json::Value = serde_json::from_slice(&text).map_err(|e| Error::Credentials {
            path: path.clone(),
            reason: format!("not valid JSON: {e}"),
        })?;
        // Never let docker_credential run a helper process.
        if let Some(obj) = json.as_object_mut() {
            let store = obj.remove("credsStore");
            let helpers = obj.remove("credHelpers");
            if store.is_some() || helpers.is_some() {
                tracing::debug!(path = %path.display(), "ignoring credsStore/credHelpers: kiln does not run credential helpers");
            }
        }
        let cleaned = serde_json::to_vec(&json).expect("serialising a JSON value cannot fail");
        for key in config_keys(host) {
            match docker_credential::get_credential_from_reader(cleaned.as_slice(), &key) {
                Ok(DockerCredential::UsernamePassword(username, password)) => {
                    return Ok(Credentials::Basic { username, password });
                }
                Ok(DockerCredential::IdentityToken(_)) => {
                    tracing::warn!(
                        host,
                        "identity tokens in config.json are not supported; pulling anonymously"
                    );
                    return Ok(Credentials::Anonymous);
                }
                Err(CredentialRetrievalError::NoCredentialConfigured) => continue,
                Err(e) => {
                    return Err(Error::Credentials {
                        path,
                        reason: format!("entry {key:?}: {e}"),
                    });
                }
            }
        }
        Ok(Credentials::Anonymous)
    }
}

/// The keys `config.json` may use for `host`, most specific first.
fn config_keys(host: &str) -> Vec<String> {
    if canonical_registry(host) == DOCKER_HUB {
        return [
            "https://index.docker.io/v1/",
            "index.docker.io",
            "docker.io",
            "registry-1.docker.io",
        ]
        .map(String::from)
        .to_vec();
    }
    vec![
        host.to_string(),
        format!("https://{host}"),
        format!("http://{host}"),
        format!("https://{host}/v1/"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, json: &str) {
        std::fs::write(dir.join("config.json"), json).unwrap();
    }

    #[test]
    fn reads_inline_credentials_and_ignores_helpers() {
        let dir = tempfile::tempdir().unwrap();
        // "alice:s3cret"
        write(
            dir.path(),
            r#"{"auths": {"127.0.0.1:5000": {"auth": "YWxpY2U6czNjcmV0"},
                          "https://index.docker.io/v1/": {"username": "bob", "password": "pw"}},
                "credsStore": "desktop", "credHelpers": {"ghcr.io": "gh"}}"#,
        );
        let basic = |u: &str, p: &str| Credentials::Basic {
            username: u.into(),
            password: p.into(),
        };
        assert_eq!(
            Credentials::lookup(Some(dir.path()), "127.0.0.1:5000").unwrap(),
            basic("alice", "s3cret")
        );
        assert_eq!(
            Credentials::lookup(Some(dir.path()), "docker.io").unwrap(),
            basic("bob", "pw")
        );
        assert_eq!(
            Credentials::lookup(Some(dir.path()), "ghcr.io").unwrap(),
            Credentials::Anonymous
        );
        assert_eq!(
            Credentials::lookup(Some(dir.path()), "127.0.0.1:5001").unwrap(),
            Credentials::Anonymous
        );
        assert!(!format!("{:?}", basic("a", "secret")).contains("secret"));
    }

    #[test]
    fn missing_file_is_anonymous_and_bad_json_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            Credentials::lookup(Some(dir.path()), "x").unwrap(),
            Credentials::Anonymous
        );
        assert_eq!(Credentials::lookup(None, "x").unwrap(), Credentials::Anonymous);
        write(dir.path(), "{not json");
        let e = Credentials::lookup(Some(dir.path()), "x").unwrap_err().to_string();
        assert!(e.contains("config.json") && e.contains("not valid JSON"), "{e}");
    }
}
