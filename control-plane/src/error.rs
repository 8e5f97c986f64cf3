//! `AdminError`: why an admin operation failed, in terms an operator can act on, and its
//! mapping to gRPC statuses.

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{what} not found")]
    NotFound { what: String },
    #[error("invalid {field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error("{what} already exists")]
    AlreadyExists { what: String },
    #[error(
        "{what} changed concurrently: expected version {expected}, found {actual}; read it again and retry"
    )]
    Conflict {
        what: String,
        expected: i64,
        actual: i64,
    },
    #[error("schema for {subject:?} is not compatible ({mode}): {}", .reasons.join("; "))]
    Incompatible {
        subject: String,
        mode: String,
        reasons: Vec<String>,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("stored record {key:?} is corrupt: {reason}")]
    Corrupt { key: String, reason: String },
}

impl AdminError {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub fn not_found(what: impl Into<String>) -> Self {
        Self::NotFound { what: what.into() }
    }
}

impl From<AdminError> for tonic::Status {
    fn from(e: AdminError) -> Self {
        let message = e.to_string();
        match e {
            AdminError::NotFound { .. } => tonic::Status::not_found(message),
            AdminError::Invalid { .. } => tonic::Status::invalid_argument(message),
            AdminError::AlreadyExists { .. } => tonic::Status::already_exists(message),
            AdminError::Conflict { .. } => tonic::Status::aborted(message),
            AdminError::Incompatible { .. } => tonic::Status::failed_precondition(message),
            AdminError::Store(StoreError::ValueTooLarge { .. })
            | AdminError::Store(StoreError::InvalidKey { .. }) => {
                tonic::Status::invalid_argument(message)
            }
            AdminError::Store(StoreError::Unavailable(_)) => tonic::Status::unavailable(message),
            AdminError::Store(_) | AdminError::Corrupt { .. } => tonic::Status::internal(message),
        }
    }
}
