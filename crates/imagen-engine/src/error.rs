/// Everything a generation can fail with; `BadInput` is the caller's to fix.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    BadInput(String),
    #[error(transparent)]
    Model(#[from] imagen_models::Error),
    #[error("image: {0}")]
    Image(String),
    #[error("cancelled")]
    Cancelled,
    /// A bug: a panic caught on the engine thread.
    #[error("internal engine error: {0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
