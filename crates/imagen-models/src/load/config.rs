//! Helpers for reading diffusers/transformers `config.json` files.

use std::path::Path;

use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

/// A config value given once for all blocks or once per block (`attention_head_dim: 8` vs
/// `[5, 10, 20, 20]`).
#[derive(Deserialize, Debug, Clone, PartialEq)]
#[serde(untagged)]
pub enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

impl<T: Clone> OneOrMany<T> {
    /// The value for each of `n` blocks (a list shorter than `n` repeats its last entry).
    pub fn per_block(&self, n: usize) -> Vec<T> {
        match self {
            OneOrMany::One(v) => vec![v.clone(); n],
            OneOrMany::Many(v) => (0..n).filter_map(|i| v.get(i).or(v.last()).cloned()).collect(),
        }
    }

    pub fn iter(&self) -> std::slice::Iter<'_, T> {
        match self {
            OneOrMany::One(v) => std::slice::from_ref(v).iter(),
            OneOrMany::Many(v) => v.iter(),
        }
    }
}

pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|source| Error::Json {
        path: path.to_owned(),
        source,
    })
}

pub(crate) fn unsupported(component: &'static str, what: impl Into<String>) -> Error {
    Error::Config {
        component,
        message: what.into(),
    }
}
