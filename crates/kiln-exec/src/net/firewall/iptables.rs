//! The rules through `iptables` (its nf_tables or legacy backend,
//! whichever the host uses), in chains of their own named after the
//! bridge, jumped to from `FORWARD` and `POSTROUTING`: they work beside
//! whatever else the host's `FORWARD` chain does (a DROP policy included).

use std::process::Command;

use super::marker;
use crate::net::{NetConfig, NetError};

/// Whether `iptables` can be run.
pub fn available() -> bool {
    super::runs("iptables")
}

/// Runs `iptables` with `args`; its error output on failure.
fn iptables(args: &[&str]) -> Result<(), String> {
    let out = Command::new("iptables")
        .arg("-w")
        .args(args)
        .output()
        .map_err(|e| format!("running iptables: {e}"))?;
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
    for rule in listed(table, chain).lines() {
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

/// Whether the rules for `config` are in place already.
pub fn current(config: &NetConfig) -> bool {
    let (forward, nat) = chains(config);
    listed("filter", &forward).contains(&marker(config))
        && listed("filter", "FORWARD").contains(&format!("-j {forward}"))
        && listed("nat", "POSTROUTING").contains(&format!("-j {nat}"))
}

/// Sets up forwarding and NAT for `config`'s bridge, replacing what an
/// earlier engine set up for it.
pub fn install(config: &NetConfig) -> Result<(), NetError> {
    let bridge = config.bridge.as_str();
    let subnet = config.subnet.to_string();
    let (forward, nat) = chains(config);
    let marker = marker(config);
    let fail = NetError::Firewall;
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
