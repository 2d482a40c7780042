//! The API state of one session and the resolver table.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_graphql::Value;
use futures::future::BoxFuture;
use kiln_solver::{Engine, Session};
use kiln_store::{MergedView, SnapshotId};

use crate::args::Args;
use crate::error::ApiError;
use crate::nodes::Nodes;
use crate::values::{Container, Directory, File, Object, Secret, TreeRef};
use kiln_graph::SecretRef;

/// What a resolver returns.
pub enum Output {
    /// `null`.
    Null,
    /// A scalar or enum.
    Value(Value),
    /// An object.
    Object(Object),
    /// A list of objects.
    Objects(Vec<Object>),
}

impl Output {
    /// A string scalar.
    pub fn string(s: impl Into<String>) -> Self {
        Output::Value(Value::String(s.into()))
    }
}

/// A resolver: parent object and arguments in, output out.
pub type Resolver = fn(Arc<Api>, Object, Args) -> BoxFuture<'static, Result<Output, ApiError>>;

/// The API of one client session.
pub struct Api {
    /// The engine.
    pub engine: Arc<Engine>,
    /// The solver session (memo of solved nodes).
    pub session: Session,
    /// Nodes and IDs.
    pub nodes: Nodes,
    /// The client's working directory (for relative host paths).
    pub cwd: PathBuf,
    /// The services the session started, running until it ends.
    pub(crate) held: crate::resolvers::service::Held,
    resolvers: HashMap<(&'static str, &'static str), Resolver>,
}

/// Registers resolvers by `(type, field)`.
pub struct Registry(HashMap<(&'static str, &'static str), Resolver>);

impl Registry {
    /// Adds a resolver.
    pub fn add(&mut self, ty: &'static str, field: &'static str, r: Resolver) {
        self.0.insert((ty, field), r);
    }

    /// Whether `ty.field` has a resolver.
    pub fn contains(&self, ty: &str, field: &str) -> bool {
        self.0.keys().any(|(t, f)| *t == ty && *f == field)
    }
}

/// Wraps an async resolver function into a [`Resolver`].
#[macro_export]
macro_rules! resolver {
    ($f:path) => {{
        fn wrapped(
            api: std::sync::Arc<$crate::api::Api>,
            obj: $crate::values::Object,
            args: $crate::args::Args,
        ) -> futures::future::BoxFuture<'static, Result<$crate::api::Output, $crate::error::ApiError>> {
            Box::pin($f(api, obj, args))
        }
        wrapped as $crate::api::Resolver
    }};
}

/// Every resolver kiln implements.
pub fn registry() -> Registry {
    let mut r = Registry(HashMap::new());
    crate::resolvers::register(&mut r);
    r
}

impl Api {
    /// The API of `session`, whose client's relative paths are relative
    /// to `cwd`.
    pub fn new(session: Session, cwd: PathBuf) -> Arc<Self> {
        let engine = session.engine().clone();
        Arc::new(Self {
            session,
            nodes: Nodes::new(engine.clone()),
            engine,
            cwd,
            held: Default::default(),
            resolvers: registry().0,
        })
    }

    /// Resolves `ty.field` on `parent`.
    pub async fn resolve(
        self: Arc<Self>,
        ty: &str,
        field: &str,
        parent: Object,
        args: Args,
    ) -> Result<Output, ApiError> {
        match self.resolvers.get(&(ty, field)) {
            Some(r) => r(self.clone(), parent, args).await,
            None => Err(ApiError::NotImplemented(format!("{ty}.{field}"))),
        }
    }

    /// Loads the object of the `id` argument, checking its type.
    pub fn load_id(&self, args: &Args, expected: Option<&str>) -> Result<Output, ApiError> {
        let object = self.nodes.load(&args.string("id")?)?;
        if let Some(t) = expected
            && object.type_name() != t
        {
            return Err(ApiError::invalid(format!("ID is a {}, not a {t}", object.type_name())));
        }
        Ok(Output::Object(object))
    }

    /// The object behind an ID argument, which must be of type `T`.
    pub fn arg_object(&self, args: &Args, name: &str) -> Result<Object, ApiError> {
        self.nodes.load(&args.string(name)?)
    }

    /// A directory ID argument.
    pub fn arg_directory(&self, args: &Args, name: &str) -> Result<Directory, ApiError> {
        match self.arg_object(args, name)? {
            Object::Directory(d) => Ok(d),
            other => Err(ApiError::invalid(format!(
                "argument {name} must be a Directory ID, got a {}",
                other.type_name()
            ))),
        }
    }

    /// A file ID argument.
    pub fn arg_file(&self, args: &Args, name: &str) -> Result<File, ApiError> {
        match self.arg_object(args, name)? {
            Object::File(f) => Ok(f),
            other => Err(ApiError::invalid(format!(
                "argument {name} must be a File ID, got a {}",
                other.type_name()
            ))),
        }
    }

