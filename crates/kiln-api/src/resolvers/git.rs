//! Git sources: `Query.git`, `GitRepository` and `GitRef`. Refs are
//! resolved with `git ls-remote` once per session; a tree is a
//! `GitCheckout` of the resolved commit, so a commit is fetched once and
//! cached for good, and a moved branch gives a new tree.

use std::sync::Arc;

use async_graphql::Value;
use kiln_solver::git::{self, GitAuth, Remote};
use kiln_solver::ops;

use crate::api::{Api, Output, Registry};
use crate::args::Args;
use crate::error::ApiError;
use crate::resolver;
use crate::values::{Directory, GitRef, GitRepo, Object, TreeRef};

pub fn register(r: &mut Registry) {
    r.add("Query", "git", resolver!(git_repository));
    r.add("GitRepository", "id", resolver!(id));
    r.add("GitRepository", "url", resolver!(url));
    r.add("GitRepository", "head", resolver!(head));
    r.add("GitRepository", "branch", resolver!(branch));
    r.add("GitRepository", "tag", resolver!(tag));
    r.add("GitRepository", "ref", resolver!(any_ref));
    r.add("GitRepository", "commit", resolver!(commit));
    r.add("GitRepository", "latestVersion", resolver!(latest_version));
    r.add("GitRepository", "tags", resolver!(tags));
    r.add("GitRepository", "branches", resolver!(branches));
    r.add("GitRef", "id", resolver!(id));
    r.add("GitRef", "commit", resolver!(ref_commit));
    r.add("GitRef", "ref", resolver!(ref_name));
    r.add("GitRef", "tree", resolver!(tree));
    r.add("GitRef", "commonAncestor", resolver!(common_ancestor));
    r.add("Host", "unixSocket", resolver!(unix_socket));
    r.add("Socket", "id", resolver!(id));
}

/// A unix socket of the client's host (an SSH agent's, for git): its path,
/// which an engine on that host reaches as it is.
async fn unix_socket(api: Arc<Api>, _: Object, args: Args) -> Result<Output, ApiError> {
    super::service::local_only(&api, "Host.unixSocket")?;
    let path = api.host_path(&args.string("path")?);
    use std::os::unix::fs::FileTypeExt;
    if !std::fs::metadata(&path).is_ok_and(|m| m.file_type().is_socket()) {
        return Err(ApiError::invalid(format!(
            "host unix socket {}: not a socket",
            path.display()
        )));
    }
    Ok(Output::Object(Object::Socket {
        path: path.display().to_string(),
    }))
}

async fn id(api: Arc<Api>, obj: Object, _: Args) -> Result<Output, ApiError> {
    api.id(&obj)
}

async fn git_repository(api: Arc<Api>, _: Object, args: Args) -> Result<Output, ApiError> {
    if args.opt_string("experimentalServiceHost").is_some() {
        return Err(ApiError::NotImplemented(
            "git(experimentalServiceHost:) is not supported by kiln yet".into(),
        ));
    }
    let ssh_agent_socket = match args.opt_string("sshAuthSocket") {
        Some(_) => match api.arg_object(&args, "sshAuthSocket")? {
            Object::Socket { path } => Some(path),
            other => {
                return Err(ApiError::invalid(format!(
                    "sshAuthSocket must be a Socket ID, got a {}",
                    other.type_name()
                )));
            }
        },
        None => None,
    };
    let secret = |name: &str| match args.opt_string(name) {
        Some(_) => api.arg_secret(&args, name).map(Some),
        None => Ok(None),
    };
    let repo = GitRepo {
        url: git::normalize_url(&args.string("url")?),
        username: args.opt_string("httpAuthUsername").unwrap_or_default(),
        token: secret("httpAuthToken")?,
        header: secret("httpAuthHeader")?,
        ssh_known_hosts: args.opt_string("sshKnownHosts").unwrap_or_default(),
        ssh_agent_socket,
        discard_git_dir: args.opt_bool("keepGitDir") == Some(false),
    };
    Ok(Output::Object(Object::GitRepository(Box::new(repo))))
}

