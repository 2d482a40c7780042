//! Root only: container networking on a bridge of the test's own (its own
//! name, subnet and lease directory, so that it never meets an engine's),
//! reaching a server in a namespace standing in for the internet.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::time::Duration;

use kiln_exec::net::{Firewall, NetConfig, Network};

/// Runs `f` on a thread that joined the network namespace at `path`.
fn in_namespace<T: Send + 'static>(path: &Path, f: impl FnOnce() -> T + Send + 'static) -> T {
    let file = std::fs::File::open(path).unwrap();
    std::thread::spawn(move || {
        rustix::thread::move_into_link_name_space(
            std::os::fd::AsFd::as_fd(&file),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .unwrap();
        f()
    })
    .join()
    .unwrap()
}

/// A server in the stand-in internet that answers each connection with
/// the address it came from.
fn serve_peers(internet: &kiln_testkit::NetNs) -> SocketAddr {
    let inner: Ipv4Addr = internet.inner.parse().unwrap();
    let listener = in_namespace(&internet.path(), move || TcpListener::bind((inner, 0)).unwrap());
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let peer = stream.peer_addr().unwrap().ip().to_string();
            let _ = stream.write_all(peer.as_bytes());
        }
    });
    addr
}

/// What a connection from the namespace at `path` to `server` reads.
fn fetch(path: &Path, server: SocketAddr) -> std::io::Result<String> {
    in_namespace(path, move || {
        let mut stream = TcpStream::connect_timeout(&server, Duration::from_secs(20))?;
        let mut seen = String::new();
        stream.read_to_string(&mut seen)?;
        Ok(seen)
    })
}

/// The TCP sockets of the namespace at `path`, as its own `/proc/net` says.
fn tcp_sockets(path: &Path) -> usize {
    in_namespace(path, || {
        ["/proc/thread-self/net/tcp", "/proc/thread-self/net/tcp6"]
            .iter()
            .map(|t| std::fs::read_to_string(t).unwrap().lines().count() - 1)
            .sum()
    })
}

fn link_exists(name: &str) -> bool {
    std::process::Command::new("ip")
        .args(["link", "show", name])
        .output()
        .unwrap()
        .status
        .success()
}

/// The test's bridge, removed with everything on it when dropped.
struct TestNetwork {
    config: NetConfig,
    dir: tempfile::TempDir,
}

impl Drop for TestNetwork {
    fn drop(&mut self) {
        let _ = Network::teardown(&self.config, self.dir.path());
    }
}

#[test]
fn root_containers_reach_the_world_through_nat_and_leave_nothing_behind() {
    if !kiln_testkit::require_root() {
        return;
    }
    let internet = kiln_testkit::NetNs::new("10.232");
    let server = serve_peers(&internet);
    let n = std::process::id() % 200 + 20;
    let test = TestNetwork {
        config: NetConfig {
            bridge: format!("kt{n}"),
            subnet: format!("10.233.{n}.0/24").parse().unwrap(),
            ..NetConfig::default()
        },
        dir: tempfile::tempdir().unwrap(),
    };
    let network = Network::start(test.config.clone(), test.dir.path()).unwrap();

    let attached = network.attach().unwrap();
    assert!(
        test.config.subnet.contains(&attached.address()),
        "{}",
        attached.address()
    );
    assert_ne!(attached.address(), network.gateway());
    let seen = fetch(attached.namespace(), server).unwrap();
    assert_eq!(seen, internet.outer, "the server sees the host's address (masqueraded)");
    // Two containers at once have addresses of their own.
    let other = network.attach().unwrap();
    assert_ne!(other.address(), attached.address());
    assert_eq!(fetch(other.namespace(), server).unwrap(), internet.outer);

    // Released: the namespace, the veth pair and the lease.
    let (path, host_side) = (
        attached.namespace().to_path_buf(),
        format!("kv{:08x}", u32::from(attached.address())),
    );
    assert!(link_exists(&host_side));
    // A namespace nothing is left in serves the next container as it is;
    // one that holds a TCP socket (here, a listener) does not. Namespaces
    // are told apart by their inode (an address, and so a path, may come
    // back).
    let identity = |path: &Path| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(path).unwrap());
    let first = identity(&path);
    kiln_testkit::poll_until("the fetch's connection is closed", || tcp_sockets(&path) == 0);
    drop(attached);
    network.quiesce();
    let again = network.attach().unwrap();
    assert_eq!(identity(again.namespace()), first, "the quiet namespace is used again");
    let listener = in_namespace(&path, move || TcpListener::bind("0.0.0.0:0").unwrap());
    drop(again);
    network.quiesce();
    let fresh = network.attach().unwrap();
    assert_ne!(
        identity(fresh.namespace()),
        first,
        "a namespace with a socket left is not used again"
    );
    drop(listener);
    drop(fresh);
    network.settle();
    assert!(!path.exists(), "the namespace is unmounted and removed");
    assert!(!link_exists(&host_side), "the veth pair is gone");

    // An engine that died left a container's namespace behind: the next
    // one to start removes it.
    let leaked = network.attach().unwrap();
    let (path, host_side) = (
        leaked.namespace().to_path_buf(),
        format!("kv{:08x}", u32::from(leaked.address())),
    );
    let lease = test.dir.path().join(format!("{}.lease", leaked.address()));
    std::mem::forget(leaked);
    std::fs::write(&lease, "4294967295 1").unwrap();
    drop(other);
    network.settle();
    let network = Network::start(test.config.clone(), test.dir.path()).unwrap();
    assert!(
        !path.exists() && !lease.exists(),
        "the dead engine's namespace and lease are gone"
    );
    assert!(!link_exists(&host_side));
    let left: Vec<_> = std::fs::read_dir(test.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".lease") || name.ends_with(".ns"))
        .collect();
    assert!(left.is_empty(), "no lease or namespace left: {left:?}");

    // Outbound off: containers still get an address, but nothing beyond
    // the bridge answers them.
    drop(network);
    let closed = NetConfig {
        outbound: false,
        ..test.config.clone()
    };
    let network = Network::start(closed, test.dir.path()).unwrap();
    let attached = network.attach().unwrap();
    let refused = fetch(attached.namespace(), server);
    assert!(refused.is_err(), "outbound is off, yet it got {refused:?}");
}

