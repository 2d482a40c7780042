//! Dockerfile builds (`Directory.dockerBuild`, `Container.build`): each
//! instruction becomes the operations the API would make for it (a pull, an
//! exec, a copy), so every step is cached like any other, and a `COPY` of
//! one file is keyed by that file's content, not the whole context.
//! Parsing is parse-dockerfile's (RUN heredocs are read by [`heredoc`]
//! first); what kiln does not support yet fails with the file, line and
//! instruction named.

mod heredoc;

use std::collections::HashMap;
use std::sync::Arc;

use kiln_graph::{CacheSharing, Owner};
use kiln_solver::ops::{self, read_text};
use kiln_solver::services::{ExposedPort, Protocol};
use kiln_store::MergedView;
use parse_dockerfile::{Command, HealthcheckArguments, Instruction, JsonOrStringArray, Source};

use super::container::{exec_of, pulled};
use super::healthcheck::{Timing, healthcheck};
use crate::api::{Api, Output, Registry, container, directory, join_path};
use crate::args::Args;
use crate::error::ApiError;
use crate::resolver;
use crate::values::{Container, ContainerMount, Directory, MountSource, Object, Secret, TreeRef};

pub fn register(r: &mut Registry) {
    r.add("Directory", "dockerBuild", resolver!(docker_build));
    r.add("Container", "build", resolver!(container_build));
}

async fn docker_build(api: Arc<Api>, obj: Object, args: Args) -> Result<Output, ApiError> {
    let context = directory(obj)?;
    let platform = super::query::platform_arg(&args)?;
    build(&api, context, &args, platform).await
}

async fn container_build(api: Arc<Api>, obj: Object, args: Args) -> Result<Output, ApiError> {
    let platform = container(obj)?.platform;
    let context = api.arg_directory(&args, "context")?;
    build(&api, context, &args, platform).await
}

/// The Dockerfile being built, for messages naming a line.
struct Source_<'t> {
    file: String,
    text: &'t str,
}

impl Source_<'_> {
    /// `Dockerfile:12: COPY: why`.
    fn error(&self, at: usize, why: impl std::fmt::Display) -> ApiError {
        let line = self.text[..at.min(self.text.len())].matches('\n').count() + 1;
        let word = self.text[at.min(self.text.len())..]
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_ascii_uppercase();
        ApiError::invalid(format!("{}:{line}: {word}: {why}", self.file))
    }

    fn unsupported(&self, at: usize, what: &str) -> ApiError {
        self.error(at, format!("{what} is not supported by kiln yet"))
    }
}

/// A stage being built: its container, its build args and its shell.
struct Stage {
    name: Option<String>,
    c: Container,
    args: Vec<(String, String)>,
    shell: Vec<String>,
    /// Whether this stage set CMD (an ENTRYPOINT then keeps it).
    cmd_set: bool,
}

impl Stage {
    /// What `$VAR` means in this stage: build args, then the env over them.
    fn vars(&self) -> Vec<(String, String)> {
        self.args.iter().chain(&self.c.env).cloned().collect()
    }

    fn expand(&self, text: &str) -> String {
        substitute(text, &self.vars())
    }

    /// A command in exec form, or in shell form through the stage's shell.
    fn command(&self, command: &Command<'_>) -> Option<Vec<String>> {
        match command {
            Command::Exec(words) => Some(words.value.iter().map(|w| w.value.to_string()).collect()),
            Command::Shell(line) => Some(self.shell.iter().cloned().chain([line.value.to_string()]).collect()),
            _ => None,
        }
    }
}

/// What a RUN's flags and heredocs add to its exec.
#[derive(Default)]
struct RunOptions {
    mounts: Vec<ContainerMount>,
    stdin: Option<String>,
    no_network: bool,
}

/// Everything a build reads: the API, the Dockerfile, the (filtered)
/// context, the build args and the stages built so far.
struct Build<'a> {
    api: &'a Api,
    source: Source_<'a>,
    heredocs: heredoc::Heredocs,
    context: Directory,
    context_view: MergedView,
    build_args: HashMap<String, String>,
    global_args: Vec<(String, String)>,
    platform: String,
    stages: Vec<Stage>,
    secrets: Vec<Secret>,
}

