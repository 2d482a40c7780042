//! The host's firewall rules for the bridge, through `iptables` (its
//! nf_tables or legacy backend, whichever the host uses): forwarding
//! between the bridge and the world, masquerading what leaves, or refusing
//! it when outbound traffic is off. The rules live in chains of their own,
//! named after the bridge, made anew at each engine start.

use std::process::Command;

use super::{NetConfig, NetError};

/// Runs `iptables` with `args`; its error output on failure.
fn iptables(args: &[&str]) -> Result<(), String> {
    let out = Command::new("iptables")
        .arg("-w")
        .args(args)
        .output()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                "iptables is not installed, and containers need it to reach beyond the bridge: apt-get install iptables"
                    .to_string()
            }
            _ => format!("running iptables: {e}"),
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "iptables {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Removes the rules of `table`'s `chain` that jump to `target` (whatever
/// else they match: an earlier engine may have had another subnet).
fn delete_jumps(table: &str, chain: &str, target: &str) {
    let Ok(out) = Command::new("iptables").args(["-w", "-t", table, "-S", chain]).output() else {
        return;
    };
    let listed = String::from_utf8_lossy(&out.stdout).into_owned();
    for rule in listed.lines() {
        let words: Vec<&str> = rule.split_whitespace().collect();
        if words.first() != Some(&"-A") || !words.windows(2).any(|w| w == ["-j", target]) {
            continue;
        }
        let mut delete = vec!["-t", table, "-D"];
        delete.extend_from_slice(&words[1..]);
        if let Err(e) = iptables(&delete) {
            tracing::warn!("network: {e}");
        }
    }
}

/// Removes kiln's chains of a bridge and the jumps to them.
fn remove_chains(forward: &str, nat: &str) {
    delete_jumps("filter", "FORWARD", forward);
    delete_jumps("nat", "POSTROUTING", nat);
    for (table, chain) in [("filter", forward), ("nat", nat)] {
        let _ = iptables(&["-t", table, "-F", chain]);
        let _ = iptables(&["-t", table, "-X", chain]);
    }
}

fn chains(config: &NetConfig) -> (String, String) {
    (
        format!("KILN-FWD-{}", config.bridge),
        format!("KILN-NAT-{}", config.bridge),
    )
}

/// What `iptables -S` of a table's chain prints (empty if it cannot).
fn listed(table: &str, chain: &str) -> String {
    Command::new("iptables")
        .args(["-w", "-t", table, "-S", chain])
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
        .unwrap_or_default()
}

/// Sets up forwarding and NAT for `config`'s bridge, replacing what an
/// earlier engine set up for it unless it is what `config` asks for
/// already (its chain carries a comment naming the config).
pub fn install(config: &NetConfig) -> Result<(), NetError> {
    let bridge = config.bridge.as_str();
    let subnet = config.subnet.to_string();
    let (forward, nat) = chains(config);
    let fail = NetError::Firewall;
    let marker = format!("kiln subnet={subnet} outbound={}", config.outbound);
    let forwarding_on = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").is_ok_and(|v| v.trim() == "1");
    if forwarding_on
        && listed("filter", &forward).contains(&marker)
        && listed("filter", "FORWARD").contains(&format!("-j {forward}"))
        && listed("nat", "POSTROUTING").contains(&format!("-j {nat}"))
    {
        return Ok(());
    }
    // Forwarding is off on a fresh host; containers need it either way
    // (between the bridge and the world, or to be refused politely).
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
        .map_err(|e| fail(format!("turning on IPv4 forwarding: {e}")))?;
    remove_chains(&forward, &nat);
    for (table, chain) in [("filter", &forward), ("nat", &nat)] {
        iptables(&["-t", table, "-N", chain]).map_err(fail)?;
    }
    let rules: Vec<Vec<&str>> = vec![
        vec!["-A", &forward, "-m", "comment", "--comment", &marker],
        vec!["-A", &forward, "-i", bridge, "-o", bridge, "-j", "ACCEPT"],
        vec![
            "-A",
            &forward,
            "-o",
            bridge,
            "-m",
            "conntrack",
            "--ctstate",
            "RELATED,ESTABLISHED",
            "-j",
            "ACCEPT",
        ],
        if config.outbound {
            vec!["-A", &forward, "-i", bridge, "-j", "ACCEPT"]
        } else {
            vec![
                "-A",
                &forward,
                "-i",
                bridge,
                "-j",
                "REJECT",
                "--reject-with",
                "icmp-net-prohibited",
            ]
        },
        vec!["-t", "nat", "-A", &nat, "-d", &subnet, "-j", "RETURN"],
        vec!["-t", "nat", "-A", &nat, "-j", "MASQUERADE"],
        vec!["-I", "FORWARD", "-j", &forward],
        vec!["-t", "nat", "-I", "POSTROUTING", "-s", &subnet, "-j", &nat],
    ];
    for rule in rules {
        iptables(&rule).map_err(fail)?;
    }
    Ok(())
}

/// Removes the rules [`install`] made for `config`'s bridge.
pub fn uninstall(config: &NetConfig) {
    let (forward, nat) = chains(config);
    remove_chains(&forward, &nat);
}
