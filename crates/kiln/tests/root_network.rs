//! Root only: containers reach the world through the engine's bridge and
//! NAT (a namespace of the test's own stands in for the internet), and do
//! not when outbound traffic is off; nothing of their networks is left
//! once the engine stopped. The engine runs on a bridge and subnet of the
//! test's own.

mod common;

use std::io::Write;
use std::process::{Child, Stdio};

use common::{Env, exec_query, run, text};
use kiln_exec::net::{NetConfig, Network};
use kiln_testkit::{NetNs, poll_until};

/// An HTTP server in the stand-in internet, serving `hello.txt`.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(internet: &NetNs, root: &std::path::Path) -> (Server, String) {
    std::fs::write(root.join("hello.txt"), "from the internet\n").unwrap();
    let child = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &internet.name,
            "python3",
            "-m",
            "http.server",
            "--bind",
            &internet.inner,
        ])
        .arg("18080")
        .current_dir(root)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let addr = format!("{}:18080", internet.inner);
    poll_until("the server listens", || std::net::TcpStream::connect(&addr).is_ok());
    (Server(child), format!("http://{addr}/hello.txt"))
}

/// The test's bridge, removed with its rules and leases when dropped.
struct TestBridge(NetConfig);

impl Drop for TestBridge {
    fn drop(&mut self) {
        let _ = Network::teardown(&self.0, &kiln_exec::net::default_dir(&self.0.bridge));
    }
}

/// Points the env's config at the test's bridge.
fn use_network(env: &Env, net: &NetConfig) {
    let mut config = std::fs::OpenOptions::new()
        .append(true)
        .open(env.dir().join("kiln.toml"))
        .unwrap();
    write!(
        config,
        "[network]\nbridge = \"{}\"\nsubnet = \"{}\"\noutbound = {}\n",
        net.bridge, net.subnet, net.outbound
    )
    .unwrap();
}

/// What is left of the bridge's leases and namespaces.
fn leases(net: &NetConfig) -> Vec<String> {
    std::fs::read_dir(kiln_exec::net::default_dir(&net.bridge))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".lease") || n.ends_with(".ns"))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn root_containers_reach_the_world_through_nat_unless_outbound_is_off() {
    if !kiln_testkit::require_root() {
        return;
    }
    let internet = NetNs::new("10.234");
    let www = tempfile::tempdir().unwrap();
    let (_server, url) = serve(&internet, www.path());
    let n = std::process::id() % 200 + 20;
    let net = NetConfig {
        bridge: format!("kn{n}"),
        subnet: format!("10.235.{n}.0/24").parse().unwrap(),
        outbound: true,
    };
    let _bridge = TestBridge(net.clone());

    let env = Env::new();
    use_network(&env, &net);
    let nonce = format!("echo {}; ", std::process::id());
    let fetch = env.query(
        "fetch.graphql",
        &exec_query(None, &format!("{nonce}wget -q -O - {url} && cat /etc/hosts")),
    );
    let out = run(env.kiln(&["query", fetch.to_str().unwrap()]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shown = text(&out.stdout);
    assert!(shown.contains("from the internet"), "{shown}");
    assert!(
        shown.contains(&format!("10.235.{n}.")),
        "the container's own address in /etc/hosts: {shown}"
    );
    let stopped = run(env.kiln(&["engine", "stop"]));
    assert!(stopped.status.success(), "{}", text(&stopped.stderr));
    assert_eq!(leases(&net), Vec::<String>::new(), "every namespace and lease released");

    // Outbound off: the same request fails, with wget's own words.
    let closed = Env::new();
    use_network(
        &closed,
        &NetConfig {
            outbound: false,
            ..net.clone()
        },
    );
    let fetch = closed.query(
        "fetch.graphql",
        &exec_query(None, &format!("{nonce}wget -q -T 5 -O - {url}")),
    );
    let out = run(closed.kiln(&["query", fetch.to_str().unwrap()]));
    assert!(!out.status.success(), "outbound is off, yet: {}", text(&out.stdout));
    let said = text(&out.stdout) + &text(&out.stderr);
    assert!(said.contains("wget"), "the failing command is named: {said}");
    let stopped = run(closed.kiln(&["engine", "stop"]));
    assert!(stopped.status.success(), "{}", text(&stopped.stderr));
    assert_eq!(leases(&net), Vec::<String>::new());
}