async fn build(api: &Arc<Api>, context: Directory, args: &Args, platform: String) -> Result<Output, ApiError> {
    let file = args.opt_string("dockerfile").unwrap_or_else(|| "Dockerfile".into());
    // `RUN --mount=type=secret,id=NAME` finds these by name.
    let secrets = args
        .strings("secrets")
        .iter()
        .map(|id| match api.nodes.load(id)? {
            Object::Secret(secret) => Ok(secret),
            other => Err(ApiError::invalid(format!(
                "secrets must be Secret IDs, got a {}",
                other.type_name()
            ))),
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    let view = api.view(context.tree).await?;
    let dockerfile_path = join_path(&context.path, &file);
    let text = read_text(&view, &dockerfile_path)
        .ok_or_else(|| ApiError::invalid(format!("dockerBuild: no Dockerfile at {file} in the context")))?;
    let (text, heredocs) =
        heredoc::extract(&text).map_err(|(line, why)| ApiError::invalid(format!("{file}:{line}: RUN: {why}")))?;
    let parsed = parse_dockerfile::parse(&text).map_err(|e| ApiError::invalid(format!("{file}: {e}")))?;
    let build_args = args
        .list("buildArgs")
        .iter()
        .map(|a| Ok((a.string("name")?, a.opt_string("value").unwrap_or_default())))
        .collect::<Result<HashMap<_, _>, ApiError>>()?;
    let ignored = dockerignore(&view, &context.path, &dockerfile_path);
    let filtered = filtered_context(api, &context, ignored)?;
    let context_view = api.view(filtered.tree).await?;
    let mut b = Build {
        api,
        source: Source_ { file, text: &text },
        heredocs,
        context: filtered,
        context_view,
        build_args,
        global_args: Vec::new(),
        platform,
        stages: Vec::new(),
        secrets,
    };
    // ARGs before the first FROM are the FROM lines' own.
    for ins in parsed
        .instructions
        .iter()
        .take_while(|i| !matches!(i, Instruction::From(_)))
    {
        match ins {
            Instruction::Arg(arg) => {
                let declared = b.declare_args(&arg.arguments.value, &[]);
                b.global_args.extend(declared);
            }
            other => {
                return Err(b
                    .source
                    .error(span_of(other), "only ARG may come before the first FROM"));
            }
        }
    }
    let target = args.opt_string("target");
    for stage in parsed.stages() {
        let mut st = b.from(stage.from).await?;
        for ins in stage.instructions {
            b.apply(&mut st, ins).await?;
        }
        let done = target.is_some() && st.name == target;
        b.stages.push(st);
        if done {
            break;
        }
    }
    if let Some(t) = &target
        && b.stages.last().and_then(|s| s.name.as_ref()) != Some(t)
    {
        return Err(ApiError::invalid(format!(
            "dockerBuild: no stage named {t:?} in {}",
            b.source.file
        )));
    }
    let last = b
        .stages
        .pop()
        .ok_or_else(|| ApiError::invalid(format!("{}: no FROM instruction", b.source.file)))?;
    Ok(Output::Object(Object::Container(Box::new(last.c))))
}

/// The byte offset an instruction starts at.
fn span_of(ins: &Instruction<'_>) -> usize {
    match ins {
        Instruction::Add(i) => i.add.span.start,
        Instruction::Arg(i) => i.arg.span.start,
        Instruction::Cmd(i) => i.cmd.span.start,
        Instruction::Copy(i) => i.copy.span.start,
        Instruction::Entrypoint(i) => i.entrypoint.span.start,
        Instruction::Env(i) => i.env.span.start,
        Instruction::Expose(i) => i.expose.span.start,
        Instruction::From(i) => i.from.span.start,
        Instruction::Healthcheck(i) => i.healthcheck.span.start,
        Instruction::Label(i) => i.label.span.start,
        Instruction::Maintainer(i) => i.maintainer.span.start,
        Instruction::Onbuild(i) => i.onbuild.span.start,
        Instruction::Run(i) => i.run.span.start,
        Instruction::Shell(i) => i.shell.span.start,
        Instruction::Stopsignal(i) => i.stopsignal.span.start,
        Instruction::User(i) => i.user.span.start,
        Instruction::Volume(i) => i.volume.span.start,
        Instruction::Workdir(i) => i.workdir.span.start,
        // Instructions of a newer parser: named by the line's first word.
        _ => 0,
    }
}

/// The patterns of `<Dockerfile>.dockerignore` (beside the Dockerfile), else
/// of the context's `.dockerignore`; exceptions (`!pattern`) re-include, as
/// kiln's path filters read them.
fn dockerignore(view: &MergedView, context: &str, dockerfile: &str) -> Vec<String> {
    let text = read_text(view, &format!("{dockerfile}.dockerignore"))
        .or_else(|| read_text(view, &join_path(context, ".dockerignore")))
        .unwrap_or_default();
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|line| match line.strip_prefix('!') {
            Some(kept) => format!("!{}", kept.trim_start_matches('/')),
            None => line.trim_start_matches('/').to_string(),
        })
        .collect()
}

/// The context without what `.dockerignore` excludes.
fn filtered_context(api: &Api, context: &Directory, exclude: Vec<String>) -> Result<Directory, ApiError> {
    if exclude.is_empty() {
        return Ok(context.clone());
    }
    let op = ops::Copy {
        src_path: context.path.clone(),
        dest_path: "/".into(),
        contents_only: true,
        include: Vec::new(),
        exclude,
        owner: None,
        mode: None,
    };
    let node = api
        .nodes
        .add(op, vec![api.nodes.input(None)?, api.nodes.input(context.tree)?]);
    Ok(Directory {
        tree: Some(TreeRef {
            node: node.digest(),
            output: 0,
        }),
        path: "/".into(),
    })
}

/// `KEY=VALUE` words, as ENV, LABEL and ARG write them (quotes removed).
fn pairs(text: &str) -> Option<Vec<(String, String)>> {
    let words = shlex::split(text)?;
    words
        .iter()
        .map(|w| w.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
        .collect()
}

impl Build<'_> {
    /// The values of the ARGs `text` declares: a build arg, else the
    /// default, else (in a stage) the global ARG of that name.
    fn declare_args(&self, text: &str, vars: &[(String, String)]) -> Vec<(String, String)> {
        shlex::split(text)
            .unwrap_or_default()
            .into_iter()
            .map(|word| {
                let (name, default) = match word.split_once('=') {
                    Some((n, d)) => (n.to_string(), Some(substitute(d, vars))),
                    None => (word, None),
                };
                let global = || {
                    self.global_args
                        .iter()
                        .rev()
                        .find(|(k, _)| *k == name)
                        .map(|(_, v)| v.clone())
                };
                let value = self.build_args.get(&name).cloned().or(default).or_else(global);
                (name, value.unwrap_or_default())
            })
            .collect()
    }

    async fn from(&self, from: &parse_dockerfile::FromInstruction<'_>) -> Result<Stage, ApiError> {
        let at = from.from.span.start;
        let image = substitute(&from.image.value, &self.global_args);
        let mut platform = self.platform.clone();
        for flag in &from.options {
            match &*flag.name.value {
                "platform" => {
                    let value = substitute(flag.value.as_ref().map_or("", |v| &v.value), &self.global_args);
                    platform = kiln_oci::Platform::parse(&value)
                        .map_err(|e| self.source.error(at, e))?
                        .to_string();
                }
                other => return Err(self.source.unsupported(at, &format!("FROM --{other}"))),
            }
        }
        let earlier = self
            .stages
            .iter()
            .find(|s| s.name.as_deref().is_some_and(|n| n.eq_ignore_ascii_case(&image)));
        let c = match earlier {
            Some(stage) => stage.c.clone(),
            None if image == "scratch" => Container::empty(platform),
            None => pulled(self.api, &image, &platform)
                .await
                .map_err(|e| self.source.error(at, e))?,
        };
        Ok(Stage {
            name: from.as_.as_ref().map(|(_, n)| n.value.to_ascii_lowercase()),
            c,
            args: Vec::new(),
            shell: vec!["/bin/sh".into(), "-c".into()],
            cmd_set: false,
        })
    }

    async fn apply(&self, st: &mut Stage, ins: &Instruction<'_>) -> Result<(), ApiError> {
        let at = span_of(ins);
        let malformed = |what: &str| self.source.error(at, format!("cannot read {what}"));
        match ins {
            Instruction::Arg(arg) => {
                let declared = self.declare_args(&arg.arguments.value, &st.vars());
                st.args.extend(declared);
            }
            Instruction::Env(env) => {
                let text = &env.arguments.value;
                let set = match pairs(text) {
                    Some(p) => p,
                    // The legacy form: `ENV KEY value with spaces`.
                    None => match text.trim().split_once(char::is_whitespace) {
                        Some((k, v)) => vec![(k.to_string(), v.trim().to_string())],
                        None => return Err(malformed("ENV (KEY=VALUE ...)")),
                    },
                };
                // Every value sees the variables as they were before this ENV.
                let set: Vec<_> = set.into_iter().map(|(k, v)| (k, st.expand(&v))).collect();
                for (k, v) in set {
                    st.c.env.retain(|(name, _)| *name != k);
                    st.c.env.push((k, v));
                }
            }
            Instruction::Label(label) => {
                for (k, v) in pairs(&label.arguments.value).ok_or_else(|| malformed("LABEL (KEY=VALUE ...)"))? {
                    let v = st.expand(&v);
                    st.c.labels.retain(|(name, _)| *name != k);
                    st.c.labels.push((k, v));
                }
            }
            Instruction::Maintainer(m) => {
                st.c.labels.retain(|(name, _)| name != "maintainer");
                st.c.labels.push(("maintainer".into(), m.name.value.to_string()));
            }
            Instruction::Workdir(w) => {
                let path = join_path(&st.c.workdir, &st.expand(&w.arguments.value));
                let op = ops::MkDir {
                    path: path.clone(),
                    mode: 0o755,
                    owner: None,
                };
                self.over_rootfs(st, op, None)?;
                st.c.workdir = path;
            }
            Instruction::User(u) => st.c.user = st.expand(&u.arguments.value),
            Instruction::Shell(s) => st.shell = s.arguments.iter().map(|w| w.value.to_string()).collect(),
            Instruction::Entrypoint(e) => {
                st.c.entrypoint = st.command(&e.arguments).ok_or_else(|| malformed("the command"))?;
                if !st.cmd_set {
                    st.c.default_args.clear();
                }
            }
            Instruction::Cmd(c) => {
                st.c.default_args = st.command(&c.arguments).ok_or_else(|| malformed("the command"))?;
                st.cmd_set = true;
            }
            Instruction::Expose(e) => {
                for word in &e.arguments {
                    let word = st.expand(&word.value);
                    let (port, protocol) = match word.split_once('/') {
                        Some((p, "udp")) => (p.to_string(), Protocol::Udp),
                        Some((p, _)) => (p.to_string(), Protocol::Tcp),
                        None => (word.clone(), Protocol::Tcp),
                    };
                    let port: u16 = port.parse().map_err(|_| malformed(&format!("port {word:?}")))?;
                    st.c.exposed_ports.retain(|p| (p.port, p.protocol) != (port, protocol));
                    st.c.exposed_ports.push(ExposedPort {
                        port,
                        protocol,
                        description: None,
                        skip_health_check: false,
                    });
                }
            }
            Instruction::Run(run) => {
                let mut options = RunOptions::default();
                for flag in &run.options {
                    let value = flag.value.as_ref().map(|v| st.expand(&v.value)).unwrap_or_default();
                    match (&*flag.name.value, value.as_str()) {
                        ("mount", _) => options
                            .mounts
                            .push(self.mount(st, &value).await.map_err(|e| self.source.error(at, e))?),
                        // The engine's network (no RUN gets the host's).
                        ("network", "default" | "host") => {}
                        ("network", "none") => options.no_network = true,
                        (other, _) => return Err(self.source.unsupported(at, &format!("RUN --{other}={value}"))),
                    }
                }
                let argv = match &run.arguments {
                    Command::Shell(line) if let Some(script) = self.heredocs.get(line.value) => {
                        let (argv, stdin) = script.process(&st.shell);
                        options.stdin = stdin;
                        argv
                    }
                    // parse-dockerfile's own reading of a heredoc (heredoc.rs
                    // takes every one out first).
                    _ if !run.here_docs.is_empty() => return Err(self.source.unsupported(at, "this heredoc")),
                    command => st.command(command).ok_or_else(|| malformed("the command"))?,
                };
                self.run(st, argv, options)?;
            }
            Instruction::Copy(copy) => {
                self.copy(st, at, &copy.options, &copy.src, &copy.dest.value, false)
                    .await?;
            }
            Instruction::Add(add) => {
                self.copy(st, at, &add.options, &add.src, &add.dest.value, true).await?;
            }
            Instruction::From(_) => unreachable!("stages start at FROM"),
            Instruction::Healthcheck(h) => st.c.healthcheck = Some(self.healthcheck(st, at, h)?),
            Instruction::Onbuild(_) => return Err(self.source.unsupported(at, "ONBUILD")),
            Instruction::Stopsignal(s) => st.c.stop_signal = Some(st.expand(&s.arguments.value)),
            Instruction::Volume(v) => {
                let paths = match &v.arguments {
                    JsonOrStringArray::Json(words) => words.value.iter().map(|w| w.value.to_string()).collect(),
                    JsonOrStringArray::String(words) => words.iter().map(|w| st.expand(&w.value)).collect::<Vec<_>>(),
                };
                for path in paths {
                    let path = join_path(&st.c.workdir, &path);
                    if !st.c.volumes.contains(&path) {
                        st.c.volumes.push(path);
                    }
                }
            }
            _ => return Err(self.source.unsupported(at, "this instruction")),
        }
        Ok(())
    }

    /// HEALTHCHECK [--interval=.. --timeout=.. --start-period=..
    /// --start-interval=.. --retries=..] CMD ... | NONE
    fn healthcheck(
        &self,
        st: &Stage,
        at: usize,
        h: &parse_dockerfile::HealthcheckInstruction<'_>,
    ) -> Result<kiln_oci::Healthcheck, ApiError> {
        let command = match &h.arguments {
            HealthcheckArguments::Cmd { arguments, .. } => arguments,
            _ => {
                return Ok(kiln_oci::Healthcheck {
                    test: vec!["NONE".into()],
                    ..Default::default()
                });
            }
        };
        let mut timing = Timing::default();
        for flag in &h.options {
            let value = flag.value.as_ref().map(|v| st.expand(&v.value));
            match &*flag.name.value {
                "interval" => timing.interval = value,
                "timeout" => timing.timeout = value,
                "start-period" => timing.start_period = value,
                "start-interval" => timing.start_interval = value,
                "retries" => {
                    let n = value.as_deref().unwrap_or("").parse().map_err(|_| {
                        self.source.error(
                            at,
                            format!("--retries={}: not a number", value.as_deref().unwrap_or("")),
                        )
                    })?;
                    timing.retries = Some(n);
                }
                other => return Err(self.source.unsupported(at, &format!("HEALTHCHECK --{other}"))),
            }
        }
        let (args, shell) = match command {
            Command::Exec(words) => (words.value.iter().map(|w| w.value.to_string()).collect(), false),
            Command::Shell(line) => (vec![line.value.to_string()], true),
            _ => return Err(self.source.error(at, "cannot read the command")),
        };
        healthcheck(args, shell, timing).map_err(|e| self.source.error(at, e))
    }

    /// RUN: an exec whose env holds the stage's build args too, with the
    /// `--mount`s of this RUN only.
    fn run(&self, st: &mut Stage, argv: Vec<String>, options: RunOptions) -> Result<(), ApiError> {
        let mut with_args = st.c.clone();
        with_args.env = st.vars();
        for m in options.mounts {
            with_args.mounts.retain(|old| old.target != m.target);
            with_args.mounts.push(m);
        }
        let (mut exec, inputs) = exec_of(self.api, &with_args, argv)?;
        exec.stdin = options.stdin;
        exec.no_network = options.no_network;
        let node = self.api.nodes.add(exec, inputs);
        st.c.rootfs = Some(TreeRef {
            node: node.digest(),
            output: 0,
        });
        st.c.last_exec = Some(node.digest());
        Ok(())
    }

    /// A `RUN --mount=type=...,target=...` as a mount of the exec.
    async fn mount(&self, st: &Stage, spec: &str) -> Result<ContainerMount, String> {
        let mut options: HashMap<&str, &str> = HashMap::new();
        for part in spec.split(',').filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once('=').unwrap_or((part, "true"));
            options.insert(k, v);
        }
        let kind = options.remove("type").unwrap_or("bind");
        let target = options
            .remove("target")
            .or_else(|| options.remove("dst"))
            .or_else(|| options.remove("destination"));
        let owner = match (options.remove("uid"), options.remove("gid")) {
            (None, None) => None,
            (uid, gid) => Some(format!("{}:{}", uid.unwrap_or("0"), gid.unwrap_or("0"))),
        };
        let mode = options
            .remove("mode")
            .map(|m| u32::from_str_radix(m, 8))
            .transpose()
            .map_err(|_| "mode: not octal")?;
        let mut target = target.map(|t| join_path(&st.c.workdir, t));
        let source = match kind {
            "cache" => {
                let sharing = match options.remove("sharing") {
                    Some("private") => CacheSharing::Private,
                    Some("locked") => CacheSharing::Locked,
                    _ => CacheSharing::Shared,
                };
                let id = options.remove("id").map(str::to_string).or_else(|| target.clone());
                MountSource::Cache {
                    key: format!("dockerfile:{}", id.unwrap_or_default()),
                    sharing,
                    owner,
                    source: None,
                }
            }
            "tmpfs" => MountSource::Temp,
            "secret" => {
                let id = options.remove("id").ok_or("--mount=type=secret needs an id")?;
                let required = options.remove("required").is_some_and(|r| r == "true");
                let Some(secret) = self.secrets.iter().find(|s| s.name == id).cloned() else {
                    return Err(match required {
                        true => format!("secret {id:?} is required: pass it in the build's secrets"),
                        false => format!("secret {id:?} is not among the build's secrets"),
                    });
                };
                target.get_or_insert_with(|| format!("/run/secrets/{id}"));
                MountSource::Secret {
                    secret,
                    owner,
                    mode: mode.unwrap_or(0o400),
                }
            }
            "bind" => {
                let from = options.remove("from");
                let path = options
                    .remove("source")
                    .or_else(|| options.remove("src"))
                    .unwrap_or("/");
                let readonly = !matches!(
                    options.remove("rw").or_else(|| options.remove("readwrite")),
                    Some("true")
                );
                let (tree, base) = match from {
                    None => (self.context.tree, self.context.path.clone()),
                    Some(name) => match self.stage_named(name) {
                        Some(stage) => (stage.c.rootfs, "/".to_string()),
                        None => (
                            pulled(self.api, name, &st.c.platform)
                                .await
                                .map_err(|e| e.to_string())?
                                .rootfs,
                            "/".into(),
                        ),
                    },
                };
                MountSource::Tree {
                    tree,
                    path: join_path(&base, path),
                    readonly,
                }
            }
            other => return Err(format!("--mount=type={other} is not supported by kiln yet")),
        };
        let target = target.ok_or_else(|| format!("--mount=type={kind} needs a target"))?;
        leftover(&options, kind)?;
        Ok(ContainerMount { target, source })
    }

    /// The stage named `name` (or numbered), built already.
    fn stage_named(&self, name: &str) -> Option<&Stage> {
        let lower = name.to_ascii_lowercase();
        self.stages
            .iter()
            .find(|s| s.name.as_deref() == Some(lower.as_str()))
            .or_else(|| name.parse::<usize>().ok().and_then(|i| self.stages.get(i)))
    }

    /// COPY and ADD (of local files: ADD's URLs and archives are not yet).
    async fn copy(
        &self,
        st: &mut Stage,
        at: usize,
        options: &[parse_dockerfile::Flag<'_>],
        sources: &[Source<'_>],
        dest: &str,
        add: bool,
    ) -> Result<(), ApiError> {
        let (mut owner, mut mode, mut from, mut checksum) = (None, None, None, None);
        for flag in options {
            let value = flag.value.as_ref().map(|v| st.expand(&v.value)).unwrap_or_default();
            match &*flag.name.value {
                "from" if !add => from = Some(value),
                "chown" => owner = Some(Owner::parse(&value)),
                "chmod" => {
                    mode = Some(
                        u32::from_str_radix(&value, 8)
                            .map_err(|_| self.source.error(at, format!("--chmod={value}: not an octal mode")))?,
                    )
                }
                "link" => {}
                "checksum" if add => {
                    checksum = Some(value.parse().map_err(|_| {
                        self.source
                            .error(at, format!("--checksum={value}: not a sha256 digest"))
                    })?)
                }
                other => {
                    let which = if add { "ADD" } else { "COPY" };
                    return Err(self.source.unsupported(at, &format!("{which} --{other}")));
                }
            }
        }
        let (tree, base, view) = match from {
            None => (self.context.tree, self.context.path.clone(), None),
            Some(name) => {
                let c = match self.stage_named(&name) {
                    Some(s) => s.c.clone(),
                    None => pulled(self.api, &name, &st.c.platform)
                        .await
                        .map_err(|e| self.source.error(at, e))?,
                };
                let view = self.api.view(c.rootfs).await?;
                (c.rootfs, "/".to_string(), Some(view))
            }
        };
        let view = view.as_ref().unwrap_or(&self.context_view);
        let dest = st.expand(dest);
        let mut into_dir = dest.ends_with('/') || dest == "." || dest.ends_with("/.") || sources.len() > 1;
        let dest = join_path(&st.c.workdir, &dest);
        if !into_dir {
            // An existing directory receives files, as in Docker.
            let rootfs = self.api.view(st.c.rootfs).await?;
            let rel = rootfs.resolve(&dest, true).map_err(ApiError::internal)?;
            into_dir = rootfs
                .lookup(&rel)
                .map_err(ApiError::internal)?
                .is_some_and(|e| e.meta.is_dir());
        }
        let mut heredoc_names = heredoc::openers(self.source.text[at..].lines().next().unwrap_or("")).into_iter();
        for source in sources {
            let src = match source {
                Source::Path(src) => src,
                Source::HereDoc(doc) => {
                    let name = heredoc_names.next().map(|o| o.name).unwrap_or_default();
                    let contents = if doc.expand {
                        st.expand(&doc.value)
                    } else {
                        doc.value.to_string()
                    };
                    let op = ops::MkFile {
                        path: if into_dir {
                            join_path(&dest, &name)
                        } else {
                            dest.clone()
                        },
                        contents,
                        mode: mode.unwrap_or(0o644),
                        owner: owner.clone(),
                    };
                    self.over_rootfs(st, op, None)?;
                    continue;
                }
                _ => return Err(self.source.unsupported(at, "this source")),
            };
            let src = st.expand(&src.value);
            if add && src.contains("://") {
                // A URL: fetched now (once per content), then copied in.
                let name = super::http::default_name(&src);
                let fetched = super::http::url_file(self.api, &src, None, checksum, name.clone(), 0o600)
                    .await
                    .map_err(|e| self.source.error(at, e))?;
                let op = ops::Copy {
                    src_path: fetched.path,
                    dest_path: if into_dir {
                        join_path(&dest, &name)
                    } else {
                        dest.clone()
                    },
                    contents_only: true,
                    include: Vec::new(),
                    exclude: Vec::new(),
                    owner: owner.clone(),
                    mode,
                };
                self.over_rootfs(st, op, Some(fetched.tree))?;
                continue;
            }
            for (path, is_dir) in self.matches(view, &base, &src).map_err(|e| self.source.error(at, e))? {
                if add && !is_dir && self.is_archive(view, &path).map_err(|e| self.source.error(at, e))? {
                    // A local tar archive is extracted into the destination.
                    let op = ops::Unpack {
                        src_path: path,
                        dest_path: dest.clone(),
                    };
                    self.over_rootfs(st, op, Some(tree))?;
                    continue;
                }
                let dest_path = match (is_dir, into_dir) {
                    (false, true) => join_path(&dest, path.rsplit('/').next().unwrap_or("")),
                    _ => dest.clone(),
                };
                let op = ops::Copy {
                    src_path: path,
                    dest_path,
                    contents_only: true,
                    include: Vec::new(),
                    exclude: Vec::new(),
                    owner: owner.clone(),
                    mode,
                };
                self.over_rootfs(st, op, Some(tree))?;
            }
        }
        Ok(())
    }

    /// Adds `op` over the stage's root filesystem (input 0) and, when given,
    /// the tree `source` (input 1); its output becomes the root filesystem.
    fn over_rootfs(
        &self,
        st: &mut Stage,
        op: impl kiln_solver::ops::Operation,
        source: Option<Option<TreeRef>>,
    ) -> Result<(), ApiError> {
        let mut inputs = vec![self.api.nodes.input(st.c.rootfs)?];
        if let Some(tree) = source {
            inputs.push(self.api.nodes.input(tree)?);
        }
        let node = self.api.nodes.add(op, inputs);
        st.c.rootfs = Some(TreeRef {
            node: node.digest(),
            output: 0,
        });
        Ok(())
    }

    /// Whether the file `path` of the source tree is a tar archive (by its
    /// content, as Docker decides), which ADD extracts.
    fn is_archive(&self, view: &MergedView, path: &str) -> Result<bool, String> {
        let rel = view.resolve(path, true).map_err(|e| e.to_string())?;
        let Some(entry) = view.lookup(&rel).map_err(|e| e.to_string())? else {
            return Ok(false);
        };
        let file = std::fs::File::open(&entry.real).map_err(|e| format!("{path}: {e}"))?;
        kiln_oci::tar_archive(file)
            .map(|found| found.is_some())
            .map_err(|e| format!("{path}: {e}"))
    }

    /// The paths (in the source tree) that `src` names, and whether each is
    /// a directory: itself, or what its wildcards match in its directory.
    fn matches(&self, view: &MergedView, base: &str, src: &str) -> Result<Vec<(String, bool)>, String> {
        let full = join_path(base, src);
        if !src.contains(['*', '?', '[']) {
            let rel = view.resolve(&full, true).map_err(|e| e.to_string())?;
            return match view.lookup(&rel).map_err(|e| e.to_string())? {
                Some(entry) => Ok(vec![(full, entry.meta.is_dir())]),
                None => Err(format!("{src}: no such file or directory in the build context")),
            };
        }
        let (dir, pattern) = full.rsplit_once('/').unwrap_or(("", &full));
        let dir = if dir.is_empty() { "/" } else { dir };
        let glob = globset::Glob::new(pattern)
            .map_err(|e| e.to_string())?
            .compile_matcher();
        let rel = view.resolve(dir, true).map_err(|e| e.to_string())?;
        let entries = view
            .read_dir(&rel)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("{src}: no such directory in the build context"))?;
        // In name order (the map's); a symlink counts as what it points to.
        let is_dir = |path: &str| -> Result<bool, String> {
            let rel = view.resolve(path, true).map_err(|e| e.to_string())?;
            Ok(view
                .lookup(&rel)
                .map_err(|e| e.to_string())?
                .is_some_and(|e| e.meta.is_dir()))
        };
        let found = entries
            .iter()
            .filter_map(|(name, entry)| Some((name.to_str()?, entry)))
            .filter(|(name, _)| glob.is_match(name))
            .map(|(name, entry)| {
                let path = join_path(dir, name);
                let dir = match entry.meta.is_symlink() {
                    true => is_dir(&path)?,
                    false => entry.meta.is_dir(),
                };
                Ok((path, dir))
            })
            .collect::<Result<Vec<_>, String>>()?;
        if found.is_empty() {
            return Err(format!("{src}: no file in the build context matches"));
        }
        Ok(found)
    }
}

/// A Dockerfile word with its variables replaced, as BuildKit does:
/// `$VAR`, `${VAR}`, `${VAR:-default}` (when unset or empty),
/// `${VAR:+other}` (when set and not empty); `\$` is a literal `$`.
fn substitute(text: &str, vars: &[(String, String)]) -> String {
    let lookup = |name: &str| vars.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let mut out = String::new();
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' if text[i + 1..].starts_with('$') => {
                out.push('$');
                chars.next();
            }
            '$' if text[i + 1..].starts_with('{') => {
                let Some(len) = text[i + 2..].find('}') else {
                    out.push_str(&text[i..]);
                    break;
                };
                let inner = &text[i + 2..i + 2 + len];
                let value = match inner.split_once(':') {
                    Some((name, rest)) if rest.starts_with('-') => match lookup(name) {
                        Some(v) if !v.is_empty() => v.to_string(),
                        _ => substitute(&rest[1..], vars),
                    },
                    Some((name, rest)) if rest.starts_with('+') => match lookup(name) {
                        Some(v) if !v.is_empty() => substitute(&rest[1..], vars),
                        _ => String::new(),
                    },
                    _ => lookup(inner).unwrap_or_default().to_string(),
                };
                out.push_str(&value);
                while chars.peek().is_some_and(|(j, _)| *j <= i + 2 + len) {
                    chars.next();
                }
            }
            '$' => {
                let rest = &text[i + 1..];
                let len = rest
                    .find(|ch: char| !(ch.is_ascii_alphanumeric() || ch == '_'))
                    .unwrap_or(rest.len());
                if len == 0 {
                    out.push('$');
                    continue;
                }
                out.push_str(lookup(&rest[..len]).unwrap_or_default());
                while chars.peek().is_some_and(|(j, _)| *j <= i + len) {
                    chars.next();
                }
            }
            c => out.push(c),
        }
    }
    out
}

/// Refuses `--mount` options kiln does not know.
fn leftover(options: &HashMap<&str, &str>, kind: &str) -> Result<(), String> {
    match options.keys().next() {
        None => Ok(()),
        Some(k) => Err(format!("--mount=type={kind}: option {k} is not supported by kiln yet")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn substitutes_variables_as_buildkit_does() {
        let vars = vec![("A".to_string(), "x".to_string()), ("EMPTY".to_string(), String::new())];
        assert_eq!(substitute("$A/${A}-$NOPE-${NOPE}", &vars), "x/x--");
        assert_eq!(substitute("${NOPE:-dflt} ${EMPTY:-e} ${A:-unused}", &vars), "dflt e x");
        assert_eq!(substitute("${A:+set} ${EMPTY:+set}.", &vars), "set .");
        assert_eq!(substitute("\\$A costs $5 and ${A:-$A}", &vars), "$A costs  and x");
        assert_eq!(substitute("price: $", &vars), "price: $");
    }
}
