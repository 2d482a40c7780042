//! Registry settings of the engine config: mirrors, plain-HTTP hosts, and
//! where to find credentials.
//!
//! ```toml
//! [registry]
//! insecure = ["registry.internal:5000"]
//! docker_config = "/etc/kiln/docker"   # optional; default $DOCKER_CONFIG or ~/.docker
//! [registry.mirrors]
//! "docker.io" = ["127.0.0.1:5000", "mirror.example.com"]
//! ```

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::reference::DOCKER_HUB;

/// How many layer downloads run at once unless configured otherwise.
pub const DEFAULT_CONCURRENT_DOWNLOADS: usize = 4;

/// Registry settings (the `[registry]` table of an engine config).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistryConfig {
    /// Mirrors per registry host (`docker.io`, `ghcr.io`, `host:port`),
    /// tried in order before the registry itself. A mirror written
    /// `http://host` is also treated as insecure.
    pub mirrors: BTreeMap<String, Vec<String>>,
    /// Hosts (`host` or `host:port`) spoken to over plain HTTP. Loopback
    /// hosts (127.0.0.0/8, ::1, localhost, any port) always are.
    pub insecure: Vec<String>,
    /// Directory holding `config.json` with credentials; defaults to
    /// `$DOCKER_CONFIG`, then `~/.docker`.
    pub docker_config: Option<PathBuf>,
    /// Parallel layer downloads per image (0 means the default, 4).
    pub max_concurrent_downloads: usize,
    /// Registries with mirrors are only reached through them: when every
    /// mirror fails, the pull fails instead of going to the registry
    /// (for air-gapped machines and hermetic tests).
    pub mirrors_only: bool,
}

impl RegistryConfig {
    /// Whether `host` is spoken to over plain HTTP.
    pub fn is_insecure(&self, host: &str) -> bool {
        let host = strip_scheme(host).0;
        is_loopback_host(host)
            || self.insecure.iter().any(|h| strip_scheme(h).0 == host)
            || self.mirrors.values().flatten().any(|m| {
                let (m, plain) = strip_scheme(m);
                plain && m == host
            })
    }

    /// The hosts to try for `registry`, in order: its mirrors, then itself
    /// (unless `mirrors_only` and it has mirrors).
    pub fn sources(&self, registry: &str) -> Vec<String> {
        let key = canonical_registry(registry);
        let mut out: Vec<String> = self
            .mirrors
            .iter()
            .filter(|(k, _)| canonical_registry(k) == key)
            .flat_map(|(_, v)| v.iter().map(|m| strip_scheme(m).0.trim_end_matches('/').to_string()))
            .filter(|m| !m.is_empty())
            .collect();
        if out.is_empty() || !self.mirrors_only {
            out.push(registry.to_string());
        }
        let mut seen = std::collections::HashSet::new();
        out.retain(|h| seen.insert(h.clone()));
        out
    }

    /// The directory `config.json` is read from.
    pub fn docker_config_dir(&self) -> Option<PathBuf> {
        self.docker_config
            .clone()
            .or_else(|| std::env::var_os("DOCKER_CONFIG").map(PathBuf::from))
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker")))
    }

    /// Parallel layer downloads.
    pub fn concurrent_downloads(&self) -> usize {
        if self.max_concurrent_downloads == 0 {
            DEFAULT_CONCURRENT_DOWNLOADS
        } else {
            self.max_concurrent_downloads
        }
    }
}

/// `docker.io`, `index.docker.io` and `registry-1.docker.io` are one registry.
pub(crate) fn canonical_registry(host: &str) -> &str {
    match strip_scheme(host).0 {
        "index.docker.io" | "registry-1.docker.io" | "docker.io" => DOCKER_HUB,
        other => other,
    }
}

/// Strips `http://` / `https://`; says whether it was `http://`.
fn strip_scheme(host: &str) -> (&str, bool) {
    if let Some(h) = host.strip_prefix("http://") {
        (h, true)
    } else {
        (host.strip_prefix("https://").unwrap_or(host), false)
    }
}

/// Whether `host` (with or without a port) names the loopback interface:
/// `localhost`, 127.0.0.0/8 or `::1` (`[::1]:5000`).
pub fn is_loopback_host(host: &str) -> bool {
    let bare = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else if host.matches(':').count() == 1 {
        host.split(':').next().unwrap_or(host)
    } else {
        host
    };
    if bare.eq_ignore_ascii_case("localhost") {
        return true;
    }
    bare.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts_are_insecure_by_default() {
        let c = RegistryConfig::default();
        for h in [
            "127.0.0.1:5000",
            "127.3.2.1",
            "localhost",
            "localhost:5000",
            "[::1]:5000",
            "::1",
            "LOCALHOST:1",
        ] {
            assert!(c.is_insecure(h), "{h}");
        }
        for h in [
            "docker.io",
            "10.0.0.1:5000",
            "128.0.0.1",
            "localhost.example.com:5000",
            "[::2]:5000",
        ] {
            assert!(!c.is_insecure(h), "{h}");
        }
    }

    #[test]
    fn parses_from_toml_with_mirrors_in_order() {
        let c: RegistryConfig = toml::from_str(
            r#"
            insecure = ["reg.internal:5000"]
            [mirrors]
            "docker.io" = ["127.0.0.1:5001", "http://mirror.internal", "https://m2.example.com/"]
            "#,
        )
        .unwrap();
        assert!(c.is_insecure("reg.internal:5000"));
        assert!(c.is_insecure("mirror.internal"));
        assert!(!c.is_insecure("m2.example.com"));
        assert_eq!(
            c.sources("docker.io"),
            ["127.0.0.1:5001", "mirror.internal", "m2.example.com", "docker.io"]
        );
        assert_eq!(c.sources("ghcr.io"), ["ghcr.io"]);
        assert!(toml::from_str::<RegistryConfig>("mirror = {}").is_err());
        let strict = RegistryConfig {
            mirrors_only: true,
            ..c
        };
        assert_eq!(
            strict.sources("docker.io"),
            ["127.0.0.1:5001", "mirror.internal", "m2.example.com"]
        );
        assert_eq!(
            strict.sources("ghcr.io"),
            ["ghcr.io"],
            "registries without mirrors are still reachable"
        );
    }

    #[test]
    fn docker_config_dir_prefers_the_explicit_setting() {
        let c = RegistryConfig {
            docker_config: Some("/x".into()),
            ..Default::default()
        };
        assert_eq!(c.docker_config_dir(), Some(PathBuf::from("/x")));
    }
}
