//! The core's errors: values with a reason a person can act on, mapped to Python in `lib.rs`.

use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Error)]
pub enum CoreError {
    /// A setting is out of range or malformed (SPEC H7: start-up stops, exit code 2).
    #[error("{name} must be {expected}, got {got}")]
    Setting {
        name: &'static str,
        expected: String,
        got: String,
    },
    /// A setting no one declared.
    #[error("unknown setting {name:?}; known settings: {known}")]
    Unknown { name: String, known: String },
    /// The core was asked to do something its state does not allow.
    #[error("{0}")]
    State(String),
    /// A port could not be bound (start-up fails, exit code 3).
    #[error("{0}")]
    Bind(String),
}

pub type Result<T> = std::result::Result<T, CoreError>;

pub fn bad_setting(
    name: &'static str,
    expected: impl Into<String>,
    got: impl ToString,
) -> CoreError {
    CoreError::Setting {
        name,
        expected: expected.into(),
        got: got.to_string(),
    }
}

impl CoreError {
    /// The setting an error is about, as data (never parsed from the message).
    pub fn setting(&self) -> Option<&str> {
        match self {
            CoreError::Setting { name, .. } => Some(name),
            CoreError::Unknown { name, .. } => Some(name),
            CoreError::State(_) | CoreError::Bind(_) => None,
        }
    }
}
