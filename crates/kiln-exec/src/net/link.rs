//! Links, addresses and routes, through netlink (rtnetlink): the bridge,
//! and a container's namespace with its veth pair. Each call runs on a
//! thread of its own with a small runtime, since making a namespace changes
//! the calling thread's.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::path::Path;

use futures::TryStreamExt;
use rtnetlink::packet_route::link::{InfoData, InfoVeth, LinkAttribute};
use rtnetlink::{Handle, LinkBridge, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};

use super::NetError;

/// Runs `work` with a netlink handle opened in this thread's namespace, on
/// a thread of its own.
fn on_own_thread<T, F, Fut>(op: &str, work: F) -> Result<T, NetError>
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, NetError>>,
{
    let op = op.to_string();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(|source| NetError::Netlink { op: op.clone(), source })?;
        runtime.block_on(work())
    })
    .join()
    .unwrap_or_else(|_| {
        Err(NetError::Netlink {
            op: "a netlink thread panicked".into(),
            source: std::io::Error::other("panic"),
        })
    })
}

/// A netlink connection in the calling thread's current namespace.
fn connect(op: &str) -> Result<Handle, NetError> {
    let (connection, handle, _) = rtnetlink::new_connection().map_err(|source| NetError::Netlink {
        op: format!("{op}: opening a netlink socket"),
        source,
    })?;
    tokio::spawn(connection);
    Ok(handle)
}

fn failed(op: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetError {
    let op = op.into();
    move |e| NetError::Netlink {
        op,
        source: match e {
            rtnetlink::Error::NetlinkError(m) => m.to_io(),
            other => std::io::Error::other(other.to_string()),
        },
    }
}

/// Whether a netlink error is the kernel's `code` (`libc::EEXIST`, ...).
fn is(e: &rtnetlink::Error, code: i32) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.raw_code() == -code)
}

/// The index of the link `name`, if there is one.
async fn index_of(handle: &Handle, name: &str) -> Result<Option<u32>, NetError> {
    let found = handle
        .link()
        .get()
        .match_name(name.to_string())
        .execute()
        .try_next()
        .await;
    match found {
        Ok(link) => Ok(link.map(|l| l.header.index)),
        Err(e) if is(&e, libc::ENODEV) => Ok(None),
        Err(e) => Err(failed(format!("looking up {name}"))(e)),
    }
}

/// Creates the bridge `name` with the address `gateway/prefix` unless it
/// exists, and brings it up; its index.
pub fn ensure_bridge(name: &str, gateway: Ipv4Addr, prefix: u8) -> Result<u32, NetError> {
    let name = name.to_string();
    on_own_thread("setting up the bridge", move || async move {
        let handle = connect("setting up the bridge")?;
        if index_of(&handle, &name).await?.is_none() {
            match handle.link().add(LinkBridge::new(&name).build()).execute().await {
                Err(e) if !is(&e, libc::EEXIST) => return Err(failed(format!("creating the bridge {name}"))(e)),
                _ => {}
            }
        }
        let index = index_of(&handle, &name)
            .await?
            .ok_or_else(|| NetError::Config(format!("the bridge {name} vanished while kiln set it up")))?;
        match handle.address().add(index, IpAddr::V4(gateway), prefix).execute().await {
            Err(e) if !is(&e, libc::EEXIST) => {
                return Err(failed(format!("giving {name} the address {gateway}/{prefix}"))(e));
            }
            _ => {}
        }
        handle
            .link()
            .set(LinkUnspec::new_with_index(index).up().build())
            .execute()
            .await
            .map_err(failed(format!("bringing {name} up")))?;
        Ok(index)
    })
}

/// What joins a new namespace to the bridge.
pub struct Endpoint<'a> {
    /// Where the namespace is mounted (made here).
    pub namespace: &'a Path,
    /// The host side of the veth pair (the container side is `eth0`).
    pub host_side: &'a str,
    pub address: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Ipv4Addr,
    pub bridge_index: u32,
}

