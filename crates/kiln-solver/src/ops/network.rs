//! An exec's place on the engine's network: its own namespace joined to
//! the bridge, and the `/etc/resolv.conf` and `/etc/hosts` it sees (copies
//! of its own, so that what it writes there goes nowhere).

use std::fs;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use kiln_exec::net::Attachment;
use kiln_exec::{Bind, RunSpec};
use kiln_store::SnapshotId;

use super::Context;
use crate::SolveError;
use crate::error::Context as _;

/// An exec's network, released (namespace, address, files) when dropped.
pub(crate) struct Networked {
    attachment: Attachment,
    files: PathBuf,
}

impl Networked {
    /// The container's address.
    pub(crate) fn address(&self) -> Ipv4Addr {
        self.attachment.address()
    }
}

impl Drop for Networked {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.files);
    }
}

/// Joins the container of `spec` to the engine's network, if it has one;
/// `names` are more `/etc/hosts` lines (the services it is bound to), and
/// `own_name` another name of its own (a service's host name).
pub(crate) async fn attach(
    cx: &Context<'_>,
    spec: &mut RunSpec,
    id: SnapshotId,
    names: String,
    own_name: Option<&str>,
) -> Result<Option<Networked>, SolveError> {
    let Some(network) = cx.network().cloned() else {
        return Ok(None);
    };
    let files = cx.store().run_dir().join(format!("net-{id}"));
    let own_name = own_name.map(str::to_string);
    let networked = cx
        .blocking(move |_| {
            let attachment = network.attach()?;
            fs::create_dir_all(&files).context(|| format!("creating {}", files.display()))?;
            let networked = Networked { attachment, files };
            let address = networked.attachment.address();
            write(&networked.files.join("resolv.conf"), &resolv_conf())?;
            let mut hosts = hosts(address, own_name.as_deref());
            hosts.push_str(&names);
            write(&networked.files.join("hosts"), &hosts)?;
            Ok(networked)
        })
        .await?;
    spec.network = Some(networked.attachment.namespace().to_path_buf());
    for name in ["resolv.conf", "hosts"] {
        spec.binds.push(Bind {
            source: networked.files.join(name),
            target: format!("/etc/{name}"),
            readonly: false,
        });
    }
    Ok(Some(networked))
}

fn write(path: &Path, text: &str) -> Result<(), crate::Cause> {
    fs::write(path, text).context(|| format!("writing {}", path.display()))
}

/// The container's `/etc/hosts`: loopback and its own names.
fn hosts(address: Ipv4Addr, own_name: Option<&str>) -> String {
    let names = [Some(kiln_exec::spec::HOSTNAME), own_name].into_iter().flatten();
    format!(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{address}\t{}\n",
        names.collect::<Vec<_>>().join(" ")
    )
}

/// The container's `/etc/resolv.conf`: the host's name servers that a
/// container can reach (not the host's loopback ones, e.g. systemd-resolved's
/// stub, whose upstream servers are used instead), its search domains and
/// options.
fn resolv_conf() -> String {
    let read = |path: &str| fs::read_to_string(path).unwrap_or_default();
    let host = usable(&read("/etc/resolv.conf"));
    if host.lines().any(|l| l.starts_with("nameserver")) {
        return host;
    }
    let upstream = usable(&read("/run/systemd/resolve/resolv.conf"));
    if upstream.lines().any(|l| l.starts_with("nameserver")) {
        return upstream;
    }
    tracing::warn!(
        "network: the host names no name server a container can reach (only loopback ones in /etc/resolv.conf): \
         names will not resolve in containers"
    );
    host
}

/// The lines of a resolv.conf that make sense in a container.
fn usable(resolv: &str) -> String {
    resolv
        .lines()
        .map(str::trim)
        .filter(|line| match line.split_whitespace().collect::<Vec<_>>().as_slice() {
            ["nameserver", server, ..] => server.parse::<IpAddr>().is_ok_and(|ip| !ip.is_loopback()),
            ["search" | "domain" | "options", ..] => true,
            _ => false,
        })
        .map(|line| format!("{line}\n"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_reachable_name_servers_and_search_domains() {
        let host = "# generated\nnameserver 127.0.0.53\nnameserver 10.1.2.3\nnameserver ::1\nsearch corp.example\n\
                    options edns0 trust-ad\nsortlist 1.2.3.4\n";
        assert_eq!(
            usable(host),
            "nameserver 10.1.2.3\nsearch corp.example\noptions edns0 trust-ad\n"
        );
        assert_eq!(usable("nameserver 127.0.0.53\n"), "");
    }
}
