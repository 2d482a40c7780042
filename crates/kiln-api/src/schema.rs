//! Builds the served GraphQL schema from Dagger's SDL (names, types,
//! defaults; see `schema/dagger-core.graphqls`), wiring every field to
//! kiln's resolver table. Fields without a resolver answer a clear
//! "not implemented" error naming the field.

use std::collections::HashSet;
use std::sync::{Arc, OnceLock};

use async_graphql::Value;
use async_graphql::dynamic::{
    Enum, EnumItem, Field, FieldFuture, FieldValue, InputObject, InputValue, Interface, InterfaceField, Object,
    ResolverContext, Scalar, Schema, SchemaError, TypeRef,
};
use async_graphql_parser::types::{
    BaseType, ConstDirective, FieldDefinition, InputValueDefinition, Type, TypeKind, TypeSystemDefinition,
};

use crate::api::{Api, Output};
use crate::args::Args;
use crate::values::Object as ApiObject;

/// The Dagger core schema kiln serves (derived by scripts/gen-schema.py).
pub const SDL: &str = include_str!("../schema/dagger-core.graphqls");

/// How deeply a query may nest (chained calls).
pub const MAX_QUERY_DEPTH: usize = 1024;

const BUILTIN_SCALARS: [&str; 5] = ["String", "Int", "Float", "Boolean", "ID"];

fn type_ref(ty: &Type) -> TypeRef {
    let base = match &ty.base {
        BaseType::Named(name) => TypeRef::Named(name.to_string().into()),
        BaseType::List(inner) => TypeRef::List(Box::new(type_ref(inner))),
    };
    if ty.nullable {
        base
    } else {
        TypeRef::NonNull(Box::new(base))
    }
}

fn deprecation(directives: &[async_graphql_parser::Positioned<ConstDirective>]) -> Option<Option<String>> {
    directives.iter().find(|d| d.node.name.node == "deprecated").map(|d| {
        d.node.get_argument("reason").and_then(|r| match &r.node {
            Value::String(s) => Some(s.clone()),
            _ => None,
        })
    })
}

fn input_value(def: &InputValueDefinition) -> InputValue {
    let mut v = InputValue::new(def.name.node.to_string(), type_ref(&def.ty.node));
    if let Some(default) = &def.default_value {
        v = v.default_value(default.node.clone());
    }
    v
}

