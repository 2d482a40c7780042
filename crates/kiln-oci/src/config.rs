//! Registry settings of the engine config: mirrors, plain-HTTP hosts, where
//! to find credentials, and how long to wait and how often to retry.
//!
//! ```toml
//! [registry]
//! insecure = ["registry.internal:5000"]
//! docker_config = "/etc/kiln/docker"   # optional; default $DOCKER_CONFIG or ~/.docker
//! connect_timeout = "10s"              # durations: "500ms", "10s", "2m", or seconds (10, 2.5)
//! read_timeout = "30s"                 # silence allowed before a request fails
//! retries = 3                          # retries of a transiently failing request
//! [registry.mirrors]
//! "docker.io" = ["127.0.0.1:5000", "mirror.example.com"]
//! ```

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use kiln_store::{format_duration, parse_duration};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::reference::DOCKER_HUB;

/// How many layer downloads run at once unless configured otherwise.
pub const DEFAULT_CONCURRENT_DOWNLOADS: usize = 4;

/// How long a connection to a registry may take unless configured otherwise.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a request may receive nothing unless configured otherwise.
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// How often a transiently failing request is retried unless configured
/// otherwise.
pub const DEFAULT_RETRIES: u32 = 3;

/// After how long without a response a request is reported as waiting,
/// unless configured otherwise.
pub const DEFAULT_WAITING_NOTICE_AFTER: Duration = Duration::from_secs(2);

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
    /// How long connecting (TCP and TLS) to a registry may take; default 10s.
    #[serde(with = "duration", skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<Duration>,
    /// How long a request may go without receiving anything (the response,
    /// or the next bytes of a download) before it fails; default 30s. A
    /// large download that keeps making progress is never cut short.
    #[serde(with = "duration", skip_serializing_if = "Option::is_none")]
    pub read_timeout: Option<Duration>,
    /// How many times a request that failed transiently (connection
    /// refused or reset, timeout, 5xx, 429) is retried, with exponential
    /// backoff, before the next mirror is tried or the pull fails; default 3.
    /// Errors such as 401, 403, 404 or a digest mismatch are never retried.
    pub retries: Option<u32>,
    /// After how long without a response a request is reported to the
    /// [`Registry`](crate::Registry)'s observer as waiting; default 2s.
    #[serde(with = "duration", skip_serializing_if = "Option::is_none")]
    pub waiting_notice_after: Option<Duration>,
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

    /// How long connecting may take.
    pub fn connect_timeout(&self) -> Duration {
        self.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT)
    }

    /// How long a request may receive nothing.
    pub fn read_timeout(&self) -> Duration {
        self.read_timeout.unwrap_or(DEFAULT_READ_TIMEOUT)
    }

    /// How often a transiently failing request is retried.
    pub fn retries(&self) -> u32 {
        self.retries.unwrap_or(DEFAULT_RETRIES)
    }

    /// After how long without a response a request is reported as waiting.
    pub fn waiting_notice_after(&self) -> Duration {
        self.waiting_notice_after.unwrap_or(DEFAULT_WAITING_NOTICE_AFTER)
    }
}

/// A duration as written in the config: seconds (`10`, `2.5`) or a string
/// with a unit (`"500ms"`, `"10s"`, `"2m"`); more than zero.
mod duration {
    use super::*;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&format_duration(*d)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Seconds(u64),
            Fraction(f64),
            Text(String),
        }
        let parsed = match Raw::deserialize(d)? {
            Raw::Seconds(s) => Ok(Duration::from_secs(s)),
            Raw::Fraction(s) => Duration::try_from_secs_f64(s).map_err(|e| format!("{s}: {e}")),
            Raw::Text(t) => parse_duration(&t).map_err(|e| e.to_string()),
        };
        match parsed {
            Ok(d) if d.is_zero() => Err(serde::de::Error::custom("a duration of zero is not allowed")),
            Ok(d) => Ok(Some(d)),
            Err(e) => Err(serde::de::Error::custom(e)),
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
    fn timeouts_and_retries_have_defaults_and_parse_with_units() {
        let c = RegistryConfig::default();
        assert_eq!(c.connect_timeout(), Duration::from_secs(10));
        assert_eq!(c.read_timeout(), Duration::from_secs(30));
        assert_eq!(c.retries(), 3);
        assert_eq!(c.waiting_notice_after(), Duration::from_secs(2));

        let c: RegistryConfig = toml::from_str(
            r#"
            connect_timeout = "1s 500ms"
            read_timeout = 90
            retries = 0
            waiting_notice_after = "250ms"
            "#,
        )
        .unwrap();
        assert_eq!(c.connect_timeout(), Duration::from_millis(1500));
        assert_eq!(c.read_timeout(), Duration::from_secs(90));
        assert_eq!(c.retries(), 0);
        assert_eq!(c.waiting_notice_after(), Duration::from_millis(250));
        assert_eq!(
            toml::from_str::<RegistryConfig>("read_timeout = \"2m\"")
                .unwrap()
                .read_timeout(),
            Duration::from_secs(120)
        );
        assert_eq!(
            toml::from_str::<RegistryConfig>("read_timeout = 0.5")
                .unwrap()
                .read_timeout(),
            Duration::from_millis(500)
        );

        let text = toml::to_string(&c).unwrap();
        assert!(
            text.contains("connect_timeout = \"1s 500ms\"") && text.contains("waiting_notice_after = \"250ms\""),
            "{text}"
        );
        assert_eq!(toml::from_str::<RegistryConfig>(&text).unwrap(), c);

        for (bad, needle) in [
            ("read_timeout = 0", "zero"),
            ("read_timeout = \"0s\"", "zero"),
            ("read_timeout = \"ten\"", "invalid duration \"ten\""),
            ("connect_timeout = \"5 parsecs\"", "invalid duration"),
            ("connect_timeout = \"s\"", "invalid duration"),
        ] {
            let e = toml::from_str::<RegistryConfig>(bad).unwrap_err().to_string();
            assert!(e.contains(needle), "{bad}: {e}");
        }
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
