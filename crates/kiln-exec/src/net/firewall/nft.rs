//! The rules through `nft`, for hosts without `iptables`: a table of their
//! own named after the bridge, replaced atomically. Its forward chain
//! accepts the bridge's traffic, but cannot overrule a drop in another
//! table at the same hook (a host firewall dropping forwarded packets must
//! let the bridge through, or use `iptables`).

use std::io::Write;
use std::process::{Command, Stdio};

use super::marker;
use crate::net::{NetConfig, NetError};

/// Whether `nft` can be run.
pub fn available() -> bool {
    super::runs("nft")
}

/// The table of `config`'s bridge (nft names take letters, digits and `_`).
fn table(config: &NetConfig) -> String {
    let bridge: String = config
        .bridge
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    format!("kiln_{bridge}")
}

/// Runs `nft` with `script` on its standard input.
fn nft(script: &str) -> Result<(), String> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running nft: {e}"))?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(script.as_bytes())
        .map_err(|e| format!("running nft: {e}"))?;
    let out = child.wait_with_output().map_err(|e| format!("running nft: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("nft: {}", String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// Whether the rules for `config` are in place already.
pub fn current(config: &NetConfig) -> bool {
    Command::new("nft")
        .args(["list", "table", "ip", &table(config)])
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains(&marker(config)))
}

/// Sets up forwarding and NAT for `config`'s bridge, replacing the table an
/// earlier engine made for it, in one transaction.
pub fn install(config: &NetConfig) -> Result<(), NetError> {
    let (table, bridge, subnet) = (table(config), &config.bridge, config.subnet);
    let leaving = if config.outbound {
        format!("iifname \"{bridge}\" accept")
    } else {
        format!("iifname \"{bridge}\" reject with icmp type net-prohibited")
    };
    let script = format!(
        "table ip {table}\n\
         delete table ip {table}\n\
         table ip {table} {{\n\
           chain forward {{\n\
             type filter hook forward priority filter; policy accept;\n\
             counter comment \"{marker}\"\n\
             iifname \"{bridge}\" oifname \"{bridge}\" accept\n\
             oifname \"{bridge}\" ct state related,established accept\n\
             {leaving}\n\
           }}\n\
           chain postrouting {{\n\
             type nat hook postrouting priority srcnat; policy accept;\n\
             ip saddr {subnet} ip daddr != {subnet} masquerade\n\
           }}\n\
         }}\n",
        marker = marker(config)
    );
    nft(&script).map_err(NetError::Firewall)
}

/// Removes the table [`install`] made for `config`'s bridge.
pub fn uninstall(config: &NetConfig) {
    let table = table(config);
    let _ = nft(&format!("table ip {table}\ndelete table ip {table}\n"));
}
