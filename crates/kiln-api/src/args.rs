//! Typed access to a field's arguments (defaults already applied).

use async_graphql::indexmap::IndexMap;
use async_graphql::{Name, Value};
use kiln_graph::Owner;

use crate::error::ApiError;

/// The arguments of one field.
#[derive(Debug, Clone)]
pub struct Args(IndexMap<Name, Value>);

impl Args {
    /// Wraps the argument map.
    pub fn new(map: IndexMap<Name, Value>) -> Self {
        Self(map)
    }

    fn get(&self, name: &str) -> Option<&Value> {
        self.0.get(name).filter(|v| !matches!(v, Value::Null))
    }

    /// A required string (also IDs and enums).
    pub fn string(&self, name: &str) -> Result<String, ApiError> {
        self.opt_string(name)
            .ok_or_else(|| ApiError::invalid(format!("argument {name} is required")))
    }

    /// An optional string; empty strings count as absent.
    pub fn opt_string(&self, name: &str) -> Option<String> {
        match self.get(name)? {
            Value::String(s) if s.is_empty() => None,
            Value::String(s) => Some(s.clone()),
            Value::Enum(e) => Some(e.to_string()),
            other => Some(other.to_string()),
        }
    }

    /// A list of strings (empty when absent).
    pub fn strings(&self, name: &str) -> Vec<String> {
        match self.get(name) {
            Some(Value::List(items)) => items
                .iter()
                .filter_map(|v| match v {
                    Value::String(s) => Some(s.clone()),
                    _ => None,
                })
                .collect(),
            // GraphQL coerces a single value to a list of one.
            Some(Value::String(s)) => vec![s.clone()],
            _ => Vec::new(),
        }
    }

    /// A list of input objects (empty when absent), each as arguments.
    pub fn list(&self, name: &str) -> Vec<Args> {
        let object = |v: &Value| match v {
            Value::Object(map) => Some(Args(map.clone())),
            _ => None,
        };
        match self.get(name) {
            Some(Value::List(items)) => items.iter().filter_map(object).collect(),
            // GraphQL coerces a single value to a list of one.
            Some(v) => object(v).into_iter().collect(),
            None => Vec::new(),
        }
    }

    /// The `owner` argument (`user[:group]`), if given.
    pub fn owner(&self) -> Option<Owner> {
        self.opt_string("owner").as_deref().map(Owner::parse)
    }

    /// A boolean (false when absent).
    pub fn bool(&self, name: &str) -> bool {
        matches!(self.get(name), Some(Value::Boolean(true)))
    }

    /// A boolean, if given.
    pub fn opt_bool(&self, name: &str) -> Option<bool> {
        match self.get(name)? {
            Value::Boolean(b) => Some(*b),
            _ => None,
        }
    }

    /// An integer.
    pub fn int(&self, name: &str) -> Option<i64> {
        match self.get(name)? {
            Value::Number(n) => n.as_i64(),
            _ => None,
        }
    }
}
