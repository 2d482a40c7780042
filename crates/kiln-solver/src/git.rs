//! Git remotes through the `git` binary: listing refs (`ls-remote`) and
//! fetching one commit into a directory. Credentials reach git through its
//! environment (`GIT_CONFIG_*`: an `http.extraHeader`), never its argv, a
//! stored config or a cache key.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine as _;
use kiln_graph::SecretRef;
use serde::{Deserialize, Serialize};

use crate::secrets::Secrets;

/// How to authenticate to a remote over HTTP.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct GitAuth {
    /// User name for `token` (Basic auth; `x-access-token` when empty).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub username: String,
    /// A token (password) for Basic auth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<SecretRef>,
    /// A whole `Authorization` header value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<SecretRef>,
}

impl GitAuth {
    /// The secrets it refers to.
    pub fn secrets(&self) -> impl Iterator<Item = &SecretRef> {
        self.token.iter().chain(&self.header)
    }

    /// The `Authorization` header's value, if any.
    fn header_value(&self, secrets: &Secrets) -> Result<Option<String>, String> {
        let value = |r: &SecretRef| {
            secrets
                .get(r)
                .ok_or_else(|| format!("secret {:?} is not known to this engine session", r.name))
        };
        if let Some(header) = &self.header {
            return Ok(Some(value(header)?.to_string()));
        }
        let Some(token) = &self.token else { return Ok(None) };
        let user = if self.username.is_empty() {
            "x-access-token"
        } else {
            &self.username
        };
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{}", value(token)?));
        Ok(Some(format!("Basic {basic}")))
    }
}

/// A remote and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Remote {
    /// The URL git is given (normalized; see [`normalize_url`]).
    pub url: String,
    /// HTTP credentials.
    #[serde(default)]
    pub auth: GitAuth,
    /// For ssh remotes.
    #[serde(default)]
    pub ssh: SshOptions,
}

/// How to reach an ssh remote.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SshOptions {
    /// `known_hosts` lines the server's key must be in (empty: the key is
    /// not checked, as in Dagger).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub known_hosts: String,
    /// The client's SSH agent socket (keys never leave the agent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_socket: Option<PathBuf>,
}

impl Remote {
    /// The same remote, fetched from the mirror of the first of `mirrors`
    /// (URL prefix, replacement) whose prefix its URL starts with.
    pub fn mirrored(&self, mirrors: &[(String, String)]) -> Remote {
        let url = mirrors
            .iter()
            .find_map(|(prefix, to)| Some(format!("{to}{}", self.url.strip_prefix(prefix.as_str())?)))
            .unwrap_or_else(|| self.url.clone());
        Remote { url, ..self.clone() }
    }
}

/// A URL as git takes it: Dagger's `github.com/owner/repo` (no scheme)
/// becomes `https://github.com/owner/repo`; `scheme://...` and scp-like
/// `user@host:path` stay as they are.
pub fn normalize_url(url: &str) -> String {
    let scp_like = !url.contains("://") && url.split_once(':').is_some_and(|(host, _)| host.contains('@'));
    if url.contains("://") || scp_like || url.starts_with('/') {
        url.to_string()
    } else {
        format!("https://{url}")
    }
}

/// A `git` command for `remote`, and what must live while it runs (the
/// known hosts file, removed when dropped).
struct Git {
    cmd: Command,
    _known_hosts: Option<tempfile::NamedTempFile>,
}

/// `git` with the remote's credentials in its environment and nothing of
/// the user's or system's git config that could prompt or redirect; for
/// ssh, the agent's socket and the known hosts.
fn git(remote: &Remote, secrets: &Secrets) -> Result<Git, String> {
    let mut git = Git {
        cmd: Command::new("git"),
        _known_hosts: None,
    };
    let mut ssh = "ssh -o BatchMode=yes".to_string();
    if remote.ssh.known_hosts.is_empty() {
        ssh.push_str(" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null");
    } else {
        let mut file = tempfile::Builder::new()
            .prefix("kiln-known-hosts-")
            .tempfile()
            .map_err(|e| format!("writing known hosts: {e}"))?;
        writeln!(file, "{}", remote.ssh.known_hosts.trim()).map_err(|e| format!("writing known hosts: {e}"))?;
        ssh.push_str(&format!(
            " -o StrictHostKeyChecking=yes -o UserKnownHostsFile={}",
            file.path().display()
        ));
        git._known_hosts = Some(file);
    }
    git.cmd.env("GIT_SSH_COMMAND", ssh);
    match &remote.ssh.agent_socket {
        Some(socket) => git.cmd.env("SSH_AUTH_SOCK", socket),
        None => git.cmd.env_remove("SSH_AUTH_SOCK"),
    };
    let cmd = &mut git.cmd;
    cmd.env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_ASKPASS", "/bin/false")
        .stdin(Stdio::null());
    match remote.auth.header_value(secrets)? {
        // Only for the remote's own host: a submodule elsewhere never sees it.
        Some(header) => cmd
            .env("GIT_CONFIG_COUNT", "1")
            .env("GIT_CONFIG_KEY_0", format!("http.{}.extraHeader", origin(&remote.url)))
            .env("GIT_CONFIG_VALUE_0", format!("Authorization: {header}")),
        None => cmd.env("GIT_CONFIG_COUNT", "0"),
    };
    Ok(git)
}

