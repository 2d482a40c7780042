//! Container networking: a kiln bridge on the host, a network namespace per
//! container joined to it by a veth pair, an address of the bridge's
//! subnet for each, and outbound traffic NATed through the host (or
//! refused, when the config turns it off).
//!
//! A namespace whose container ended is kept for the next container when
//! nothing of the last one is left in it (no TCP socket, not even one in
//! TIME_WAIT that could keep a port busy): containers cannot change their
//! namespace's configuration (no CAP_NET_ADMIN), so it is as new, and the
//! next container pays nothing for its network.
//!
//! Addresses are leased machine-wide (several engines, for different state
//! directories, may share a bridge): a lease is a file named after the
//! address in `/run/kiln/net/<bridge>/`, created exclusively and holding
//! the pid of its engine, next to the namespace's bind mount. An engine
//! that starts removes the leases and namespaces of engines that are gone.

mod firewall;
mod ipam;
mod link;

use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

pub use firewall::Firewall;
pub use ipnet::Ipv4Net;

/// How containers are networked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    /// The host's bridge (created when missing).
    pub bridge: String,
    /// The containers' subnet; the bridge takes its first address.
    pub subnet: Ipv4Net,
    /// Whether containers reach beyond the bridge (NATed through the host).
    pub outbound: bool,
    /// Which tool sets the firewall rules.
    pub firewall: Firewall,
}

impl Default for NetConfig {
    fn default() -> Self {
        Self {
            bridge: "kiln0".into(),
            subnet: "10.87.0.0/16".parse().expect("a valid subnet"),
            outbound: true,
            firewall: Firewall::Auto,
        }
    }
}

/// Networking that failed, with what was being done.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A netlink request (links, addresses, routes).
    #[error("network: {op}: {source}")]
    Netlink { op: String, source: std::io::Error },
    /// A file of the leases or namespaces.
    #[error("network: {op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// The firewall (NAT) could not be set up.
    #[error("network: {0}")]
    Firewall(String),
    /// Every address of the subnet is leased.
    #[error("network: no free address in {0} (widen network.subnet in kiln.toml)")]
    Exhausted(Ipv4Net),
    /// The config cannot work.
    #[error("network: {0}")]
    Config(String),
    /// Containers of running engines still use the bridge.
    #[error("network: {containers} containers of running engines still use bridge {bridge}: stop those engines first")]
    InUse { bridge: String, containers: usize },
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> NetError + use<> {
    let path = path.to_path_buf();
    move |source| NetError::Io { op, path, source }
}

/// The bridge and its leases, for one engine.
#[derive(Debug)]
pub struct Network {
    config: NetConfig,
    gateway: Ipv4Addr,
    bridge_index: u32,
    /// Leases and namespace mounts.
    dir: PathBuf,
    /// Releases still running in the background.
    releasing: (Mutex<usize>, Condvar),
    /// Of those, the ones still deciding whether to keep their namespace.
    checking: (Mutex<usize>, Condvar),
    /// Namespaces ready for a container (their addresses), oldest first.
    idle: Mutex<VecDeque<Ipv4Addr>>,
}

/// The most namespaces kept ready for containers.
const MAX_IDLE: usize = 32;

/// Where leases and namespaces of a bridge live.
pub fn default_dir(bridge: &str) -> PathBuf {
    Path::new("/run/kiln/net").join(bridge)
}

