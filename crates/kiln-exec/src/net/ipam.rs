//! Addresses of the bridge's subnet, leased machine-wide with a file per
//! address (created exclusively; it names the engine process holding it),
//! and the names derived from an address: the namespace's bind mount and
//! the host side of its veth pair.

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;

use super::{NetError, io_err};

/// The bridge's own address: the subnet's first host.
pub fn gateway(subnet: &Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network()) + 1)
}

/// Where the namespace of the container holding `address` is mounted.
pub fn namespace_path(dir: &Path, address: Ipv4Addr) -> PathBuf {
    dir.join(format!("{address}.ns"))
}

fn lease_path(dir: &Path, address: Ipv4Addr) -> PathBuf {
    dir.join(format!("{address}.lease"))
}

/// The host side of the veth pair of the container holding `address`
/// (unique while the address is leased; 10 characters).
pub fn host_side_name(address: Ipv4Addr) -> String {
    format!("kv{:08x}", u32::from(address))
}

/// Who holds a lease: a pid and its start time (so that a reused pid does
/// not keep a dead engine's lease alive).
fn holder(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The start time is the 22nd field; the 2nd (the command) may hold
    // spaces, so count from its closing parenthesis.
    let after = &stat[stat.rfind(')')? + 2..];
    let start = after.split(' ').nth(19)?;
    Some(format!("{pid} {start}"))
}

/// Leases a free address of `subnet` (not its network, gateway or
/// broadcast address), starting at a random one.
pub fn lease(dir: &Path, subnet: &Ipv4Net) -> Result<Ipv4Addr, NetError> {
    let me = holder(std::process::id()).unwrap_or_else(|| std::process::id().to_string());
    let first = u32::from(gateway(subnet)) + 1;
    let last = u32::from(subnet.broadcast()) - 1;
    let count = last - first + 1;
    let mut seed = [0u8; 4];
    let _ = getrandom::fill(&mut seed);
    let start = u32::from_ne_bytes(seed) % count;
    for i in 0..count {
        let address = Ipv4Addr::from(first + (start + i) % count);
        let path = lease_path(dir, address);
        match std::fs::OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(mut file) => {
                file.write_all(me.as_bytes()).map_err(io_err("writing", &path))?;
                return Ok(address);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io_err("creating", &path)(e)),
        }
    }
    Err(NetError::Exhausted(*subnet))
}

/// Gives an address back.
pub fn unlease(dir: &Path, address: Ipv4Addr) {
    let path = lease_path(dir, address);
    if let Err(e) = std::fs::remove_file(&path)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!("network: removing the lease {}: {e}", path.display());
    }
}

/// The files of `dir` named after an address: the address, what follows
/// it (`lease`, `ns`) and the path.
fn entries(dir: &Path) -> std::io::Result<Vec<(Ipv4Addr, String, PathBuf)>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if let Some((address, kind)) = name.rsplit_once('.')
            && let Ok(address) = address.parse::<Ipv4Addr>()
        {
            found.push((address, kind.to_string(), path));
        }
    }
    Ok(found)
}

/// Every address with a lease or a namespace in `dir`, once each.
pub fn addresses(dir: &Path) -> std::io::Result<Vec<Ipv4Addr>> {
    let mut addresses: Vec<Ipv4Addr> = entries(dir)?.into_iter().map(|(address, ..)| address).collect();
    addresses.sort();
    addresses.dedup();
    Ok(addresses)
}

/// The addresses leased by processes that are gone, and those of
/// namespaces left without a lease.
pub fn stale_leases(dir: &Path) -> std::io::Result<Vec<Ipv4Addr>> {
    let mut stale = Vec::new();
    for (address, kind, path) in entries(dir)? {
        let gone = match kind.as_str() {
            "lease" => {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                let pid = text.split(' ').next().and_then(|p| p.parse::<u32>().ok());
                pid.is_none_or(|pid| holder(pid).as_deref() != Some(text.trim()))
            }
            "ns" => !lease_path(dir, address).exists(),
            _ => false,
        };
        if gone && !stale.contains(&address) {
            stale.push(address);
        }
    }
    Ok(stale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_every_free_address_once_then_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let subnet: Ipv4Net = "10.9.0.0/29".parse().unwrap();
        assert_eq!(gateway(&subnet), Ipv4Addr::new(10, 9, 0, 1));
        let mut got: Vec<Ipv4Addr> = (0..5).map(|_| lease(dir.path(), &subnet).unwrap()).collect();
        got.sort();
        let expected: Vec<Ipv4Addr> = (2..=6).map(|i| Ipv4Addr::new(10, 9, 0, i)).collect();
        assert_eq!(
            got, expected,
            "neither the network, the gateway nor the broadcast address"
        );
        assert!(matches!(lease(dir.path(), &subnet), Err(NetError::Exhausted(_))));
        unlease(dir.path(), got[2]);
        assert_eq!(lease(dir.path(), &subnet).unwrap(), got[2]);
        assert!(
            stale_leases(dir.path()).unwrap().is_empty(),
            "this process holds them all"
        );
    }

    #[test]
    fn leases_of_processes_that_are_gone_are_stale() {
        let dir = tempfile::tempdir().unwrap();
        let subnet: Ipv4Net = "10.9.0.0/24".parse().unwrap();
        let mine = lease(dir.path(), &subnet).unwrap();
        let gone = Ipv4Addr::new(10, 9, 0, 77);
        // A pid that cannot exist (over the kernel's maximum).
        std::fs::write(lease_path(dir.path(), gone), "4294967295 1").unwrap();
        // A live pid with another start time: a reused pid.
        let reused = Ipv4Addr::new(10, 9, 0, 78);
        std::fs::write(lease_path(dir.path(), reused), format!("{} 1", std::process::id())).unwrap();
        // A namespace mount without its lease.
        let orphan = Ipv4Addr::new(10, 9, 0, 79);
        std::fs::write(namespace_path(dir.path(), orphan), "").unwrap();
        let mut stale = stale_leases(dir.path()).unwrap();
        stale.sort();
        assert_eq!(stale, vec![gone, reused, orphan]);
        assert!(!stale.contains(&mine));
    }
}