/// `scheme://host[:port]/` of a URL (the prefix git's `http.<url>.*`
/// settings match).
fn origin(url: &str) -> String {
    let shown = display_url(url);
    match shown.split_once("://") {
        Some((scheme, rest)) => format!("{scheme}://{}/", rest.split('/').next().unwrap_or("")),
        None => shown,
    }
}

/// Runs `git -C dir ARGS` for `remote`; its stdout, or an error saying
/// `what` (followed by the remote) with git's stderr.
fn run_in(remote: &Remote, dir: &Path, args: &[&str], what: &str, secrets: &Secrets) -> Result<String, String> {
    let mut cmd = git(remote, secrets)?;
    cmd.cmd.arg("-C").arg(dir).args(args);
    output(cmd, &format!("{what} {}", display_url(&remote.url)), secrets)
}

/// Runs `git`; its stdout, or an error with git's stderr (secrets masked).
fn output(mut git: Git, what: &str, secrets: &Secrets) -> Result<String, String> {
    let out = git
        .cmd
        .output()
        .map_err(|e| format!("{what}: cannot run git ({e}): install git (apt-get install git)"))?;
    if !out.status.success() {
        let stderr = secrets.scrub(String::from_utf8_lossy(&out.stderr).trim());
        return Err(format!("{what}: git failed ({}): {stderr}", out.status));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The remote's refs (`(commit, full ref name)`), those that `patterns`
/// select when given (git's ls-remote patterns: matched against the end of
/// ref names).
pub fn ls_remote(remote: &Remote, patterns: &[String], secrets: &Secrets) -> Result<Vec<(String, String)>, String> {
    let mut cmd = git(remote, secrets)?;
    cmd.cmd
        .args(["ls-remote", "--symref", "--", &remote.url])
        .args(patterns);
    let listed = output(
        cmd,
        &format!("listing the refs of {}", display_url(&remote.url)),
        secrets,
    )?;
    Ok(listed
        .lines()
        .filter(|l| !l.starts_with("ref: "))
        .filter_map(|l| l.split_once('\t'))
        .map(|(sha, name)| (sha.to_string(), name.to_string()))
        .collect())
}

/// What a ref name asks for, resolved against the remote's refs: the
/// commit and the full ref name. `name` may be `HEAD`, a full ref name, a
/// branch or tag name, or a commit (full hash, taken as it is).
pub fn resolve(refs: &[(String, String)], name: &str) -> Option<(String, String)> {
    if name.len() == 40 && name.chars().all(|c| c.is_ascii_hexdigit()) {
        return Some((name.to_ascii_lowercase(), name.to_ascii_lowercase()));
    }
    let candidates = [
        name.to_string(),
        format!("refs/{name}"),
        format!("refs/tags/{name}"),
        format!("refs/heads/{name}"),
    ];
    candidates.iter().find_map(|want| {
        // A peeled tag (`^{}`) names the commit an annotated tag points to.
        let peeled = format!("{want}^{{}}");
        refs.iter()
            .find(|(_, n)| *n == peeled)
            .or_else(|| refs.iter().find(|(_, n)| n == want))
            .map(|(sha, _)| (sha.clone(), want.clone()))
    })
}

/// What to check out and how.
#[derive(Debug, Clone, Copy)]
pub struct Checkout<'a> {
    /// The commit (full hash).
    pub commit: &'a str,
    /// A ref name that reaches it (or the commit itself).
    pub fetch_ref: &'a str,
    /// History depth (0: all of it).
    pub depth: u32,
    /// Keep `.git`.
    pub keep_git_dir: bool,
    /// Fetch the remote's tags too.
    pub include_tags: bool,
}

/// Fetches a commit into the empty directory `dest` and checks it out
/// there with its submodules (recursively, as deep); `.git` is removed
/// unless kept. Nothing of the credentials or the URL's user info stays.
/// Returns a line for progress: what was fetched, how big, how fast.
pub fn checkout(remote: &Remote, what: Checkout<'_>, dest: &Path, secrets: &Secrets) -> Result<String, String> {
    let started = std::time::Instant::now();
    let Checkout {
        commit,
        fetch_ref,
        depth,
        keep_git_dir,
        include_tags,
    } = what;
    let shown = display_url(&remote.url);
    let run = |args: &[&str], what: &str| run_in(remote, dest, args, what, secrets);
    run(&["init", "--quiet"], "initializing a checkout of")?;
    let depth_arg = format!("--depth={depth}");
    let mut fetch = vec!["fetch", "--quiet", "--no-write-fetch-head"];
    fetch.push(if include_tags { "--tags" } else { "--no-tags" });
    if depth > 0 {
        fetch.push(&depth_arg);
    }
    fetch.extend(["--", &remote.url]);
    let refspec = format!("{fetch_ref}:refs/kiln/fetched");
    let mut by_ref = fetch.clone();
    by_ref.push(&refspec);
    run(&by_ref, "fetching")?;
    let fetched = run(
        &["rev-parse", "refs/kiln/fetched^{commit}"],
        "reading what was fetched from",
    )?;
    if fetched.trim() != commit {
        // The ref moved since it was resolved: fetch the commit itself.
        let by_commit = format!("{commit}:refs/kiln/fetched");
        let mut again = fetch.clone();
        again.push(&by_commit);
        run(&again, "fetching")?;
    }
    run(&["checkout", "--quiet", "--detach", commit], "checking out")?;
    run(&["update-ref", "-d", "refs/kiln/fetched"], "cleaning the checkout of")?;
    if dest.join(".gitmodules").is_file() {
        // Relative submodule URLs resolve against the superproject's.
        run(&["config", "remote.origin.url", &shown], "configuring the checkout of")?;
        let mut update = vec!["submodule", "--quiet", "update", "--init", "--recursive"];
        if depth > 0 {
            update.push(&depth_arg);
        }
        run(&update, "checking out the submodules of")?;
    }
    let bytes = tree_bytes(&dest.join(".git"));
    let secs = started.elapsed().as_secs_f64().max(1e-3);
    let short = commit.get(..12).unwrap_or(commit);
    let said = format!(
        "fetched {short}: {} in {secs:.1}s ({}/s)",
        kiln_store::format_size(bytes),
        kiln_store::format_size((bytes as f64 / secs) as u64)
    );
    if keep_git_dir {
        std::fs::remove_file(dest.join(".git/FETCH_HEAD")).ok();
    } else {
        std::fs::remove_dir_all(dest.join(".git")).map_err(|e| format!("removing .git of {shown}: {e}"))?;
    }
    Ok(said)
}

/// The best common ancestor (`git merge-base`) of two commits, each given
/// with its remote and a ref that reaches it; their histories are fetched
/// whole into a scratch repository, removed after.
pub fn merge_base(a: (&Remote, &str, &str), b: (&Remote, &str, &str), secrets: &Secrets) -> Result<String, String> {
    let scratch = tempfile::Builder::new()
        .prefix("kiln-merge-base-")
        .tempdir()
        .map_err(|e| format!("a scratch repository: {e}"))?;
    let run = |remote: &Remote, args: &[&str], what: &str| run_in(remote, scratch.path(), args, what, secrets);
    run(a.0, &["init", "--quiet"], "finding a common ancestor in")?;
    for (i, (remote, commit, fetch_ref)) in [a, b].into_iter().enumerate() {
        let refspec = format!("{fetch_ref}:refs/kiln/side{i}");
        let fetch = [
            "fetch",
            "--quiet",
            "--no-tags",
            "--no-write-fetch-head",
            "--",
            &remote.url,
            &refspec,
        ];
        run(remote, &fetch, "fetching the history of")?;
        let fetched = run(
            remote,
            &["rev-parse", &format!("refs/kiln/side{i}^{{commit}}")],
            "reading",
        )?;
        if fetched.trim() != commit {
            return Err(format!(
                "{fetch_ref} of {} moved while it was read: run again",
                display_url(&remote.url)
            ));
        }
    }
    let base = run(a.0, &["merge-base", a.1, b.1], "finding a common ancestor in")
        .map_err(|_| format!("{} and {} have no common ancestor", a.1, b.1))?;
    Ok(base.trim().to_string())
}

/// The bytes of the files under `dir` (what a fetch brought: git's objects
/// and packs), not following symlinks.
fn tree_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => tree_bytes(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map_or(0, |m| m.len()),
            _ => 0,
        })
        .sum()
}

