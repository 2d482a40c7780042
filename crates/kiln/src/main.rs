//! The `kiln` command line.

mod cache_cmd;
mod config;
mod engine;
mod logs;
mod progress;
mod watch;

use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use kiln_api::server::new_token;
use kiln_solver::explain::Explanation;
use kiln_solver::{Engine, EngineConfig, LocalHost, SessionOptions};
use tokio::signal::unix::{SignalKind, signal};
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::config::Config;
use crate::engine::Client;
use crate::progress::{Mode, Options, Progress};
use crate::watch::{Caller, Watchers};

/// kiln runs Dagger pipelines: programs that build a graph of container
/// operations with an official Dagger SDK. It runs containers itself
/// (crun/runc, no Docker) and caches every operation by content.
///
/// Examples:
///   kiln run -- python3 pipeline.py        run a pipeline, show progress
///   _EXPERIMENTAL_DAGGER_CLI_BIN=$(command -v kiln) python3 pipeline.py
///   echo '{ container { from(address: "busybox") { withExec(args: ["echo", "hi"]) { stdout } } } }' | kiln query
///   kiln logs make                         output of the last run's execs matching "make"
///
/// Traces go to an OpenTelemetry collector when OTEL_EXPORTER_OTLP_ENDPOINT
/// (or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) is set; OTEL_EXPORTER_OTLP_PROTOCOL
/// is grpc or http/protobuf (the default).
#[derive(Debug, Parser)]
#[command(name = "kiln", version, verbatim_doc_comment)]
struct Cli {
    /// Engine config file (TOML) [default: /etc/kiln/kiln.toml as root, else ~/.config/kiln/kiln.toml]
    #[arg(long, global = true, env = "KILN_CONFIG")]
    config: Option<PathBuf>,
    /// State directory (cache, snapshots, database); overrides the config
    #[arg(long, global = true, env = "KILN_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// The engine to use, when not the state directory's own:
    /// `tcp://HOST:PORT` (TLS; trust it with KILN_TLS_FINGERPRINT or
    /// KILN_TLS_CA, authenticate with KILN_TOKEN or KILN_TOKEN_FILE) or
    /// `unix:///path/engine.sock`
    #[arg(long, global = true, env = "KILN_HOST")]
    host: Option<String>,
    /// OCI runtime to use (crun, runc, or a path); overrides the config
    #[arg(long, global = true, env = "KILN_RUNTIME")]
    runtime: Option<String>,
    /// How to show progress on stderr (auto: tty when stderr is a terminal, else plain)
    #[arg(long, global = true, value_enum, default_value = "auto", env = "KILN_PROGRESS")]
    progress: Progress,
    /// Print every line of every exec's output as it arrives
    #[arg(long, global = true)]
    debug: bool,
    /// Say, for every operation that misses the cache, what changed since
    /// the most similar earlier run (files, env vars, args, upstream ops)
    #[arg(long, global = true)]
    explain_cache: bool,
    /// Fail operations that miss the cache instead of running them (to
    /// check that a CI cache is warm)
    #[arg(long, global = true)]
    fail_on_cache_miss: bool,
    /// Let Directory.export and File.export create device nodes and keep
    /// setuid/setgid bits on the host (withheld by default; see [export]
    /// in the config)
    #[arg(long, global = true, env = "KILN_EXPORT_SPECIAL_FILES")]
    export_special_files: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print kiln's version and the Dagger API version it serves
    Version,
    /// Serve an engine session and run a pipeline program against it
    ///
    /// The program gets DAGGER_SESSION_PORT and DAGGER_SESSION_TOKEN, which
    /// the Dagger SDKs use to connect. kiln exits with the program's exit code.
    Run {
        /// The program and its arguments (put `--` before them)
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// Serve a session for an SDK that started kiln itself
    ///
    /// This is what `_EXPERIMENTAL_DAGGER_CLI_BIN=kiln` makes the SDKs run:
    /// kiln prints one JSON line with the port and token, serves until its
    /// stdin closes, then exits. SDK flags such as --label are accepted and
    /// ignored.
    Session {
        /// Flags passed by the SDK: `--workdir DIR` sets the directory relative
        /// host paths are resolved against; others (--label ...) are ignored
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
        sdk_flags: Vec<String>,
    },
    /// Run one GraphQL query (from FILE, or stdin) and print the JSON result
    Query {
        /// File holding the query; reads stdin when absent
        file: Option<PathBuf>,
    },
    /// Serve the state directory's engine (clients start one when none runs)
    ///
    /// Every state directory has one engine, and `kiln run`, `kiln session`,
    /// `kiln query` and `kiln cache` are its clients (through the socket
    /// `engine.sock` in the state directory, private to its user): they share
    /// its cache and its work in flight, each with its own secrets, progress,
    /// environment and options. A client that finds no engine starts one in
    /// the background, which stops after `[engine] idle_timeout` (5m) without
    /// clients. Run it by hand to keep it up; stop it with Ctrl-C, SIGTERM or
    /// `kiln engine stop`.
    Engine {
        #[command(subcommand)]
        action: Option<EngineAction>,
        /// Stop after this long without a client (`10m`, `1h`; `0`: never)
        #[arg(long, default_value = "0", value_parser = parse_idle)]
        idle_timeout: Duration,
        /// Started by a client that found no engine: leave quietly when
        /// another engine serves the state directory already
        #[arg(long, hide = true)]
        started_by_client: bool,
        /// Also serve clients on other machines at `tcp://ADDR:PORT` (TLS;
        /// the certificate fingerprint and the token file are printed)
        #[arg(long, value_name = "tcp://ADDR:PORT")]
        listen: Option<String>,
        /// The certificate (PEM) to serve TLS with [default: a self-signed
        /// one, made once in the state directory's tls/]
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// The private key (PEM) of --tls-cert
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// The file holding the token TCP clients must give [default:
        /// tls/token in the state directory, made once]
        #[arg(long)]
        token_file: Option<PathBuf>,
    },
    /// Show and prune the cache of the state directory
    Cache {
        #[command(subcommand)]
        command: cache_cmd::CacheCommand,
    },
    /// Print the stdout and stderr of the last run's execs
    ///
    /// Every kiln process that serves pipelines records which execs ran,
    /// came from the cache or failed, and where their output is kept.
    Logs {
        /// Only execs whose id starts with this, or whose description
        /// (`exec make test`) contains it
        filter: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Warnings, and what garbage collection evicted (the README promises
    // that line); KILN_LOG=debug etc. for more.
    let default_filter = "warn,kiln_store::gc=info";
    let filter = || tracing_subscriber::EnvFilter::try_from_env("KILN_LOG").unwrap_or_else(|_| default_filter.into());
    let own = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::env::var_os("NO_COLOR").is_none() && std::io::stderr().is_terminal());
    // An engine passes the same lines on to its clients.
    tracing_subscriber::registry()
        .with(own.with_filter(filter()))
        .with(engine::log::Forward.with_filter(filter()))
        .init();
    if let Command::Version = cli.command {
        println!(
            "kiln {} (Dagger API {})",
            env!("CARGO_PKG_VERSION"),
            kiln_api::resolvers::API_VERSION
        );
        return ExitCode::SUCCESS;
    }
    // The engine resolves deeply chained queries recursively: give its
    // threads room. A client forwards requests and shows progress: one
    // thread (and the blocking pool) is plenty, and cheaper to start.
    let mut builder = match cli.command {
        Command::Engine { .. } => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.thread_stack_size(16 << 20);
            builder
        }
        _ => tokio::runtime::Builder::new_current_thread(),
    };
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("kiln: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(dispatch(cli));
    // Do not wait for blocking work that cannot finish (a thread still
    // reading the SDK's stdin): everything that matters is flushed already.
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("kiln: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The state directory: `--state-dir`, else the config's, else the default.
fn state_dir(cli: &Cli, config: &Config) -> PathBuf {
    cli.state_dir
        .clone()
        .or_else(|| config.state_dir.clone())
        .unwrap_or_else(config::default_state_dir)
}

fn open_engine(cli: &Cli) -> anyhow::Result<Arc<Engine>> {
    let config = Config::load(cli.config.as_deref())?;
    let state_dir = state_dir(cli, &config);
    let engine = Engine::open(EngineConfig {
        state_dir: state_dir.clone(),
        runtime: cli.runtime.clone().or(config.runtime),
        registry: config.registry,
        parallelism: config
            .parallelism
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get())),
        layer_limits: config.limits.extract_limits(),
        network: config.network.config()?,
        git_mirrors: config.git.mirrors.into_iter().collect(),
    })
    .with_context(|| format!("starting the engine on {}", state_dir.display()))?;
    cache_cmd::apply_budget(&engine, &config.gc);
    Ok(engine)
}

/// This process's session, on the engine serving the state dir (started in
/// the background when none runs; see `kiln engine`).
async fn client(cli: &Cli, cwd: &Path) -> anyhow::Result<Client> {
    let config = Config::load(cli.config.as_deref())?;
    let options = SessionOptions {
        explain_cache: cli.explain_cache,
        fail_on_cache_miss: cli.fail_on_cache_miss,
        export: config.export.policy(cli.export_special_files),
        docker_host: std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty()),
    };
    let start = engine::Start {
        state_dir: state_dir(cli, &config),
        config: cli.config.clone(),
        runtime: cli.runtime.clone(),
        idle: config.engine.idle_timeout(),
    };
    let host = LocalHost::new(config.registry.docker_config_dir());
    match elsewhere(cli)? {
        Some(endpoint) => Client::elsewhere(&endpoint, options, cwd, &host).await,
        None => Client::connect(&start, options, cwd, &host).await,
    }
}

/// The engine `--host`/`KILN_HOST` names, if any, with the trust and token
/// of the environment.
fn elsewhere(cli: &Cli) -> anyhow::Result<Option<engine::client::Endpoint>> {
    use engine::tls::Trust;
    let Some(host) = &cli.host else {
        return Ok(None);
    };
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let trust = match (var("KILN_TLS_FINGERPRINT"), var("KILN_TLS_CA")) {
        (Some(fingerprint), _) => Some(Trust::Fingerprint(fingerprint)),
        (None, Some(ca)) => Some(Trust::Ca(ca.into())),
        (None, None) => None,
    };
    let token = match (var("KILN_TOKEN"), var("KILN_TOKEN_FILE")) {
        (Some(token), _) => Some(token),
        (None, Some(file)) => Some(
            std::fs::read_to_string(&file)
                .with_context(|| format!("reading KILN_TOKEN_FILE {file}"))?
                .trim()
                .to_string(),
        ),
        (None, None) => None,
    };
    engine::client::Endpoint::parse(host, trust.as_ref(), token).map(Some)
}

/// The engine for this process: `--host`'s, else the state dir's socket.
fn endpoint(cli: &Cli, state_dir: &Path) -> anyhow::Result<engine::client::Endpoint> {
    Ok(elsewhere(cli)?.unwrap_or_else(|| engine::client::Endpoint::Unix(state_dir.join(engine::protocol::SOCKET))))
}

/// The value of `--workdir DIR` or `--workdir=DIR` among SDK flags.
fn workdir_flag(flags: &[String]) -> Option<PathBuf> {
    flags
        .iter()
        .enumerate()
        .find_map(|(i, f)| match f.strip_prefix("--workdir") {
            Some("") => flags.get(i + 1).map(PathBuf::from),
            Some(rest) => rest.strip_prefix('=').map(PathBuf::from),
            None => None,
        })
}

/// A served session: the client, the server, and the first `traceparent`
/// header a client sent it.
type Served = (Client, kiln_api::ServerHandle, Arc<OnceLock<String>>);

async fn serve(cli: &Cli, workdir: Option<PathBuf>) -> anyhow::Result<Served> {
    let cwd = match workdir {
        Some(dir) => dir,
        None => std::env::current_dir().context("reading the working directory")?,
    };
    let client = client(cli, &cwd).await?;
    let server = client.server(new_token().context("generating a session token")?);
    let traceparent = server.first_traceparent();
    let handle = server.start(0).await.context("listening on 127.0.0.1")?;
    Ok((client, handle, traceparent))
}

/// Starts following a session's events (progress, log index, trace).
fn watch(cli: &Cli, client: &Client, name: &str, caller: Caller) -> Watchers {
    let options = Options {
        // An SDK that started kiln prints on the same terminal.
        mode: cli.progress.mode(!matches!(caller, Caller::Sdk(_))),
        debug: cli.debug,
        color: progress::color_allowed(),
    };
    let command = std::env::args().collect();
    Watchers::start(client.events(), client.state_dir(), options, command, name, caller)
}

async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match &cli.command {
        Command::Version => unreachable!("handled before the runtime starts"),
        Command::Logs { filter } => logs(&cli, filter.as_deref()),
        Command::Cache { command } => cache_cmd::run(&cli, command).await,
        Command::Engine {
            action: Some(action), ..
        } => engine_action(&cli, action).await,
        Command::Engine {
            action: None,
            idle_timeout,
            started_by_client,
            listen,
            tls_cert,
            tls_key,
            token_file,
        } => {
            let config = Config::load(cli.config.as_deref())?;
            let state = state_dir(&cli, &config);
            let Some(_lock) = engine::server::claim(&state, *started_by_client)? else {
                return Ok(ExitCode::SUCCESS);
            };
            let tcp = match listen {
                Some(listen) => {
                    let Some(addr) = listen.strip_prefix("tcp://") else {
                        bail!("--listen {listen}: expected tcp://ADDR:PORT");
                    };
                    let files = tls_cert.as_deref().zip(tls_key.as_deref());
                    Some(engine::server::Tcp::listen(&state, addr, files, token_file.as_deref()).await?)
                }
                None => None,
            };
            let idle = Some(*idle_timeout).filter(|d| !d.is_zero());
            engine::server::serve(open_engine(&cli)?, idle, config.gc.budget(), tcp).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Run { command } => {
            let started = Instant::now();
            let (client, handle, _) = serve(&cli, None).await?;
            let watchers = watch(
                &cli,
                &client,
                &format!("kiln run {}", command.join(" ")),
                Caller::Program,
            );
            let mut program = tokio::process::Command::new(&command[0]);
            program
                .args(&command[1..])
                .env("DAGGER_SESSION_PORT", handle.port.to_string())
                .env("DAGGER_SESSION_TOKEN", &handle.token);
            if let Some(traceparent) = watchers.traceparent() {
                program.env("TRACEPARENT", traceparent);
            }
            // On a live display, the program's output is printed above it
            // rather than across it.
            let live = watchers.display().mode() == Mode::Tty;
            if live {
                program.stderr(Stdio::piped());
                if std::io::stdout().is_terminal() {
                    program.stdout(Stdio::piped());
                }
            }
            let mut child = program.spawn().with_context(|| format!("running {:?}", command[0]))?;
            let mut forwarded = Vec::new();
            if let Some(out) = child.stdout.take() {
                forwarded.push(watchers.display().forward(out));
            }
            if let Some(err) = child.stderr.take() {
                forwarded.push(watchers.display().forward(err));
            }
            let status = wait_forwarding_signals(&mut child).await?;
            for forward in forwarded {
                // A process the program left behind may hold its output open.
                let _ = tokio::time::timeout(Duration::from_secs(1), forward).await;
            }
            handle.stop().await;
            let (stats, explanations) = client.finish().await;
            watchers.finish(Some((stats, started.elapsed()))).await;
            print_explanations(explanations);
            Ok(exit_code(status))
        }
        Command::Session { sdk_flags } => {
            let (client, handle, traceparent) = serve(&cli, workdir_flag(sdk_flags)).await?;
            let watchers = watch(&cli, &client, "kiln session", Caller::Sdk(traceparent));
            let line = serde_json::json!({ "port": handle.port, "session_token": handle.token });
            let mut stdout = std::io::stdout();
            writeln!(stdout, "{line}")
                .and_then(|_| stdout.flush())
                .context("writing the session line")?;
            // SDKs end the session by closing our stdin (Python, Rust) or
            // with SIGTERM (TypeScript): both are a normal end.
            let stdin_closed = tokio::task::spawn_blocking(|| {
                let mut sink = Vec::new();
                let _ = std::io::stdin().read_to_end(&mut sink);
            });
            let mut term = signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
            let mut int = signal(SignalKind::interrupt()).context("installing a SIGINT handler")?;
            tokio::select! {
                _ = stdin_closed => {}
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            handle.stop().await;
            client.finish().await;
            watchers.finish(None).await;
            Ok(ExitCode::SUCCESS)
        }
        Command::Query { file } => {
            let query = match file {
                Some(f) => std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?,
                None => {
                    let mut q = String::new();
                    std::io::stdin()
                        .read_to_string(&mut q)
                        .context("reading the query from stdin")?;
                    q
                }
            };
            if query.trim().is_empty() {
                bail!("no query given (pass a file or pipe a query on stdin)");
            }
            let started = Instant::now();
            let cwd = std::env::current_dir().context("reading the working directory")?;
            let client = client(&cli, &cwd).await?;
            let watchers = watch(&cli, &client, "kiln query", Caller::Nobody);
            let server = client.server(String::new());
            let body = serde_json::to_vec(&serde_json::json!({ "query": query }))?;
            let (_, response) = server.answer(body.into()).await;
            let (stats, explanations) = client.finish().await;
            watchers.finish(Some((stats, started.elapsed()))).await;
            print_explanations(explanations);
            let mut out = std::io::stdout().lock();
            // A closed pipe (`kiln query | head`) is not an error worth reporting.
            let _ = writeln!(out, "{}", serde_json::to_string_pretty(&response)?);
            let failed = response["errors"].as_array().is_some_and(|e| !e.is_empty());
            Ok(if !failed { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
    }
}

/// `kiln logs`: prints the last run's exec output.
fn logs(cli: &Cli, filter: Option<&str>) -> anyhow::Result<ExitCode> {
    let config = Config::load(cli.config.as_deref())?;
    let mut out = std::io::stdout().lock();
    logs::show(&state_dir(cli, &config), filter, &mut out)?;
    Ok(ExitCode::SUCCESS)
}

/// Waits for the pipeline program. SIGTERM to kiln is passed on to it; on
/// SIGINT (Ctrl-C, which the terminal also sends to the program) kiln keeps
/// waiting, so that it can clean up after the program stops.
async fn wait_forwarding_signals(child: &mut tokio::process::Child) -> anyhow::Result<std::process::ExitStatus> {
    let mut term = signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing a SIGINT handler")?;
    loop {
        tokio::select! {
            status = child.wait() => return status.context("waiting for the pipeline program"),
            _ = term.recv() => {
                if let Some(pid) = child.id() {
                    // SAFETY: kill(2) on our own child's pid.
                    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
                }
            }
            _ = int.recv() => {}
        }
    }
}

/// Prints why operations missed the cache (`--explain-cache`).
fn print_explanations(explanations: Vec<Explanation>) {
    if explanations.is_empty() {
        return;
    }
    let mut out = String::from("kiln: cache misses explained:\n");
    for e in explanations {
        out.push_str(&format!("  [{}] {}\n", e.node.short(), e.description));
        for reason in e.reasons {
            out.push_str(&format!("    - {reason}\n"));
        }
    }
    eprint!("{out}");
}

/// What `kiln engine status|stop` do.
#[derive(Debug, Subcommand)]
enum EngineAction {
    /// Show the engine serving the state directory: version, uptime,
    /// sessions, running operations, cache size (exit code 3 when none runs)
    Status,
    /// Stop the engine serving the state directory: new clients are turned
    /// away (they start a new engine), running sessions get `--timeout` to
    /// finish, then are ended (their containers killed)
    Stop {
        /// How long running sessions may take to finish
        #[arg(long, default_value = "1m", value_parser = parse_idle)]
        timeout: Duration,
        /// Then also remove the containers' network of the config: its
        /// bridge, firewall rules and namespaces (refused while containers
        /// of other engines use it); the next engine sets it up again
        #[arg(long)]
        remove_network: bool,
    },
}

/// Removes the config's container network (`kiln engine stop --remove-network`).
fn remove_containers_network(config: &Config) -> anyhow::Result<()> {
    let Some(net) = config.network.config()? else {
        println!("the config gives containers no network: nothing to remove");
        return Ok(());
    };
    let dir = kiln_exec::net::default_dir(&net.bridge);
    kiln_exec::net::Network::remove(&net, &dir)?;
    println!(
        "removed the containers' network (bridge {}, {})",
        net.bridge, net.subnet
    );
    Ok(())
}

/// Runs `kiln engine status` or `kiln engine stop`.
async fn engine_action(cli: &Cli, action: &EngineAction) -> anyhow::Result<ExitCode> {
    use engine::protocol::{ToClient, ToEngine};
    let config = Config::load(cli.config.as_deref())?;
    let state_dir = state_dir(cli, &config);
    let endpoint = endpoint(cli, &state_dir)?;
    let message = match action {
        EngineAction::Status => ToEngine::Status,
        EngineAction::Stop { timeout, .. } => ToEngine::Stop {
            timeout_secs: timeout.as_secs(),
        },
    };
    let remove_network = match action {
        EngineAction::Stop { remove_network, .. } => *remove_network,
        EngineAction::Status => false,
    };
    let Some(answer) = engine::client::ask(&endpoint, message).await? else {
        println!("no engine serves {}", state_dir.display());
        if remove_network {
            remove_containers_network(&config)?;
            return Ok(ExitCode::SUCCESS);
        }
        return Ok(ExitCode::from(3));
    };
    match (action, answer) {
        (EngineAction::Status, ToClient::Status(s)) => {
            println!(
                "engine of {} (pid {}, kiln {})",
                s.state_dir.display(),
                s.pid,
                s.version
            );
            println!(
                "  up for     {}",
                kiln_store::format_duration(Duration::from_secs(s.uptime_secs))
            );
            println!("  sessions   {}", s.sessions);
            println!("  running    {} operations", s.running);
            println!("  cache      {}", kiln_store::format_size(s.cache_bytes));
        }
        (EngineAction::Stop { timeout, .. }, ToClient::Stopping { sessions }) => {
            if sessions > 0 {
                eprintln!(
                    "kiln: waiting up to {} for {sessions} sessions",
                    kiln_store::format_duration(*timeout)
                );
            }
            let engine::client::Endpoint::Unix(_) = endpoint else {
                // Nothing of a remote engine's process can be watched here.
                println!("the engine at {endpoint} is stopping");
                return Ok(ExitCode::SUCCESS);
            };
            let pid = std::fs::read_to_string(state_dir.join("engine.lock")).unwrap_or_default();
            let proc_dir = PathBuf::from(format!("/proc/{}", pid.trim()));
            // The sessions' time, then enough to end them and flush.
            let deadline = std::time::Instant::now() + *timeout + Duration::from_secs(60);
            while !pid.trim().is_empty() && proc_dir.exists() {
                if std::time::Instant::now() >= deadline {
                    bail!(
                        "the engine (pid {}) is still running a minute after its sessions' time; see {} and stop \
                         it with `kill {}`",
                        pid.trim(),
                        state_dir.join("engine.log").display(),
                        pid.trim()
                    );
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            println!("stopped the engine of {}", state_dir.display());
            if remove_network {
                remove_containers_network(&config)?;
            }
        }
        (_, other) => bail!("the engine answered something else: {other:?}"),
    }
    Ok(ExitCode::SUCCESS)
}

/// Reads `--idle-timeout`.
fn parse_idle(text: &str) -> Result<Duration, String> {
    kiln_store::parse_duration(text).map_err(|e| e.to_string())
}

fn exit_code(status: std::process::ExitStatus) -> ExitCode {
    use std::os::unix::process::ExitStatusExt;
    let code = status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
    ExitCode::from(code.clamp(0, 255) as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_sdk_workdir_flag_in_both_spellings() {
        let flags = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            workdir_flag(&flags(&["--label", "a:b", "--workdir", "/w"])),
            Some(PathBuf::from("/w"))
        );
        assert_eq!(
            workdir_flag(&flags(&["--workdir=/x", "--label", "y"])),
            Some(PathBuf::from("/x"))
        );
        assert_eq!(workdir_flag(&flags(&["--label", "--workdirs"])), None);
        assert_eq!(workdir_flag(&flags(&["--workdir"])), None);
    }
}
