//! Entry names of layer tarballs, reduced to plain components.

/// Prefix of OCI whiteout entries.
pub const WHITEOUT_PREFIX: &[u8] = b".wh.";
/// Name of the OCI opaque-directory marker.
pub const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";

/// A path inside the layer as its normal components (no `.`, `..` or empty
/// ones), borrowed from the entry name; empty for the layer root.
pub type Components<'a> = Vec<&'a [u8]>;

/// Splits a tar entry name into components: leading `/` and `./` and
/// repeated slashes are dropped; any `..` component is refused.
pub fn components(raw: &[u8]) -> Result<Components<'_>, String> {
    let mut out = Vec::new();
    for part in raw.split(|b| *b == b'/') {
        match part {
            b"" | b"." => continue,
            b".." => return Err("its path has a `..` component".to_string()),
            p => out.push(p),
        }
    }
    Ok(out)
}

/// `a/b/c` for messages.
pub fn display(comps: &[&[u8]]) -> String {
    if comps.is_empty() {
        return "/".to_string();
    }
    comps
        .iter()
        .map(|c| String::from_utf8_lossy(c))
        .collect::<Vec<_>>()
        .join("/")
}

/// Whether a component is a whiteout name.
pub fn is_whiteout_name(c: &[u8]) -> bool {
    c.starts_with(WHITEOUT_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Result<Vec<String>, String> {
        components(s.as_bytes()).map(|v| v.into_iter().map(|c| String::from_utf8(c.to_vec()).unwrap()).collect())
    }

    #[test]
    fn strips_and_refuses() {
        assert_eq!(c("/etc/passwd").unwrap(), ["etc", "passwd"]);
        assert_eq!(c("./etc//passwd/").unwrap(), ["etc", "passwd"]);
        assert_eq!(c("./").unwrap(), Vec::<String>::new());
        assert_eq!(c("a/./b").unwrap(), ["a", "b"]);
        assert_eq!(c("..a/b..").unwrap(), ["..a", "b.."]);
        for bad in ["../etc/passwd", "a/../../b", "/..", "a/.."] {
            assert!(c(bad).is_err(), "{bad}");
        }
        assert_eq!(display(&components(b"a/b").unwrap()), "a/b");
    }
}
