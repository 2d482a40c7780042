//! The engine configuration file (TOML).
//!
//! ```toml
//! state_dir = "/var/lib/kiln"   # default: /var/lib/kiln as root, else $XDG_DATA_HOME/kiln
//! runtime = "crun"              # or "runc", or a path; default: crun, else runc
//! parallelism = 4               # execs at once; default: number of CPUs
//! [registry]
//! insecure = ["registry.internal:5000"]
//! [registry.mirrors]
//! "docker.io" = ["127.0.0.1:5000"]
//! [gc]
//! keep_storage = "20GB"         # or "25%" of the disk available to the cache (the default)
//! [export]                      # what Directory/File.export may create on the host
//! setuid = false                # keep setuid/setgid bits (default: cleared)
//! devices = false               # create device nodes (default: skipped)
//! [limits]                      # what one image layer may write
//! layer_max_bytes = "100GB"     # file data in all (default: the free disk space)
//! layer_max_entry_size = "64GiB" # one file, holes of sparse files included (the default)
//! layer_max_depth = 256         # directories deep (the default)
//! [network]                     # the containers' network
//! enabled = true                # false: containers have only loopback
//! outbound = true               # false: nothing beyond the bridge answers
//! bridge = "kiln0"              # the host's bridge (made when missing)
//! subnet = "10.87.0.0/16"       # the containers' addresses
//! firewall = "auto"             # or "iptables" or "nftables" (auto: iptables if installed)
//! ```

use std::path::{Path, PathBuf};

use anyhow::Context;
use kiln_oci::{ExtractLimits, RegistryConfig};
use kiln_store::KeepStorage;
use serde::{Deserialize, Deserializer};

/// Contents of a kiln config file. Every field is optional.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where kiln keeps its cache, snapshots and database.
    pub state_dir: Option<PathBuf>,
    /// OCI runtime name or path.
    pub runtime: Option<String>,
    /// How many containers may run at once.
    pub parallelism: Option<usize>,
    /// Registry mirrors, insecure registries, credentials.
    pub registry: RegistryConfig,
    /// Garbage collection of the cache.
    pub gc: GcConfig,
    /// What exports to the host may create of what grants privileges there.
    pub export: ExportConfig,
    /// Bounds on what image layers may write.
    pub limits: LimitsConfig,
    /// The engine that clients start.
    pub engine: EngineSettings,
    /// The containers' network.
    pub network: NetworkSettings,
    /// Git sources.
    pub git: GitSettings,
}

/// The `[git]` table.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct GitSettings {
    /// URL prefixes fetched from elsewhere: `"https://github.com/" =
    /// "git://mirror.internal/"` (the first that matches; caches and keys
    /// keep the URL as the pipeline wrote it).
    pub mirrors: std::collections::BTreeMap<String, String>,
}

/// The `[network]` table.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkSettings {
    /// Whether containers get a network (default: yes).
    pub enabled: Option<bool>,
    /// Whether they reach beyond the bridge (default: yes).
    pub outbound: Option<bool>,
    /// The host's bridge (default: `kiln0`).
    pub bridge: Option<String>,
    /// The containers' subnet (default: `10.87.0.0/16`).
    pub subnet: Option<String>,
    /// Which tool sets the firewall rules (default: `iptables` if the host
    /// has it, else `nft`).
    pub firewall: Option<kiln_exec::net::Firewall>,
}

impl NetworkSettings {
    /// The network the engine gives its containers (`None`: loopback only).
    pub fn config(&self) -> anyhow::Result<Option<kiln_exec::net::NetConfig>> {
        if self.enabled == Some(false) {
            return Ok(None);
        }
        let mut config = kiln_exec::net::NetConfig::default();
        if let Some(outbound) = self.outbound {
            config.outbound = outbound;
        }
        if let Some(firewall) = self.firewall {
            config.firewall = firewall;
        }
        if let Some(bridge) = &self.bridge {
            config.bridge = bridge.clone();
        }
        if let Some(subnet) = &self.subnet {
            config.subnet = subnet.parse().with_context(|| {
                format!("[network] subnet {subnet:?}: expected an IPv4 network such as 10.87.0.0/16")
            })?;
        }
        Ok(Some(config))
    }
}

/// The `[engine]` table.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct EngineSettings {
    /// How long an engine that a client started stays without clients
    /// before it stops (`"5m"`, `"1h"`). Default: 5 minutes.
    #[serde(deserialize_with = "duration")]
    pub idle_timeout: Option<std::time::Duration>,
}

impl EngineSettings {
    /// The idle timeout to start engines with.
    pub fn idle_timeout(&self) -> std::time::Duration {
        self.idle_timeout.unwrap_or(crate::engine::IDLE_TIMEOUT)
    }
}

fn duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<std::time::Duration>, D::Error> {
    let text = String::deserialize(d)?;
    kiln_store::parse_duration(&text)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

/// The `[limits]` table: bounds on what one image layer may write, so that
/// a hostile layer cannot exhaust the host.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Most bytes of file content one layer may write.
    #[serde(deserialize_with = "size")]
    pub layer_max_bytes: Option<u64>,
    /// Largest file in a layer (sparse holes included).
    #[serde(deserialize_with = "size")]
    pub layer_max_entry_size: Option<u64>,
    /// Deepest path in a layer, in components.
    pub layer_max_depth: Option<usize>,
}

impl LimitsConfig {
    /// The extraction limits: kiln's defaults where unset.
    pub fn extract_limits(self) -> ExtractLimits {
        let default = ExtractLimits::default();
        ExtractLimits {
            max_total_bytes: self.layer_max_bytes,
            max_entry_size: self.layer_max_entry_size.or(default.max_entry_size),
            max_depth: self.layer_max_depth.unwrap_or(default.max_depth),
        }
    }
}

