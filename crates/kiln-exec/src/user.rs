//! Resolving a container user spec (`name`, `uid`, `name:group`, `uid:gid`)
//! against the image's `/etc/passwd` and `/etc/group`, as Docker does.

/// A resolved process identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary groups (from `/etc/group` membership).
    pub additional_gids: Vec<u32>,
    /// Home directory (for a default `HOME`).
    pub home: String,
}

/// A user spec that cannot be resolved.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    /// A name that is not in `/etc/passwd`.
    #[error("user {0:?} not found in the container's /etc/passwd (use a numeric uid or add the user)")]
    UnknownUser(String),
    /// A group name that is not in `/etc/group`.
    #[error("group {0:?} not found in the container's /etc/group (use a numeric gid or add the group)")]
    UnknownGroup(String),
}

struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

fn passwd_entries(passwd: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    passwd.lines().filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 6).then_some(())?;
        Some(PasswdEntry {
            name: f[0],
            uid: f[2].parse().ok()?,
            gid: f[3].parse().ok()?,
            home: f[5],
        })
    })
}

/// `(name, gid, members)` of each `/etc/group` line.
fn group_entries(group: &str) -> impl Iterator<Item = (&str, u32, Vec<&str>)> {
    group.lines().filter_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 4).then_some(())?;
        let members = f[3].split(',').filter(|m| !m.is_empty()).collect();
        Some((f[0], f[2].parse().ok()?, members))
    })
}

/// Resolves `spec` (empty means root) given the contents of the
/// container's `/etc/passwd` and `/etc/group` (empty when absent).
pub fn resolve(spec: &str, passwd: &str, group: &str) -> Result<Identity, UserError> {
    let (user, grp) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let user = if user.is_empty() { "0" } else { user };
    let entry = passwd_entries(passwd).find(|e| e.name == user || user.parse::<u32>().is_ok_and(|u| u == e.uid));
    let (uid, mut gid, name, home) = match (user.parse::<u32>(), &entry) {
        (_, Some(e)) => (e.uid, e.gid, Some(e.name), e.home.to_string()),
        (Ok(uid), None) => (uid, uid, None, "/".to_string()),
        (Err(_), None) => return Err(UserError::UnknownUser(user.to_string())),
    };
    if entry.is_none() && uid == 0 {
        gid = 0;
    }
    if let Some(g) = grp {
        gid = match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => group_entries(group)
                .find(|(n, _, _)| *n == g)
                .map(|(_, gid, _)| gid)
                .ok_or_else(|| UserError::UnknownGroup(g.to_string()))?,
        };
    }
    let additional_gids = match (grp, name) {
        (None, Some(name)) => group_entries(group)
            .filter(|(_, g, members)| *g != gid && members.contains(&name))
            .map(|(_, g, _)| g)
            .collect(),
        _ => Vec::new(),
    };
    Ok(Identity {
        uid,
        gid,
        additional_gids,
        home: if home.is_empty() { "/".into() } else { home },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n";
    const GROUP: &str = "root:x:0:\napp:x:1000:\nbuilders:x:2000:app,other\n";

    #[test]
    fn resolves_names_numbers_and_groups() {
        let root = resolve("", PASSWD, GROUP).unwrap();
        assert_eq!((root.uid, root.gid, root.home.as_str()), (0, 0, "/root"));
        let app = resolve("app", PASSWD, GROUP).unwrap();
        assert_eq!(
            (app.uid, app.gid, app.additional_gids.clone()),
            (1000, 1000, vec![2000])
        );
        assert_eq!(resolve("1000", PASSWD, GROUP).unwrap(), app);
        let x = resolve("app:builders", PASSWD, GROUP).unwrap();
        assert_eq!((x.uid, x.gid), (1000, 2000));
        let n = resolve("4242:4343", PASSWD, GROUP).unwrap();
        assert_eq!((n.uid, n.gid, n.home.as_str()), (4242, 4343, "/"));
        assert!(matches!(
            resolve("nobody", PASSWD, GROUP),
            Err(UserError::UnknownUser(_))
        ));
        assert!(matches!(
            resolve("app:nogroup", PASSWD, GROUP),
            Err(UserError::UnknownGroup(_))
        ));
    }
}