/// The URL without user info (which may hold a credential), for keys,
/// progress and errors.
pub fn display_url(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.split_once('@') {
            Some((userinfo, host)) if !userinfo.contains('/') => format!("{scheme}://{host}"),
            _ => url.to_string(),
        },
        None => url.to_string(),
    }
}

/// The highest semantic version among tag names, as Dagger picks it: tags
/// `vMAJOR[.MINOR[.PATCH]][-PRERELEASE][+BUILD]`, a pre-release ranking
/// below its release and above lower versions.
pub fn latest_version<'a>(tags: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    type Rank<'t> = ([u64; 3], bool, Vec<Result<u64, &'t str>>);
    fn rank(tag: &str) -> Option<Rank<'_>> {
        let bare = tag.strip_prefix('v')?;
        let bare = bare.split_once('+').map_or(bare, |(v, _)| v);
        let (core, pre) = match bare.split_once('-') {
            Some((core, pre)) => (core, Some(pre)),
            None => (bare, None),
        };
        let parts: Vec<u64> = core.split('.').map(|p| p.parse().ok()).collect::<Option<_>>()?;
        if parts.is_empty() || parts.len() > 3 {
            return None;
        }
        let mut numbers = [0; 3];
        numbers[..parts.len()].copy_from_slice(&parts);
        // Pre-release identifiers: numeric ones compare as numbers, and
        // below alphanumeric ones (Ok < Err).
        let ids = pre.map_or_else(Vec::new, |p| p.split('.').map(|i| i.parse().map_err(|_| i)).collect());
        Some((numbers, pre.is_none(), ids))
    }
    tags.into_iter()
        .filter_map(|t| Some((rank(t)?, t)))
        .max_by(|a, b| a.0.cmp(&b.0))
        .map(|(_, t)| t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_normalized_as_dagger_takes_them() {
        assert_eq!(
            normalize_url("github.com/dagger/dagger"),
            "https://github.com/dagger/dagger"
        );
        assert_eq!(
            normalize_url("git@github.com:dagger/dagger.git"),
            "git@github.com:dagger/dagger.git"
        );
        assert_eq!(normalize_url("git://127.0.0.1:9418/repo"), "git://127.0.0.1:9418/repo");
        assert_eq!(display_url("https://user:tok@host/r.git"), "https://host/r.git");
        assert_eq!(display_url("ssh://git@host/r.git"), "ssh://host/r.git");
    }

    #[test]
    fn refs_resolve_as_git_would() {
        let refs: Vec<(String, String)> = [
            ("a".repeat(40), "HEAD"),
            ("a".repeat(40), "refs/heads/main"),
            ("b".repeat(40), "refs/tags/v1.0.0"),
            ("c".repeat(40), "refs/tags/v1.0.0^{}"),
        ]
        .iter()
        .map(|(s, n)| (s.clone(), n.to_string()))
        .collect();
        assert_eq!(resolve(&refs, "HEAD").unwrap().0, "a".repeat(40));
        assert_eq!(
            resolve(&refs, "main").unwrap(),
            ("a".repeat(40), "refs/heads/main".into())
        );
        // An annotated tag resolves to the commit it points to.
        assert_eq!(
            resolve(&refs, "v1.0.0").unwrap(),
            ("c".repeat(40), "refs/tags/v1.0.0".into())
        );
        assert_eq!(resolve(&refs, &"D".repeat(40)).unwrap().0, "d".repeat(40));
        assert_eq!(resolve(&refs, "nope"), None);
    }

    #[test]
    fn the_latest_version_is_the_highest_release() {
        let tags = [
            "v1.2.0",
            "v1.10.0",
            "v1.10.1-rc1",
            "latest",
            "v0.9.9",
            "v9.9.9.9",
            "1.9.0",
        ];
        assert_eq!(latest_version(tags), Some("v1.10.1-rc1"));
        assert_eq!(
            latest_version(["v1.10.1-rc1", "v1.10.1", "v1.10.1-rc2"]),
            Some("v1.10.1")
        );
        assert_eq!(latest_version(["v2.0.0-rc.2", "v2.0.0-rc.10"]), Some("v2.0.0-rc.10"));
        assert_eq!(latest_version(["v2", "v1.9"]), Some("v2"));
        assert_eq!(latest_version(["nightly", "1.0.0"]), None);
    }
}