/// A size: a number of bytes, or text such as `"64GiB"`.
fn size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    match RawSize::deserialize(d)? {
        RawSize::Bytes(b) => Ok(Some(b)),
        RawSize::Text(t) => kiln_store::parse_size(&t).map(Some).map_err(serde::de::Error::custom),
    }
}

/// The `[export]` table: device nodes and setuid/setgid bits from
/// snapshots are withheld from exports to the host unless allowed here.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ExportConfig {
    /// Keep setuid/setgid bits of exported files.
    pub setuid: bool,
    /// Create exported device nodes.
    pub devices: bool,
}

impl ExportConfig {
    /// The policy, with everything allowed when `all` (the CLI flag).
    pub fn policy(self, all: bool) -> kiln_store::HostPolicy {
        kiln_store::HostPolicy {
            setid: all || self.setuid,
            devices: all || self.devices,
        }
    }
}

/// The `[gc]` table.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct GcConfig {
    /// How much the cache may keep: a size (`"20GB"`, `"512MiB"`, or a
    /// number of bytes) or a percentage of the disk available to it (free
    /// space plus what it holds). Default: 25%.
    #[serde(deserialize_with = "keep_storage")]
    pub keep_storage: Option<KeepStorage>,
}

impl GcConfig {
    /// The budget to enforce.
    pub fn budget(&self) -> KeepStorage {
        self.keep_storage.unwrap_or_default()
    }
}

/// A size as written in the config: bytes, or text (`"20GB"`, `"25%"`).
#[derive(Deserialize)]
#[serde(untagged)]
enum RawSize {
    Bytes(u64),
    Text(String),
}

fn keep_storage<'de, D: Deserializer<'de>>(d: D) -> Result<Option<KeepStorage>, D::Error> {
    match RawSize::deserialize(d)? {
        RawSize::Bytes(b) => Ok(Some(KeepStorage::Bytes(b))),
        RawSize::Text(t) => t.parse().map(Some).map_err(serde::de::Error::custom),
    }
}

/// Where the config is read from when no `--config` is given.
pub fn default_path() -> PathBuf {
    if is_root() {
        PathBuf::from("/etc/kiln/kiln.toml")
    } else {
        dirs::config_dir()
            .unwrap_or_else(|| PathBuf::from("."))
            .join("kiln/kiln.toml")
    }
}

/// The state dir used when the config names none.
pub fn default_state_dir() -> PathBuf {
    if is_root() {
        PathBuf::from("/var/lib/kiln")
    } else {
        dirs::data_dir().unwrap_or_else(|| PathBuf::from(".")).join("kiln")
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

impl Config {
    /// Loads `path`; an explicitly given path must exist, the default one
    /// may be absent.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Self> {
        let (path, explicit) = match path {
            Some(p) => (p.to_path_buf(), true),
            None => (default_path(), false),
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if !explicit && e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(e).with_context(|| format!("reading config {}", path.display())),
        };
        toml::from_str(&text).with_context(|| format!("config {} is not valid", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_all_fields_and_rejects_unknown_ones() {
        let c: Config = toml::from_str(
            "state_dir = '/s'\nruntime = 'runc'\nparallelism = 3\n[registry]\ninsecure = ['r:5000']\n[registry.mirrors]\n'docker.io' = ['127.0.0.1:5000']\n",
        )
        .unwrap();
        assert_eq!(c.state_dir.as_deref(), Some(Path::new("/s")));
        assert_eq!(c.runtime.as_deref(), Some("runc"));
        assert_eq!(c.parallelism, Some(3));
        assert_eq!(c.registry.mirrors["docker.io"], ["127.0.0.1:5000"]);
        assert_eq!(
            c.export.policy(false),
            kiln_store::HostPolicy::default(),
            "nothing allowed"
        );
        let c: Config = toml::from_str("[export]\nsetuid = true\n").unwrap();
        assert!(c.export.policy(false).setid && !c.export.policy(false).devices);
        assert!(c.export.policy(true).devices);
        let c: Config = toml::from_str("[limits]\nlayer_max_bytes = '1GB'\nlayer_max_depth = 10\n").unwrap();
        let limits = c.limits.extract_limits();
        assert_eq!(limits.max_total_bytes, Some(1_000_000_000));
        assert_eq!(limits.max_depth, 10);
        assert_eq!(limits.max_entry_size, ExtractLimits::default().max_entry_size);
        let err = toml::from_str::<Config>("stat_dir = '/s'").unwrap_err().to_string();
        assert!(err.contains("unknown field"), "{err}");
    }

    #[test]
    fn reads_the_gc_budget_as_a_size_a_percentage_or_bytes() {
        let budget = |text: &str| toml::from_str::<Config>(text).map(|c| c.gc.budget());
        assert_eq!(budget("").unwrap(), KeepStorage::Percent(25.0));
        assert_eq!(
            budget("[gc]\nkeep_storage = '20GB'").unwrap(),
            KeepStorage::Bytes(20_000_000_000)
        );
        assert_eq!(
            budget("[gc]\nkeep_storage = '10%'").unwrap(),
            KeepStorage::Percent(10.0)
        );
        assert_eq!(budget("[gc]\nkeep_storage = 4096").unwrap(), KeepStorage::Bytes(4096));
        let err = budget("[gc]\nkeep_storage = 'lots'").unwrap_err().to_string();
        assert!(err.contains("invalid size"), "{err}");
    }

    #[test]
    fn explicit_missing_config_is_an_error() {
        let err = Config::load(Some(Path::new("/nonexistent/kiln.toml"))).unwrap_err();
        assert!(format!("{err:#}").contains("/nonexistent/kiln.toml"));
    }
}