#[test]
fn root_nftables_masquerades_and_refuses_as_iptables_does() {
    if !kiln_testkit::require_root() {
        return;
    }
    let internet = kiln_testkit::NetNs::new("10.232");
    let server = serve_peers(&internet);
    let n = (std::process::id() + 100) % 200 + 20;
    let test = TestNetwork {
        config: NetConfig {
            bridge: format!("kt{n}"),
            subnet: format!("10.236.{n}.0/24").parse().unwrap(),
            firewall: Firewall::Nftables,
            ..NetConfig::default()
        },
        dir: tempfile::tempdir().unwrap(),
    };
    let table = || {
        let out = std::process::Command::new("nft")
            .args(["list", "table", "ip", &format!("kiln_kt{n}")])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let network = Network::start(test.config.clone(), test.dir.path()).unwrap();
    assert!(table().contains("masquerade"), "{}", table());
    let attached = network.attach().unwrap();
    assert_eq!(
        fetch(attached.namespace(), server).unwrap(),
        internet.outer,
        "masqueraded"
    );
    drop(attached);
    network.settle();

    let closed = NetConfig {
        outbound: false,
        ..test.config.clone()
    };
    let network = Network::start(closed, test.dir.path()).unwrap();
    assert!(table().contains("reject"), "{}", table());
    let attached = network.attach().unwrap();
    let refused = fetch(attached.namespace(), server);
    assert!(refused.is_err(), "outbound is off, yet it got {refused:?}");
    drop(attached);
    network.settle();
    Network::teardown(&test.config, test.dir.path()).unwrap();
    assert!(table().is_empty(), "the table is gone: {}", table());
}

#[test]
fn root_a_namespace_that_failed_halfway_is_released_not_kept() {
    if !kiln_testkit::require_root() {
        return;
    }
    // A /30 has one address for containers, so its veth's name is known:
    // a link of that name already there makes the veth pair fail after the
    // namespace was mounted.
    let n = (std::process::id() + 50) % 200 + 20;
    let test = TestNetwork {
        config: NetConfig {
            bridge: format!("kf{n}"),
            subnet: format!("10.237.{n}.0/30").parse().unwrap(),
            ..NetConfig::default()
        },
        dir: tempfile::tempdir().unwrap(),
    };
    let network = Network::start(test.config.clone(), test.dir.path()).unwrap();
    let only = Ipv4Addr::new(10, 237, n as u8, 2);
    let squatter = format!("kv{:08x}", u32::from(only));
    let ip = |args: &[&str]| assert!(std::process::Command::new("ip").args(args).status().unwrap().success());
    ip(&[
        "link",
        "add",
        &squatter,
        "type",
        "veth",
        "peer",
        "name",
        &format!("kq{n}"),
    ]);
    let failed = network.attach();
    assert!(failed.is_err(), "the veth pair cannot be made");
    network.quiesce();
    // (The release deleted it already: names starting with kv are kiln's.)
    let _ = std::process::Command::new("ip")
        .args(["link", "del", &squatter])
        .status();
    let files: Vec<_> = std::fs::read_dir(test.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".lease") || name.ends_with(".ns"))
        .collect();
    assert!(
        files.is_empty(),
        "the half-made namespace and its lease are released: {files:?}"
    );
    // The next container gets a whole one.
    let attached = network.attach().unwrap();
    assert_eq!(attached.address(), only);
    assert!(link_exists(&squatter), "its veth is on the bridge");
}
