//! `kiln cache du` and `kiln cache prune`: what the cache of a state
//! directory holds, and removing it, least recently used first.

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Subcommand;
use kiln_solver::Engine;
use kiln_store::{GcReport, GcTarget, SnapshotId, Store, Volumes, format_size, now_micros, now_secs, parse_size};

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::Cli;
use crate::config::{Config, GcConfig};

/// What `kiln cache` does.
#[derive(Debug, Clone, Subcommand, Serialize, Deserialize)]
pub enum CacheCommand {
    /// Show what the cache holds (snapshots, blobs, records, volumes), its
    /// budget, and the largest cache records
    Du {
        /// How many of the largest cache records to list
        #[arg(long, default_value_t = 10)]
        top: usize,
    },
    /// Remove cached results, least recently used first; without options,
    /// down to the configured budget (gc.keep_storage). Also removes what
    /// interrupted runs left behind (containers, cgroups, partial work)
    Prune {
        /// Remove everything (cache volumes are kept)
        #[arg(long, conflicts_with_all = ["keep", "older_than"])]
        all: bool,
        /// Keep at most this much (e.g. 10GB, 512MiB)
        #[arg(long, value_parser = parse_size_arg, conflicts_with = "older_than")]
        keep: Option<u64>,
        /// Remove what was not used for this long (e.g. 7d, 12h, 30m)
        #[arg(long, value_parser = kiln_store::parse_duration)]
        older_than: Option<Duration>,
    },
    /// List the cache volumes (withMountedCache) with their sizes
    Volumes,
    /// Delete cache volumes by key
    RmVolume {
        /// Keys of the volumes to delete
        #[arg(required = true)]
        keys: Vec<String>,
    },
}

fn parse_size_arg(text: &str) -> Result<u64, String> {
    parse_size(text).map_err(|e| e.to_string())
}

/// Sets the engine's garbage collection budget from the config.
pub fn apply_budget(engine: &Engine, gc: &GcConfig) {
    engine.store().set_keep_storage(Some(gc.budget()));
}

/// Runs a `kiln cache` command on the state directory: through the engine
/// that serves it when one runs, else on the directory itself.
pub async fn run(cli: &Cli, command: &CacheCommand) -> anyhow::Result<ExitCode> {
    let config = Config::load(cli.config.as_deref())?;
    let state_dir = crate::state_dir(cli, &config);
    if cli.host.is_none() && !state_dir.join("db").exists() {
        bail!("{} holds no kiln cache", state_dir.display());
    }
    let cwd = std::env::current_dir().context("reading the working directory")?;
    let endpoint = crate::endpoint(cli, &state_dir)?;
    let mut out = String::new();
    let host = kiln_solver::LocalHost::default();
    let result = match crate::engine::client::attach(&endpoint, Default::default(), &cwd, host).await? {
        Some(engine) => {
            let (shown, result) = engine.cache(command).await?;
            out = shown;
            result
        }
        None => {
            let store = Store::open(&state_dir).with_context(|| format!("opening {}", state_dir.display()))?;
            let runtime = cli.runtime.as_deref().or(config.runtime.as_deref());
            execute(&store, &config.gc.budget(), Some(runtime), command, &mut out)
        }
    };
    print!("{out}");
    result.map(|()| ExitCode::SUCCESS)
}

/// Runs `command` on `store`, writing what it shows to `out`. A prune also
/// removes what killed engines left behind, with `leftovers`' runtime;
/// `None` on a running engine, which did so when it started.
pub fn execute(
    store: &Store,
    budget: &kiln_store::KeepStorage,
    leftovers: Option<Option<&str>>,
    command: &CacheCommand,
    out: &mut String,
) -> anyhow::Result<()> {
    match command {
        CacheCommand::Du { top } => du(store, budget, *top, out)?,
        CacheCommand::Prune { all, keep, older_than } => {
            let target = if *all {
                GcTarget::All
            } else if let Some(bytes) = keep {
                GcTarget::Keep(*bytes)
            } else if let Some(age) = older_than {
                GcTarget::UnusedSince(now_secs().saturating_sub(age.as_secs()))
            } else {
                let used = store.usage()?.cache_bytes();
                GcTarget::Keep(budget.bytes(store.root(), used))
            };
            // What killed engines left goes too, as at an engine's start.
            if let Some(runtime) = leftovers {
                kiln_solver::remove_leftovers(store, runtime).context("removing what interrupted runs left behind")?;
            }
            let report = store.gc(target).context("pruning the cache")?;
            print_report(&report, out);
        }
        CacheCommand::Volumes => {
            let volumes = Volumes::open(store.root().join("volumes")).context("opening the cache volumes")?;
            for v in volumes.list().context("listing the cache volumes")? {
                let _ = writeln!(out, "{:>10}  {}", format_size(v.size), v.key);
            }
        }
        CacheCommand::RmVolume { keys } => {
            let volumes = Volumes::open(store.root().join("volumes")).context("opening the cache volumes")?;
            let mut missing = Vec::new();
            for key in keys {
                if volumes
                    .remove(key)
                    .with_context(|| format!("removing cache volume {key:?}"))?
                {
                    let _ = writeln!(out, "removed cache volume {key}");
                } else {
                    missing.push(key.as_str());
                }
            }
            if !missing.is_empty() {
                bail!(
                    "no cache volume named {} (see `kiln cache volumes`)",
                    missing.join(", ")
                );
            }
        }
    }
    Ok(())
}

