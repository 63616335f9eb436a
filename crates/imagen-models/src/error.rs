use std::path::PathBuf;

/// Everything that can go wrong while finding, reading or loading a model.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: invalid JSON: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: not a valid safetensors file: {message}")]
    Safetensors { path: PathBuf, message: String },
    #[error("{0}")]
    Folder(String),
    #[error("{component}: unsupported configuration: {message}")]
    Config { component: &'static str, message: String },
    #[error("{component}: tensor `{key}` is missing from the checkpoint")]
    MissingTensor { component: &'static str, key: String },
    #[error("{component}: tensor `{key}` has shape {found:?}, expected {expected:?}")]
    ShapeMismatch {
        component: &'static str,
        key: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("{component}: tensor `{key}` has unsupported dtype {dtype}")]
    DType {
        component: &'static str,
        key: String,
        dtype: String,
    },
    #[error("{0}")]
    Backend(String),
    #[error("{kind}: {message}")]
    Quantized { kind: &'static str, message: String },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
