//! Include/exclude path patterns, with `.dockerignore`-like semantics: a
//! pattern matches a path or any of its parent directories, `*` stays within
//! one path component, `**` spans any number, and `!pattern` re-includes.

use std::path::Path;

use globset::{Glob, GlobBuilder, GlobMatcher};

/// A pattern that is not a valid glob.
#[derive(Debug, thiserror::Error)]
#[error("invalid path pattern {pattern:?}: {reason}")]
pub struct FilterError {
    /// The pattern as given.
    pub pattern: String,
    /// What is wrong with it.
    pub reason: String,
}

/// Compiled include and exclude patterns.
#[derive(Debug, Clone)]
pub struct PathFilter {
    include: Vec<GlobMatcher>,
    /// Each include pattern split into components (`None`: `**`, or a
    /// component that could match anything), to skip directories under
    /// which no include pattern can match.
    include_parts: Vec<Vec<Option<GlobMatcher>>>,
    exclude: Vec<(GlobMatcher, bool)>,
    has_negation: bool,
    fingerprint: [u8; 32],
    /// The patterns as given (to pass the filter on to another machine).
    patterns: (Vec<String>, Vec<String>),
    /// Whether a host walk also leaves out what `.gitignore` files ignore.
    gitignore: bool,
}

impl Default for PathFilter {
    fn default() -> Self {
        Self {
            include: Vec::new(),
            include_parts: Vec::new(),
            exclude: Vec::new(),
            has_negation: false,
            fingerprint: fingerprint(&[], &[]),
            patterns: Default::default(),
            gitignore: false,
        }
    }
}

fn fingerprint(include: &[String], exclude: &[String]) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    for (tag, list) in [(b"i", include), (b"e", exclude)] {
        for p in list {
            h.update(tag)
                .update(&(p.len() as u64).to_le_bytes())
                .update(p.as_bytes());
        }
    }
    *h.finalize().as_bytes()
}

/// The components of an include pattern, each compiled on its own.
fn components(pattern: &str) -> Vec<Option<GlobMatcher>> {
    let cleaned = pattern
        .trim_start_matches("./")
        .trim_start_matches('/')
        .trim_end_matches('/');
    cleaned
        .split('/')
        .map(|c| match c {
            "**" => None,
            c => GlobBuilder::new(c)
                .literal_separator(true)
                .backslash_escape(true)
                .build()
                .ok()
                .map(|g| g.compile_matcher()),
        })
        .collect()
}

fn compile(pattern: &str) -> Result<GlobMatcher, FilterError> {
    let cleaned = pattern
        .trim_start_matches("./")
        .trim_start_matches('/')
        .trim_end_matches('/');
    let glob: Glob = GlobBuilder::new(cleaned)
        .literal_separator(true)
        .backslash_escape(true)
        .build()
        .map_err(|e| FilterError {
            pattern: pattern.to_string(),
            reason: e.kind().to_string(),
        })?;
    Ok(glob.compile_matcher())
}

fn self_or_ancestor(m: &GlobMatcher, rel: &Path) -> bool {
    rel.ancestors()
        .filter(|a| !a.as_os_str().is_empty())
        .any(|a| m.is_match(a))
}

impl PathFilter {
    /// The include and exclude patterns the filter was made of.
    pub fn patterns(&self) -> (&[String], &[String]) {
        (&self.patterns.0, &self.patterns.1)
    }

    /// The same filter, which in a host walk also leaves out what the
    /// `.gitignore` files of the tree (and of its parents up to the git
    /// repository's root) ignore.
    pub fn with_gitignore(mut self, gitignore: bool) -> Self {
        if gitignore != self.gitignore {
            self.gitignore = gitignore;
            let mut h = blake3::Hasher::new();
            h.update(&self.fingerprint).update(b"gitignore");
            self.fingerprint = *h.finalize().as_bytes();
        }
        self
    }

    /// Whether a host walk honours `.gitignore` files.
    pub fn gitignore(&self) -> bool {
        self.gitignore
    }

    /// Compiles the patterns. Empty `include` means everything.
    pub fn new(include: &[String], exclude: &[String]) -> Result<Self, FilterError> {
        let patterns = (include.to_vec(), exclude.to_vec());
        let fingerprint = fingerprint(include, exclude);
        let include_parts = include.iter().map(|p| components(p)).collect();
        let include = include.iter().map(|p| compile(p)).collect::<Result<_, _>>()?;
        let mut has_negation = false;
        let exclude = exclude
            .iter()
            .filter(|p| !p.trim().is_empty() && !p.starts_with('#'))
            .map(|p| match p.strip_prefix('!') {
                Some(rest) => {
                    has_negation = true;
                    Ok((compile(rest)?, true))
                }
                None => Ok((compile(p)?, false)),
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            patterns,
            include,
            include_parts,
            exclude,
            has_negation,
            fingerprint,
            gitignore: false,
        })
    }