fn du(store: &Store, budget: &kiln_store::KeepStorage, top: usize, out: &mut String) -> anyhow::Result<()> {
    let u = store.usage()?;
    let volumes = Volumes::open(store.root().join("volumes"))
        .and_then(|v| v.list())
        .context("listing cache volumes")?;
    let limit = budget.bytes(store.root(), u.cache_bytes());
    let _ = writeln!(
        out,
        "kiln cache in {} (budget {}: {budget})",
        store.root().display(),
        format_size(limit)
    );
    let mut row = |name: &str, count: Option<u64>, bytes: Option<u64>| {
        let count = count.map(|c| c.to_string()).unwrap_or_default();
        let bytes = bytes.map(format_size).unwrap_or_default();
        let _ = writeln!(out, "  {name:<18} {count:>8} {bytes:>12}");
    };
    row("snapshots", Some(u.snapshots), Some(u.snapshot_bytes));
    row("blobs", Some(u.blobs), Some(u.blob_bytes));
    row("host stat caches", Some(u.stat_caches), Some(u.stat_cache_bytes));
    row("total (budgeted)", None, Some(u.cache_bytes()));
    row("cache records", Some(u.records), None);
    row("database", None, Some(u.database_bytes));
    row(
        "cache volumes",
        Some(volumes.len() as u64),
        Some(volumes.iter().map(|v| v.size).sum()),
    );

    if top == 0 || u.records == 0 {
        return Ok(());
    }
    let sizes: HashMap<SnapshotId, u64> = store
        .db()
        .snapshots()?
        .into_iter()
        .map(|(id, r)| (id, r.size.unwrap_or(0)))
        .collect();
    let mut records: Vec<(u64, u64, String)> = store
        .db()
        .cache_entries()?
        .into_iter()
        .map(|e| {
            let bytes = e.record.outputs.iter().flatten().filter_map(|id| sizes.get(id)).sum();
            (bytes, e.last_used, e.record.description)
        })
        .collect();
    records.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.cmp(&a.1)));
    let _ = writeln!(
        out,
        "\nlargest cache records (bytes of the layers they produced, last use):"
    );
    for (bytes, last_used, description) in records.into_iter().take(top) {
        let _ = writeln!(
            out,
            "  {:>10}  {:>9}  {description}",
            format_size(bytes),
            ago(last_used)
        );
    }
    Ok(())
}

/// How long ago a time in microseconds since the epoch was, roughly.
fn ago(micros: u64) -> String {
    let secs = now_micros().saturating_sub(micros) / 1_000_000;
    match secs {
        0..60 => format!("{secs} s ago"),
        60..3600 => format!("{} min ago", secs / 60),
        3600..86_400 => format!("{} h ago", secs / 3600),
        _ => format!("{} d ago", secs / 86_400),
    }
}

fn print_report(report: &GcReport, out: &mut String) {
    let _ = writeln!(out, "{report}");
    const SHOWN: usize = 20;
    for r in report.records.iter().take(SHOWN) {
        let _ = writeln!(out, "  {:>9}  {}", ago(r.last_used), r.description);
    }
    if report.records.len() > SHOWN {
        let _ = writeln!(out, "  ... and {} more", report.records.len() - SHOWN);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn says_how_long_ago() {
        assert_eq!(ago(now_micros() - 7_200_000_000), "2 h ago");
    }
}