/// The object types that get legacy `<Type>ID` scalars and loaders.
fn node_types(doc: &[TypeSystemDefinition]) -> Vec<String> {
    doc.iter()
        .filter_map(|d| match d {
            TypeSystemDefinition::Type(t) => match &t.node.kind {
                TypeKind::Object(o) if t.node.name.node != "Query" && o.implements.iter().any(|i| i.node == "Node") => {
                    Some(t.node.name.node.to_string())
                }
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// The named type at the bottom of a (list / non-null) type.
fn base_name(ty: &Type) -> &str {
    match &ty.base {
        BaseType::Named(name) => name.as_str(),
        BaseType::List(inner) => base_name(inner),
    }
}

/// The session a request is for: the schema is shared, the session comes
/// with each request (see [`crate::Server`]).
fn session_api(ctx: &ResolverContext<'_>) -> Result<Arc<Api>, async_graphql::Error> {
    ctx.data::<Arc<Api>>().cloned()
}

fn field(type_name: &str, def: &FieldDefinition, interfaces: &HashSet<String>) -> Field {
    let (ty, name) = (type_name.to_string(), def.name.node.to_string());
    // Objects returned through an interface type must say what they are.
    let tagged = interfaces.contains(base_name(&def.ty.node));
    let mut f = Field::new(name.clone(), type_ref(&def.ty.node), move |ctx: ResolverContext<'_>| {
        let api = session_api(&ctx);
        let parent = ctx
            .parent_value
            .downcast_ref::<ApiObject>()
            .cloned()
            .unwrap_or(ApiObject::Query);
        let args = Args::new(ctx.args.as_index_map().clone());
        let (ty, name) = (ty.clone(), name.clone());
        FieldFuture::new(async move {
            match api?.resolve(&ty, &name, parent, args).await {
                Ok(out) => Ok(to_field_value(out, tagged)),
                Err(e) => Err(e.to_graphql()),
            }
        })
    });
    for arg in &def.arguments {
        f = f.argument(input_value(&arg.node));
    }
    if let Some(reason) = deprecation(&def.directives) {
        f = f.deprecation(reason.as_deref());
    }
    f
}

fn to_field_value(out: Output, tagged: bool) -> Option<FieldValue<'static>> {
    let object = |o: ApiObject| {
        let ty = o.type_name();
        let v = FieldValue::owned_any(o);
        if tagged { v.with_type(ty) } else { v }
    };
    match out {
        Output::Null => None,
        Output::Value(v) => Some(FieldValue::value(v)),
        Output::Object(o) => Some(object(o)),
        Output::Objects(list) => Some(FieldValue::list(list.into_iter().map(object))),
    }
}

/// The schema, built once per process and shared by every session (each
/// request carries its session's [`Api`] as data).
pub fn shared() -> Result<Schema, SchemaError> {
    static SCHEMA: OnceLock<Result<Schema, String>> = OnceLock::new();
    SCHEMA
        .get_or_init(|| build().map_err(|e| e.0))
        .clone()
        .map_err(SchemaError)
}

/// Builds the schema.
fn build() -> Result<Schema, SchemaError> {
    let doc = async_graphql_parser::parse_schema(SDL)
        .expect("the embedded schema parses")
        .definitions;
    let legacy = node_types(&doc);
    let interfaces: HashSet<String> = doc
        .iter()
        .filter_map(|d| match d {
            TypeSystemDefinition::Type(t) if matches!(t.node.kind, TypeKind::Interface(_)) => {
                Some(t.node.name.node.to_string())
            }
            _ => None,
        })
        .collect();
    // SDK queries nest one level per chained call (a 100-step pipeline is a
    // 100-deep query); the parser's default limit of 32 is far too low.
    let mut builder = Schema::build("Query", None, None).limit_recursive_depth(MAX_QUERY_DEPTH);
    for def in &doc {
        let TypeSystemDefinition::Type(t) = def else { continue };
        let t = &t.node;
        let name = t.name.node.as_str();
        builder = match &t.kind {
            TypeKind::Scalar if BUILTIN_SCALARS.contains(&name) => builder,
            TypeKind::Scalar => builder.register(Scalar::new(name)),
            TypeKind::Enum(e) => {
                let mut en = Enum::new(name);
                for v in &e.values {
                    let mut item = EnumItem::new(v.node.value.node.to_string());
                    if let Some(reason) = deprecation(&v.node.directives) {
                        item = item.deprecation(reason.as_deref());
                    }
                    en = en.item(item);
                }
                builder.register(en)
            }
            TypeKind::InputObject(io) => {
                let mut obj = InputObject::new(name);
                for f in &io.fields {
                    obj = obj.field(input_value(&f.node));
                }
                builder.register(obj)
            }
            TypeKind::Interface(i) => {
                let mut iface = Interface::new(name);
                for f in &i.fields {
                    let mut field = InterfaceField::new(f.node.name.node.to_string(), type_ref(&f.node.ty.node));
                    for arg in &f.node.arguments {
                        field = field.argument(input_value(&arg.node));
                    }
                    iface = iface.field(field);
                }
                for imp in &i.implements {
                    iface = iface.implement(imp.node.to_string());
                }
                builder.register(iface)
            }
            TypeKind::Object(o) => {
                let mut obj = Object::new(name);
                for f in &o.fields {
                    obj = obj.field(field(name, &f.node, &interfaces));
                }
                for imp in &o.implements {
                    obj = obj.implement(imp.node.to_string());
                }
                if name == "Query" {
                    for ty in &legacy {
                        obj = obj.field(legacy_loader(ty));
                    }
                }
                builder.register(obj)
            }
            TypeKind::Union(_) => builder,
        };
    }
    for ty in &legacy {
        builder = builder.register(Scalar::new(format!("{ty}ID")));
    }
    builder.finish()
}

/// `load<Type>FromID(id: <Type>ID!): <Type>!`, as 0.21 clients still use.
fn legacy_loader(ty: &str) -> Field {
    let expected = ty.to_string();
    Field::new(
        format!("load{ty}FromID"),
        TypeRef::named_nn(ty),
        move |ctx: ResolverContext<'_>| {
            let api = session_api(&ctx);
            let expected = expected.clone();
            let args = Args::new(ctx.args.as_index_map().clone());
            FieldFuture::new(async move {
                let out = api?.load_id(&args, Some(&expected)).map_err(|e| e.to_graphql())?;
                Ok(to_field_value(out, false))
            })
        },
    )
    .argument(InputValue::new("id", TypeRef::named_nn(format!("{ty}ID"))))
}

/// Every `(type, field)` of the served schema, for the compatibility table.
pub fn fields() -> Vec<(String, String)> {
    let doc = async_graphql_parser::parse_schema(SDL)
        .expect("the embedded schema parses")
        .definitions;
    let mut out = Vec::new();
    for def in &doc {
        if let TypeSystemDefinition::Type(t) = def
            && let TypeKind::Object(o) = &t.node.kind
        {
            for f in &o.fields {
                out.push((t.node.name.node.to_string(), f.node.name.node.to_string()));
            }
        }
    }
    out
}