fn repo(obj: Object) -> Result<GitRepo, ApiError> {
    match obj {
        Object::GitRepository(r) => Ok(*r),
        other => Err(ApiError::internal(format!(
            "expected a GitRepository, got a {}",
            other.type_name()
        ))),
    }
}

fn git_ref(obj: Object) -> Result<GitRef, ApiError> {
    match obj {
        Object::GitRef(r) => Ok(*r),
        other => Err(ApiError::internal(format!(
            "expected a GitRef, got a {}",
            other.type_name()
        ))),
    }
}

/// The remote as the solver takes it (secrets by reference).
fn remote(api: &Api, repo: &GitRepo) -> Result<Remote, ApiError> {
    let secret = |s: &Option<crate::values::Secret>| s.as_ref().map(|s| api.secret_ref(s)).transpose();
    Ok(Remote {
        url: repo.url.clone(),
        auth: GitAuth {
            username: repo.username.clone(),
            token: secret(&repo.token)?,
            header: secret(&repo.header)?,
        },
        ssh: git::SshOptions {
            known_hosts: repo.ssh_known_hosts.clone(),
            agent_socket: repo.ssh_agent_socket.as_ref().map(Into::into),
        },
    })
}

fn with_ref(obj: Object, name: String) -> Result<Output, ApiError> {
    let r = GitRef { repo: repo(obj)?, name };
    Ok(Output::Object(Object::GitRef(Box::new(r))))
}

async fn url(_: Arc<Api>, obj: Object, _: Args) -> Result<Output, ApiError> {
    Ok(Output::string(git::display_url(&repo(obj)?.url)))
}

async fn head(_: Arc<Api>, obj: Object, _: Args) -> Result<Output, ApiError> {
    with_ref(obj, "HEAD".into())
}

async fn branch(_: Arc<Api>, obj: Object, args: Args) -> Result<Output, ApiError> {
    let name = args.string("name")?;
    with_ref(obj, format!("refs/heads/{}", name.trim_start_matches("refs/heads/")))
}

async fn tag(_: Arc<Api>, obj: Object, args: Args) -> Result<Output, ApiError> {
    let name = args.string("name")?;
    with_ref(obj, format!("refs/tags/{}", name.trim_start_matches("refs/tags/")))
}

async fn any_ref(_: Arc<Api>, obj: Object, args: Args) -> Result<Output, ApiError> {
    with_ref(obj, args.string("name")?)
}

async fn commit(_: Arc<Api>, obj: Object, args: Args) -> Result<Output, ApiError> {
    let id = args.string("id")?;
    if id.len() != 40 || !id.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(ApiError::invalid(format!(
            "git commit {id:?}: give the full 40-digit hash"
        )));
    }
    with_ref(obj, id)
}