    /// A digest of the patterns: equal filters have equal fingerprints.
    pub fn fingerprint(&self) -> &[u8; 32] {
        &self.fingerprint
    }

    /// Whether directory `rel` or something under it can be included: false
    /// when every include pattern needs a different path prefix, so that a
    /// walk need not look inside.
    pub fn may_include_under(&self, rel: &Path) -> bool {
        if self.include_parts.is_empty() {
            return true;
        }
        let dir: Vec<_> = rel.components().map(|c| c.as_os_str()).collect();
        self.include_parts.iter().any(|parts| {
            for (part, name) in parts.iter().zip(&dir) {
                match part {
                    None => return true,
                    Some(m) if !m.is_match(Path::new(name)) => return false,
                    Some(_) => {}
                }
            }
            true
        })
    }

    /// Whether the filter keeps everything.
    pub fn is_empty(&self) -> bool {
        self.include.is_empty() && self.exclude.is_empty()
    }

    /// Whether `rel` (or a parent of it) is excluded.
    pub fn excluded(&self, rel: &Path) -> bool {
        let mut excluded = false;
        for (m, negated) in &self.exclude {
            if self_or_ancestor(m, rel) {
                excluded = !negated;
            }
        }
        excluded
    }

    /// Whether an excluded directory can be skipped without looking inside
    /// (no `!` pattern could re-include something in it).
    pub fn prunes(&self, rel: &Path) -> bool {
        !self.has_negation && self.excluded(rel)
    }

    /// Whether `rel` (or a parent of it) matches an include pattern.
    pub fn included(&self, rel: &Path) -> bool {
        self.include.is_empty() || self.include.iter().any(|m| self_or_ancestor(m, rel))
    }

    /// Whether `rel` is kept: included and not excluded.
    pub fn keeps(&self, rel: &Path) -> bool {
        self.included(rel) && !self.excluded(rel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(inc: &[&str], exc: &[&str]) -> PathFilter {
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        PathFilter::new(&s(inc), &s(exc)).unwrap()
    }

    #[test]
    fn excludes_match_parents_and_respect_separators() {
        let p = f(&[], &["node_modules", "*.log", "**/target"]);
        assert!(p.excluded(Path::new("node_modules/x/y.js")));
        assert!(!p.excluded(Path::new("src/node_modules")));
        assert!(p.excluded(Path::new("a.log")));
        assert!(!p.excluded(Path::new("logs/a.log")));
        assert!(p.excluded(Path::new("deep/er/target/debug")));
        assert!(p.prunes(Path::new("node_modules")));
    }

    #[test]
    fn negation_reincludes_and_disables_pruning() {
        let p = f(&[], &["docs", "!docs/keep.md"]);
        assert!(p.excluded(Path::new("docs/other.md")));
        assert!(!p.excluded(Path::new("docs/keep.md")));
        assert!(!p.prunes(Path::new("docs")));
    }

    #[test]
    fn includes_select_subtrees() {
        let p = f(&["src", "*.toml"], &["src/gen"]);
        assert!(p.keeps(Path::new("src/main.rs")));
        assert!(p.keeps(Path::new("Cargo.toml")));
        assert!(!p.keeps(Path::new("README.md")));
        assert!(!p.keeps(Path::new("src/gen/x.rs")));
        assert!(PathFilter::new(&["[".into()], &[]).is_err());
    }

    #[test]
    fn includes_tell_which_directories_can_hold_matches() {
        let p = f(&["src/*/lib", "*.toml"], &[]);
        assert!(p.may_include_under(Path::new("src")));
        assert!(p.may_include_under(Path::new("src/a")));
        assert!(p.may_include_under(Path::new("src/a/lib/deep")));
        assert!(!p.may_include_under(Path::new("src/a/bin")));
        assert!(!p.may_include_under(Path::new("docs")));
        // A one-component pattern matches top-level entries, and "x.toml/"
        // would be a directory included as a whole.
        assert!(p.may_include_under(Path::new("x.toml")));
        let anywhere = f(&["**/*.rs"], &[]);
        assert!(anywhere.may_include_under(Path::new("any/where")));
        assert!(f(&[], &[]).may_include_under(Path::new("x")));
        assert_eq!(f(&["a"], &[]).fingerprint(), f(&["a"], &[]).fingerprint());
        assert_ne!(f(&["a"], &[]).fingerprint(), f(&[], &["a"]).fingerprint());
    }
}