/// Makes a network namespace, mounts it at `endpoint.namespace`, and joins
/// it to the bridge: `eth0` with the address and a default route through
/// the gateway, and `lo`, both up.
pub fn create_namespace(endpoint: &Endpoint<'_>) -> Result<(), NetError> {
    let namespace = endpoint.namespace.to_path_buf();
    let host_side = endpoint.host_side.to_string();
    let (address, prefix, gateway, bridge) = (
        endpoint.address,
        endpoint.prefix,
        endpoint.gateway,
        endpoint.bridge_index,
    );
    on_own_thread("making a namespace", move || async move {
        // Opened before the thread leaves the host's namespace: this
        // socket stays there.
        let host = connect("making a namespace")?;
        mount_new_namespace(&namespace)?;
        let inside = connect("configuring a namespace")?;
        let ns_file = std::fs::File::open(&namespace).map_err(super::io_err("opening", &namespace))?;
        let peer = LinkMessageBuilder::<LinkUnspec>::new()
            .name("eth0".into())
            .setns_by_fd(ns_file.as_raw_fd())
            .build();
        let mut veth = LinkVeth::new(&host_side, "eth0").build();
        for attribute in &mut veth.attributes {
            if let LinkAttribute::LinkInfo(infos) = attribute {
                for info in infos.iter_mut() {
                    if let rtnetlink::packet_route::link::LinkInfo::Data(data) = info {
                        *data = InfoData::Veth(InfoVeth::Peer(peer.clone()));
                    }
                }
            }
        }
        host.link()
            .add(veth)
            .execute()
            .await
            .map_err(failed(format!("creating the veth pair {host_side}")))?;
        host.link()
            .set(LinkUnspec::new_with_name(&host_side).controller(bridge).up().build())
            .execute()
            .await
            .map_err(failed(format!("joining {host_side} to the bridge")))?;
        let eth0 = index_of(&inside, "eth0")
            .await?
            .ok_or_else(|| NetError::Config("eth0 did not arrive in the container's namespace".into()))?;
        let lo = index_of(&inside, "lo").await?.unwrap_or(1);
        inside
            .address()
            .add(eth0, IpAddr::V4(address), prefix)
            .execute()
            .await
            .map_err(failed(format!("giving eth0 the address {address}/{prefix}")))?;
        for (index, name) in [(eth0, "eth0"), (lo, "lo")] {
            inside
                .link()
                .set(LinkUnspec::new_with_index(index).up().build())
                .execute()
                .await
                .map_err(failed(format!("bringing {name} up")))?;
        }
        inside
            .route()
            .add(RouteMessageBuilder::<Ipv4Addr>::new().gateway(gateway).build())
            .execute()
            .await
            .map_err(failed(format!("routing through {gateway}")))?;
        Ok(())
    })
}

/// Moves this thread into a new network namespace and bind-mounts it at
/// `path` (so that it outlives the thread).
fn mount_new_namespace(path: &Path) -> Result<(), NetError> {
    std::fs::File::create(path).map_err(super::io_err("creating", path))?;
    // SAFETY: only the network namespace is unshared (never the file
    // descriptor table), on a thread that ends after this work.
    unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNET) }
        .map_err(|e| super::io_err("making a network namespace for", path)(e.into()))?;
    rustix::mount::mount_bind("/proc/thread-self/ns/net", path).map_err(|e| super::io_err("mounting", path)(e.into()))
}

/// Deletes the link `name` if there is one.
pub fn remove_link(name: &str) -> Result<(), NetError> {
    let name = name.to_string();
    on_own_thread("removing a link", move || async move {
        let handle = connect("removing a link")?;
        if let Some(index) = index_of(&handle, &name).await? {
            match handle.link().del(index).execute().await {
                Err(e) if is(&e, libc::ENODEV) => {}
                other => other.map_err(failed(format!("deleting {name}")))?,
            }
        }
        Ok(())
    })
}

/// Runs `work` on a thread of its own that has entered the network
/// namespace mounted at `path` (the caller's thread stays where it is).
fn in_namespace<T: Send + 'static>(
    path: &Path,
    work: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    let file = std::fs::File::open(path)?;
    std::thread::spawn(move || {
        use std::os::fd::AsFd;
        rustix::thread::move_into_link_name_space(file.as_fd(), Some(rustix::thread::LinkNameSpaceType::Network))?;
        work()
    })
    .join()
    .unwrap_or_else(|_| Err(std::io::Error::other("a namespace thread panicked")))
}

/// Whether the namespace mounted at `path` holds no TCP socket (none
/// listening, connected or in TIME_WAIT), as its own `/proc/net/tcp*` say.
pub fn quiet(path: &Path) -> bool {
    in_namespace(path, || {
        Ok(["/proc/thread-self/net/tcp", "/proc/thread-self/net/tcp6"]
            .iter()
            .all(|table| {
                // A header line, then a line per socket.
                std::fs::read_to_string(table).is_ok_and(|t| t.lines().count() <= 1)
            }))
    })
    .unwrap_or(false)
}

/// A TCP listener on `address` made in the namespace mounted at `path`: a
/// socket stays in the namespace it was made in, so the engine can accept
/// connections there from any thread.
pub fn listen_in(path: &Path, address: std::net::SocketAddr) -> std::io::Result<std::net::TcpListener> {
    in_namespace(path, move || {
        let listener = std::net::TcpListener::bind(address)?;
        listener.set_nonblocking(true)?;
        Ok(listener)
    })
}

/// Unmounts and removes the namespace mounted at `path` (the kernel frees
/// it once no process is left in it). What is already gone is fine.
pub fn unmount_namespace(path: &Path) -> Result<(), NetError> {
    match rustix::mount::unmount(path, rustix::mount::UnmountFlags::DETACH) {
        Ok(()) | Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::NOENT) => {}
        Err(e) => return Err(super::io_err("unmounting", path)(e.into())),
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(super::io_err("removing", path)(e)),
        _ => Ok(()),
    }
}
