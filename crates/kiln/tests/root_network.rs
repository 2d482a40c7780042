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

/// A bridge and subnet of this test's own (`which` tells this process's
/// tests apart).
fn test_network(which: u32) -> NetConfig {
    let n = (std::process::id() * 2 + which) % 200 + 20;
    NetConfig {
        bridge: format!("kn{n}"),
        subnet: format!("10.235.{n}.0/24").parse().unwrap(),
        ..NetConfig::default()
    }
}

/// An env whose engine uses test network `which`, and that network
/// (removed when the bridge guard is dropped).
fn env_on_test_network(which: u32) -> (Env, NetConfig, TestBridge) {
    let net = test_network(which);
    let bridge = TestBridge(net.clone());
    let env = Env::new();
    use_network(&env, &net);
    (env, net, bridge)
}

/// Starts `kiln query` of `query` in the background.
fn spawn_query(env: &Env, query: &std::path::Path) -> Child {
    env.kiln(&["--progress", "plain", "query", query.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Kills the env's engine (and `client`) with SIGKILL and waits until it is gone.
fn kill_engine(env: &Env, mut client: Child) {
    let pid = std::fs::read_to_string(env.dir().join("state").join("engine.lock")).unwrap();
    // SAFETY: kill(2) of the engine this test started (through its client).
    unsafe { libc::kill(pid.trim().parse().unwrap(), libc::SIGKILL) };
    let _ = client.kill();
    let _ = client.wait();
    poll_until("the engine is gone", || {
        !std::path::Path::new(&format!("/proc/{}", pid.trim())).exists()
    });
}

#[test]
fn root_containers_reach_the_world_through_nat_unless_outbound_is_off() {
    if !kiln_testkit::require_root() {
        return;
    }
    let internet = NetNs::new("10.234");
    let www = tempfile::tempdir().unwrap();
    let (_server, url) = serve(&internet, www.path());
    let (env, net, _bridge) = env_on_test_network(0);
    let prefix = net.subnet.to_string().rsplit_once(".0/").unwrap().0.to_string();
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
        shown.contains(&format!("{prefix}.")),
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

#[test]
fn root_a_killed_engine_leaves_no_namespace_lease_or_veth_after_the_next_start() {
    if !kiln_testkit::require_root() {
        return;
    }
    let (env, net, _bridge) = env_on_test_network(1);
    let nonce = format!("echo {}; ", std::process::id());
    let long = env.query(
        "long.graphql",
        &exec_query(None, &format!("{nonce}touch /tmp/x; sleep 600")),
    );
    let client = spawn_query(&env, &long);
    let veths = || {
        let out = run({
            let mut ip = std::process::Command::new("ip");
            ip.args(["-o", "link", "show", "master", &net.bridge]);
            ip
        });
        text(&out.stdout).lines().count()
    };
    // Its namespace is mounted before its veth pair joins the bridge.
    poll_until("the container's veth is on the bridge", || veths() == 1);
    let held = leases(&net);
    assert!(held.iter().any(|l| l.ends_with(".ns")), "{held:?}");
    kill_engine(&env, client);
    assert_eq!(leases(&net), held, "a killed engine cannot clean up");

    // The next engine (started by the next client) releases them.
    let step = env.query("step.graphql", &exec_query(None, &format!("{nonce}echo next")));
    let out = run(env.kiln(&["query", step.to_str().unwrap()]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    for old in &held {
        assert!(!leases(&net).contains(old), "{old} of the killed engine is released");
    }
    let stopped = run(env.kiln(&["engine", "stop"]));
    assert!(stopped.status.success(), "{}", text(&stopped.stderr));
    assert_eq!(leases(&net), Vec::<String>::new());
    assert_eq!(veths(), 0, "no veth left on the bridge");
}

/// Lines of the host's firewall rules that carry `net`'s marker.
fn firewall_rules(net: &NetConfig) -> usize {
    let marker = format!("kiln subnet={}", net.subnet);
    ["iptables-save", "nft list ruleset"]
        .iter()
        .map(|cmd| {
            let mut words = cmd.split(' ');
            let mut c = std::process::Command::new(words.next().unwrap());
            c.args(words);
            text(&run(c).stdout).lines().filter(|l| l.contains(&marker)).count()
        })
        .sum()
}

/// Processes whose command line contains `needle`.
fn processes(needle: &str) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .filter(|c| text(c).replace('\0', " ").contains(needle))
        .count()
}

#[test]
fn root_a_killed_engine_leaves_no_service_behind_after_the_next_start() {
    if !kiln_testkit::require_root() {
        return;
    }
    let (env, net, _bridge) = env_on_test_network(2);
    // A port number of this test's own names the service's process.
    let port = 20000 + std::process::id() % 20000;
    let service = format!(
        "{{ container {{ from(address: \"busybox\") {{ withExposedPort(port: {port}) {{ \
         asService(args: [\"httpd\", \"-f\", \"-p\", \"{port}\"]) {{ id }} }} }} }} }}"
    );
    let service = env.query("service.graphql", &service);
    let out = run(env.kiln(&["query", service.to_str().unwrap()]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let reply: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = reply["data"]["container"]["from"]["withExposedPort"]["asService"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no service ID in {reply}"))
        .to_string();
    let rules = firewall_rules(&net);
    assert!(rules > 0, "the bridge's rules are installed");

    let client_query = format!(
        "{{ container {{ from(address: \"busybox\") {{ withServiceBinding(alias: \"web\", service: \"{id}\") {{ \
         withExec(args: [\"sh\", \"-c\", \"wget -q -O /dev/null http://web:{port}/ ; sleep 600\"]) {{ stdout }} }} }} }} }}"
    );
    let client_query = env.query("client.graphql", &client_query);
    let client = spawn_query(&env, &client_query);
    let httpd = format!("httpd -f -p {port}");
    poll_until("the service and its client run", || {
        processes(&httpd) == 1 && leases(&net).iter().filter(|l| l.ends_with(".ns")).count() == 2
    });
    let held = leases(&net);
    kill_engine(&env, client);

    // The next engine removes the service's container and releases its
    // namespace; its rules are not installed twice.
    let step = env.query("step.graphql", &exec_query(None, "echo next"));
    let out = run(env.kiln(&["query", step.to_str().unwrap()]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    poll_until("the service's process is gone", || processes(&httpd) == 0);
    for old in &held {
        assert!(!leases(&net).contains(old), "{old} of the killed engine is released");
    }
    assert_eq!(
        firewall_rules(&net),
        rules,
        "no rule of the killed engine is left twice"
    );
    let stopped = run(env.kiln(&["engine", "stop"]));
    assert!(stopped.status.success(), "{}", text(&stopped.stderr));
    assert_eq!(leases(&net), Vec::<String>::new());
    let addresses = {
        let mut ip = std::process::Command::new("ip");
        ip.args(["-o", "-4", "addr", "show", "dev", &net.bridge]);
        text(&run(ip).stdout).lines().count()
    };
    assert_eq!(addresses, 1, "the bridge keeps its one address");
}