/// The names of the remote's refs under `prefix` that `patterns` select
/// (git's ls-remote patterns: the end of the name, `*` wildcards).
async fn names(api: &Api, repo: &GitRepo, prefix: &str, patterns: &[String]) -> Result<Vec<String>, ApiError> {
    let refs = api.session.git_refs(&remote(api, repo)?).await?;
    let globs = patterns
        .iter()
        .map(|p| globset::Glob::new(&format!("*{}", p.trim_start_matches('/'))).map(|g| g.compile_matcher()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ApiError::invalid(format!("bad pattern: {e}")))?;
    let mut found: Vec<String> = refs
        .iter()
        .filter_map(|(_, n)| n.strip_prefix(prefix))
        .filter(|n| !n.ends_with("^{}"))
        .filter(|n| globs.is_empty() || globs.iter().any(|g| g.is_match(format!("{prefix}{n}"))))
        .map(str::to_string)
        .collect();
    found.sort();
    found.dedup();
    Ok(found)
}

fn strings(list: Vec<String>) -> Output {
    Output::Value(Value::List(list.into_iter().map(Value::String).collect()))
}

async fn tags(api: Arc<Api>, obj: Object, args: Args) -> Result<Output, ApiError> {
    Ok(strings(
        names(&api, &repo(obj)?, "refs/tags/", &args.strings("patterns")).await?,
    ))
}

async fn branches(api: Arc<Api>, obj: Object, args: Args) -> Result<Output, ApiError> {
    Ok(strings(
        names(&api, &repo(obj)?, "refs/heads/", &args.strings("patterns")).await?,
    ))
}

async fn latest_version(api: Arc<Api>, obj: Object, _: Args) -> Result<Output, ApiError> {
    let repo = repo(obj)?;
    let tags = names(&api, &repo, "refs/tags/", &[]).await?;
    let latest = git::latest_version(tags.iter().map(String::as_str))
        .ok_or_else(|| ApiError::invalid(format!("{}: no tag is a version (vX.Y.Z)", git::display_url(&repo.url))))?;
    let r = GitRef {
        name: format!("refs/tags/{latest}"),
        repo,
    };
    Ok(Output::Object(Object::GitRef(Box::new(r))))
}

/// The commit and full name the ref stands for in this session.
async fn resolved(api: &Api, r: &GitRef) -> Result<(String, String), ApiError> {
    let refs = api.session.git_refs(&remote(api, &r.repo)?).await?;
    git::resolve(&refs, &r.name).ok_or_else(|| {
        ApiError::invalid(format!(
            "git {}: no ref {:?} there (see its branches and tags)",
            git::display_url(&r.repo.url),
            r.name
        ))
    })
}

async fn ref_commit(api: Arc<Api>, obj: Object, _: Args) -> Result<Output, ApiError> {
    Ok(Output::string(resolved(&api, &git_ref(obj)?).await?.0))
}

async fn ref_name(api: Arc<Api>, obj: Object, _: Args) -> Result<Output, ApiError> {
    Ok(Output::string(resolved(&api, &git_ref(obj)?).await?.1))
}

/// The best common ancestor of this ref's commit and another's.
async fn common_ancestor(api: Arc<Api>, obj: Object, args: Args) -> Result<Output, ApiError> {
    let mine = git_ref(obj)?;
    let other = match api.arg_object(&args, "other")? {
        Object::GitRef(r) => *r,
        other => {
            return Err(ApiError::invalid(format!(
                "other must be a GitRef ID, got a {}",
                other.type_name()
            )));
        }
    };
    let (a, b) = (resolved(&api, &mine).await?, resolved(&api, &other).await?);
    let (ra, rb) = (remote(&api, &mine.repo)?, remote(&api, &other.repo)?);
    let base = api.session.git_merge_base((ra, a.0, a.1), (rb, b.0, b.1)).await?;
    let r = GitRef {
        repo: mine.repo,
        name: base,
    };
    Ok(Output::Object(Object::GitRef(Box::new(r))))
}

async fn tree(api: Arc<Api>, obj: Object, args: Args) -> Result<Output, ApiError> {
    let r = git_ref(obj)?;
    let (commit, name) = resolved(&api, &r).await?;
    let depth = args.int("depth").unwrap_or(1);
    let op = ops::GitCheckout {
        remote: remote(&api, &r.repo)?,
        fetch_ref: if name == commit { String::new() } else { name },
        commit,
        depth: u32::try_from(depth.max(0)).unwrap_or(u32::MAX),
        keep_git_dir: !(args.bool("discardGitDir") || r.repo.discard_git_dir),
        include_tags: args.bool("includeTags"),
    };
    let node = api.nodes.add(op, vec![]);
    Ok(Output::Object(Object::Directory(Directory {
        tree: Some(TreeRef {
            node: node.digest(),
            output: 0,
        }),
        path: "/".into(),
    })))
}
