//! The host's firewall rules for the bridge: forwarding between the bridge
//! and the world, masquerading what leaves, or refusing it when outbound
//! traffic is off. Through `iptables` when the host has it (its rules work
//! beside the host's own), else `nft`; or as the config says. Rules carry
//! a comment naming the config, so an engine whose rules are current
//! changes nothing.

mod iptables;
mod nft;

use serde::{Deserialize, Serialize};

use super::{NetConfig, NetError};

/// Which tool sets the rules.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Firewall {
    /// `iptables` if the host has it, else `nft`.
    #[default]
    Auto,
    Iptables,
    Nftables,
}

/// Whether `program --version` runs (the tool is installed and works).
fn runs(program: &str) -> bool {
    std::process::Command::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// What the rules' comment says of `config`.
fn marker(config: &NetConfig) -> String {
    format!("kiln subnet={} outbound={}", config.subnet, config.outbound)
}

/// The tool `config` asks for, if the host has it.
fn chosen(config: &NetConfig) -> Result<Firewall, NetError> {
    let missing = |what: &str| {
        NetError::Firewall(format!(
            "{what}, and the containers' network needs one (for NAT, or to refuse outbound traffic): apt-get \
             install iptables (or nftables), or give containers only loopback with [network] enabled = false in \
             kiln.toml"
        ))
    };
    match config.firewall {
        Firewall::Auto if iptables::available() => Ok(Firewall::Iptables),
        Firewall::Auto if nft::available() => Ok(Firewall::Nftables),
        Firewall::Auto => Err(missing("neither iptables nor nft is installed")),
        Firewall::Iptables if !iptables::available() => Err(missing("iptables is not installed")),
        Firewall::Nftables if !nft::available() => Err(missing("nft is not installed")),
        chosen => Ok(chosen),
    }
}

/// Sets up forwarding and NAT for `config`'s bridge, unless they are in
/// place already; the other tool's rules for the bridge are removed.
pub fn install(config: &NetConfig) -> Result<(), NetError> {
    let firewall = chosen(config)?;
    let forwarding_on = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").is_ok_and(|v| v.trim() == "1");
    let current = match firewall {
        Firewall::Nftables => nft::current(config),
        _ => iptables::current(config),
    };
    if forwarding_on && current {
        return Ok(());
    }
    // Forwarding is off on a fresh host; containers need it either way
    // (between the bridge and the world, or to be refused politely).
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
        .map_err(|e| NetError::Firewall(format!("turning on IPv4 forwarding: {e}")))?;
    match firewall {
        Firewall::Nftables => {
            if iptables::available() {
                iptables::uninstall(config);
            }
            nft::install(config)
        }
        _ => {
            if nft::available() {
                nft::uninstall(config);
            }
            iptables::install(config)
        }
    }
}

/// Removes the rules either tool set for `config`'s bridge.
pub fn uninstall(config: &NetConfig) {
    if iptables::available() {
        iptables::uninstall(config);
    }
    if nft::available() {
        nft::uninstall(config);
    }
}