impl Network {
    /// Sets up the bridge (once per boot), forwarding and the NAT rules,
    /// and removes what engines that are gone left behind in `dir`.
    pub fn start(config: NetConfig, dir: &Path) -> Result<Arc<Self>, NetError> {
        if config.subnet.prefix_len() > 30 {
            return Err(NetError::Config(format!(
                "network.subnet {} is too small: containers need a /30 or wider",
                config.subnet
            )));
        }
        if config.bridge.is_empty() || config.bridge.len() > 15 {
            return Err(NetError::Config(format!(
                "network.bridge {:?}: an interface name has 1 to 15 characters",
                config.bridge
            )));
        }
        std::fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
        // Engines of other state directories may start at the same time.
        let lock_path = dir.join(".lock");
        let lock = std::fs::File::create(&lock_path).map_err(io_err("creating", &lock_path))?;
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| io_err("locking", &lock_path)(e.into()))?;
        let gateway = ipam::gateway(&config.subnet);
        for stale in ipam::stale_leases(dir).map_err(io_err("listing", dir))? {
            release(dir, stale);
        }
        let bridge_index = link::ensure_bridge(&config.bridge, gateway, config.subnet.prefix_len())?;
        firewall::install(&config)?;
        Ok(Arc::new(Self {
            config,
            gateway,
            bridge_index,
            dir: dir.to_path_buf(),
            releasing: (Mutex::new(0), Condvar::new()),
            checking: (Mutex::new(0), Condvar::new()),
            idle: Mutex::new(VecDeque::new()),
        }))
    }

    /// [`Network::teardown`], unless a container of a running engine still
    /// uses the bridge.
    pub fn remove(config: &NetConfig, dir: &Path) -> Result<(), NetError> {
        let leased = ipam::addresses(dir).unwrap_or_default();
        let stale = ipam::stale_leases(dir).unwrap_or_default();
        let live = leased.iter().filter(|a| !stale.contains(a)).count();
        if live > 0 {
            return Err(NetError::InUse {
                bridge: config.bridge.clone(),
                containers: live,
            });
        }
        Self::teardown(config, dir)
    }

    /// Removes the bridge's firewall rules, its namespaces and leases, and
    /// the bridge (uninstalling; tests with bridges of their own).
    pub fn teardown(config: &NetConfig, dir: &Path) -> Result<(), NetError> {
        for address in ipam::addresses(dir).unwrap_or_default() {
            release(dir, address);
        }
        firewall::uninstall(config);
        link::remove_link(&config.bridge)?;
        match std::fs::remove_dir_all(dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err("removing", dir)(e)),
            _ => Ok(()),
        }
    }

    /// Waits until the attachments dropped so far are released or kept,
    /// then releases the namespaces kept for later containers (an engine
    /// that stops leaves nothing behind).
    pub fn settle(&self) {
        self.quiesce();
        let idle: Vec<Ipv4Addr> = self.idle.lock().expect("idle lock").drain(..).collect();
        for address in idle {
            release(&self.dir, address);
        }
    }

    /// Waits until the attachments dropped so far are released or kept.
    pub fn quiesce(&self) {
        let (count, done) = &self.releasing;
        let mut count = count.lock().expect("releasing lock");
        while *count > 0 {
            count = done.wait(count).expect("releasing lock");
        }
    }

    /// The config this network runs with.
    pub fn config(&self) -> &NetConfig {
        &self.config
    }

    /// The bridge's address: the containers' gateway.
    pub fn gateway(&self) -> Ipv4Addr {
        self.gateway
    }

    /// A namespace kept from an earlier container: one ready now, else one
    /// whose check (well under a millisecond) is under way, for which it
    /// waits a little, since making a new one costs a few milliseconds.
    fn kept(&self) -> Option<Ipv4Addr> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_millis(3);
        let (count, checked) = &self.checking;
        let mut count = count.lock().expect("checking lock");
        loop {
            if let Some(address) = self.idle.lock().expect("idle lock").pop_front() {
                return Some(address);
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if *count == 0 || left.is_zero() {
                return None;
            }
            count = checked.wait_timeout(count, left).expect("checking lock").0;
        }
    }

    /// A new network namespace joined to the bridge, with an address of its
    /// own; released (namespace, veth pair, address) when dropped.
    pub fn attach(self: &Arc<Self>) -> Result<Attachment, NetError> {
        let attachment = |address, ready| Attachment {
            network: self.clone(),
            address,
            namespace: ipam::namespace_path(&self.dir, address),
            ready,
        };
        if let Some(address) = self.kept() {
            return Ok(attachment(address, true));
        }
        // Not ready until made whole: one that failed halfway is released
        // when dropped, never kept for the next container.
        let mut attachment = attachment(ipam::lease(&self.dir, &self.config.subnet)?, false);
        let address = attachment.address;
        link::create_namespace(&link::Endpoint {
            namespace: &attachment.namespace,
            host_side: &ipam::host_side_name(address),
            address,
            prefix: self.config.subnet.prefix_len(),
            gateway: self.gateway,
            bridge_index: self.bridge_index,
        })?;
        attachment.ready = true;
        Ok(attachment)
    }
}

/// A container's place on the network: its namespace (a bind mount to
/// give the runtime) and its address.
#[derive(Debug)]
pub struct Attachment {
    network: Arc<Network>,
    address: Ipv4Addr,
    namespace: PathBuf,
    /// Whether the namespace was made whole (else it is never kept).
    ready: bool,
}

impl Attachment {
    /// The network namespace, for the runtime's spec.
    pub fn namespace(&self) -> &Path {
        &self.namespace
    }

    /// The container's address.
    pub fn address(&self) -> Ipv4Addr {
        self.address
    }

    /// A TCP listener on `port` of this address, in this namespace (for a
    /// proxy that stands in for a host port on the network).
    pub fn listen(&self, port: u16) -> std::io::Result<std::net::TcpListener> {
        link::listen_in(&self.namespace, (self.address, port).into())
    }
}

impl Drop for Attachment {
    /// Kept for the next container when nothing of this one is left in it,
    /// else released; in the background either way (deleting a veth pair
    /// waits for the kernel, tens of milliseconds), off the container's
    /// critical path.
    fn drop(&mut self) {
        let (network, address, namespace, ready) =
            (self.network.clone(), self.address, self.namespace.clone(), self.ready);
        *network.releasing.0.lock().expect("releasing lock") += 1;
        *network.checking.0.lock().expect("checking lock") += 1;
        std::thread::spawn(move || {
            let kept = ready && link::quiet(&namespace) && {
                let mut idle = network.idle.lock().expect("idle lock");
                let room = idle.len() < MAX_IDLE;
                if room {
                    idle.push_back(address);
                }
                room
            };
            let (count, checked) = &network.checking;
            *count.lock().expect("checking lock") -= 1;
            checked.notify_all();
            if !kept {
                release(&network.dir, address);
            }
            let (count, done) = &network.releasing;
            *count.lock().expect("releasing lock") -= 1;
            done.notify_all();
        });
    }
}

/// Removes a namespace, its veth pair and its lease.
fn release(dir: &Path, address: Ipv4Addr) {
    let namespace = ipam::namespace_path(dir, address);
    if let Err(e) = link::remove_link(&ipam::host_side_name(address)).and_then(|_| link::unmount_namespace(&namespace))
    {
        tracing::warn!("network: removing the namespace {}: {e}", namespace.display());
    }
    ipam::unlease(dir, address);
}
