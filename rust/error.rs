//! The core's errors: values with a reason a person can act on, mapped to Python in `lib.rs`.

use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Error)]
pub enum CoreError {
    /// A setting is out of range or malformed (SPEC H7: start-up stops, exit code 2).
    #[error("{name} must be {expected}, got {got}")]
    Setting {
        name: &'static str,
        expected: &'static str,
        got: String,
    },
    /// The core was asked to do something its state does not allow.
    #[error("{0}")]
    State(String),
}

pub type Result<T> = std::result::Result<T, CoreError>;

pub fn bad_setting(name: &'static str, expected: &'static str, got: impl ToString) -> CoreError {
    CoreError::Setting {
        name,
        expected,
        got: got.to_string(),
    }
}
