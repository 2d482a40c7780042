//! `Query.http`: a URL's content as a `File`, fetched when the field is
//! resolved (once per session and content; see kiln-solver's `http`).

use std::sync::Arc;

use kiln_solver::ops;

use crate::api::{Api, Output, Registry};
use crate::args::Args;
use crate::error::ApiError;
use crate::resolver;
use crate::values::{File, Object, TreeRef};

pub fn register(r: &mut Registry) {
    r.add("Query", "http", resolver!(http));
}

async fn http(api: Arc<Api>, _: Object, args: Args) -> Result<Output, ApiError> {
    let url = args.string("url")?;
    if args.opt_string("experimentalServiceHost").is_some() {
        return Err(ApiError::NotImplemented(
            "http(experimentalServiceHost:): fetching from a service is not supported by kiln yet".into(),
        ));
    }
    let checksum = match args.opt_string("checksum") {
        Some(c) => Some(c.parse().map_err(|_| {
            ApiError::invalid(format!(
                "http: checksum {c:?} is not a sha256 digest (sha256:<64 hex digits>)"
            ))
        })?),
        None => None,
    };
    let authorization = match args.opt_string("authHeader") {
        Some(_) => {
            let secret = api.arg_secret(&args, "authHeader")?;
            let secret = api.secret_ref(&secret)?;
            Some(api.session.secret(&secret).ok_or_else(|| {
                ApiError::invalid(format!("http: secret {:?} is not set in this session", secret.name))
            })?)
        }
        None => None,
    };
    let name = match args.opt_string("name") {
        Some(name) => name,
        None => default_name(&url),
    };
    if name.contains('/') || name == "." || name == ".." {
        return Err(ApiError::invalid(format!(
            "http: name {name:?} must be a file name, not a path"
        )));
    }
    let permissions = args.int("permissions").map_or(0o600, |p| p as u32);
    let authorization = authorization.as_deref().map(String::as_str);
    let file = url_file(&api, &url, authorization, checksum, name, permissions).await?;
    Ok(Output::Object(Object::File(file)))
}

/// The content of `url` (fetched now, once per content) as the file
/// `/name` of a tree of its own.
pub(super) async fn url_file(
    api: &Api,
    url: &str,
    authorization: Option<&str>,
    checksum: Option<kiln_store::Digest>,
    name: String,
    permissions: u32,
) -> Result<File, kiln_solver::SolveError> {
    let fetched = api.session.fetch_http(url, authorization, checksum).await?;
    let op = ops::HttpFile {
        url: kiln_solver::display_url(url),
        digest: fetched.digest.to_string(),
        permissions,
        name: name.clone(),
    };
    let node = api.nodes.add(op, vec![]);
    Ok(File {
        tree: Some(TreeRef {
            node: node.digest(),
            output: 0,
        }),
        path: format!("/{name}"),
    })
}

/// The last part of the URL's path, or `index` (as Dagger names it).
pub(super) fn default_name(url: &str) -> String {
    let path = url.split(['?', '#']).next().unwrap_or("");
    let path = path.split_once("://").map_or(path, |(_, rest)| rest);
    match path.split_once('/').map(|(_, p)| p.rsplit('/').next().unwrap_or("")) {
        Some(last) if !last.is_empty() && last != "." => last.to_string(),
        _ => "index".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_name_is_the_last_part_of_the_path() {
        assert_eq!(default_name("https://example.com/a/b/tool.tar.gz?x=1"), "tool.tar.gz");
        assert_eq!(default_name("https://example.com/"), "index");
        assert_eq!(default_name("https://example.com"), "index");
        assert_eq!(default_name("http://h:8080/dir/"), "index");
    }
}