    /// A secret ID argument.
    pub fn arg_secret(&self, args: &Args, name: &str) -> Result<Secret, ApiError> {
        match self.arg_object(args, name)? {
            Object::Secret(s) => Ok(s),
            other => Err(ApiError::invalid(format!(
                "argument {name} must be a Secret ID, got a {}",
                other.type_name()
            ))),
        }
    }

    /// The graph's name for a secret, reading a `secret(uri)` value again
    /// when this engine does not hold it (an ID from an earlier session).
    pub fn secret_ref(&self, secret: &Secret) -> Result<SecretRef, ApiError> {
        let known = SecretRef {
            name: secret.name.clone(),
            digest: secret.digest.clone(),
        };
        if self.session.secret(&known).is_some() {
            return Ok(known);
        }
        match &secret.uri {
            // Read again from this client's side: its own env, files, commands.
            Some(uri) => {
                let plaintext = crate::resolvers::secret::read_uri(self.session.host().as_ref(), uri)?;
                Ok(self.session.add_secret(&secret.name, plaintext))
            }
            None => Err(ApiError::invalid(format!(
                "secret {:?} was not set in this session (an ID from another session or client does not \
                 carry its value): set it again with setSecret",
                secret.name
            ))),
        }
    }

    /// Solves a tree and returns its top snapshot.
    pub async fn solve_tree(&self, tree: Option<TreeRef>) -> Result<Option<SnapshotId>, ApiError> {
        let input = self.nodes.input(tree)?;
        let solved = self.session.solve(&input.node).await?;
        Ok(solved.output(input.output))
    }

    /// Solves a tree and returns a view of it.
    pub async fn view(&self, tree: Option<TreeRef>) -> Result<MergedView, ApiError> {
        let top = self.solve_tree(tree).await?;
        self.engine.store().view(top).map_err(ApiError::internal)
    }

    /// A host path as the client meant it (relative to its working dir).
    pub fn host_path(&self, path: &str) -> PathBuf {
        let p = Path::new(path);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.cwd.join(p)
        }
    }

    /// The ID of an object, as an output value.
    pub fn id(&self, object: &Object) -> Result<Output, ApiError> {
        Ok(Output::Value(Value::String(self.nodes.id_of(object)?)))
    }
}

/// Replaces `$VAR` and `${VAR}` with values from `env` (unknown: empty), as
/// the `expand` arguments ask. `$$` stays a literal `$`.
pub fn expand(text: &str, env: &[(String, String)]) -> String {
    let lookup = |name: &str| {
        env.iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or("")
    };
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(braced) = after.strip_prefix('{')
            && let Some(end) = braced.find('}')
        {
            out.push_str(lookup(&braced[..end]));
            rest = &braced[end + 1..];
        } else if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            if end == 0 {
                out.push('$');
            } else {
                out.push_str(lookup(&after[..end]));
            }
            rest = &after[end..];
        }
    }
    out.push_str(rest);
    out
}

/// Joins `path` onto `base` unless absolute, and normalizes it.
pub fn join_path(base: &str, path: &str) -> String {
    let joined = if path.starts_with('/') {
        PathBuf::from(path)
    } else {
        Path::new(base).join(path)
    };
    let clean = kiln_store::merged::clean(&joined);
    format!("/{}", clean.display())
}

/// Unwraps a container parent.
pub fn container(obj: Object) -> Result<Container, ApiError> {
    match obj {
        Object::Container(c) => Ok(*c),
        other => Err(ApiError::internal(format!(
            "expected a Container, got a {}",
            other.type_name()
        ))),
    }
}

/// Unwraps a directory parent.
pub fn directory(obj: Object) -> Result<Directory, ApiError> {
    match obj {
        Object::Directory(d) => Ok(d),
        other => Err(ApiError::internal(format!(
            "expected a Directory, got a {}",
            other.type_name()
        ))),
    }
}

/// Unwraps a file parent.
pub fn file(obj: Object) -> Result<File, ApiError> {
    match obj {
        Object::File(f) => Ok(f),
        other => Err(ApiError::internal(format!(
            "expected a File, got a {}",
            other.type_name()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_variables_like_a_shell() {
        let env = vec![
            ("HOME".to_string(), "/root".to_string()),
            ("V".to_string(), "x".to_string()),
        ];
        assert_eq!(expand("$HOME/a", &env), "/root/a");
        assert_eq!(expand("${V}y-$V-$NOPE-$$-$", &env), "xy-x--$-$");
        assert_eq!(expand("no vars", &env), "no vars");
    }

    #[test]
    fn joins_and_cleans_paths() {
        assert_eq!(join_path("/work", "src"), "/work/src");
        assert_eq!(join_path("/work", "/abs/./x/../y"), "/abs/y");
        assert_eq!(join_path("/", "."), "/");
        assert_eq!(join_path("/a", "../../.."), "/");
    }
}
