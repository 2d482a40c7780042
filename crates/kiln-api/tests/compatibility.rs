//! Keeps docs/compatibility.md in step with the schema and the resolvers:
//! every field of the served Dagger core schema, implemented or not.
//! Regenerate with `KILN_BLESS=1 cargo test -p kiln-api --test compatibility`.

use std::collections::BTreeMap;
use std::path::PathBuf;

fn table() -> String {
    let registry = kiln_api::api::registry();
    let mut by_type: BTreeMap<String, Vec<(String, bool)>> = BTreeMap::new();
    for (ty, field) in kiln_api::schema::fields() {
        let implemented = registry.contains(&ty, &field);
        by_type.entry(ty).or_default().push((field, implemented));
    }
    let loaders: Vec<String> = by_type
        .iter()
        .filter(|(ty, fields)| *ty != "Query" && fields.iter().any(|(f, _)| f == "id"))
        .map(|(ty, _)| format!("`load{ty}FromID`"))
        .collect();
    let total: usize = by_type.values().map(Vec::len).sum();
    let done: usize = by_type.values().flatten().filter(|(_, i)| *i).count();
    let mut out = String::from("# Dagger API compatibility\n\n");
    out.push_str(
        "Generated from kiln's served schema (`crates/kiln-api/schema/dagger-core.graphqls`, the Dagger v0.21 core\n\
         types) and its resolver table by `crates/kiln-api/tests/compatibility.rs`; regenerate with\n\
         `KILN_BLESS=1 cargo test -p kiln-api --test compatibility`. A field marked *not yet* exists in the schema\n\
         (SDKs can introspect and call it) and answers a GraphQL error naming it.\n\n",
    );
    out.push_str(&format!(
        "**{done} of {total} fields implemented.** Legacy loaders served as well: {} (each with its `<Type>ID` scalar).\n",
        loaders.join(", ")
    ));
    for (ty, fields) in &by_type {
        let n = fields.iter().filter(|(_, i)| *i).count();
        out.push_str(&format!(
            "\n## {ty} ({n}/{})\n\n| field | status |\n|---|---|\n",
            fields.len()
        ));
        for (f, implemented) in fields {
            out.push_str(&format!(
                "| `{f}` | {} |\n",
                if *implemented { "implemented" } else { "not yet" }
            ));
        }
    }
    out
}

#[test]
fn compatibility_table_is_current() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/compatibility.md");
    let expected = table();
    if std::env::var_os("KILN_BLESS").is_some() {
        std::fs::write(&path, &expected).unwrap();
    }
    let actual = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        actual == expected,
        "docs/compatibility.md is out of date: run KILN_BLESS=1 cargo test -p kiln-api --test compatibility"
    );
}
