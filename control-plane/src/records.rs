//! Reading and writing protobuf-encoded records in the store, with the compare-and-swap
//! convention of the Admin API (`expected_version`: 0 = don't check, -1 = must not exist,
//! N = must be at version N).

use bytes::Bytes;
use prost::Message;

use crate::error::AdminError;
use crate::store::{Compare, Store};

pub fn encode<M: Message>(m: &M) -> Bytes {
    Bytes::from(m.encode_to_vec())
}

pub fn decode<M: Message + Default>(key: &str, value: &[u8]) -> Result<M, AdminError> {
    M::decode(value).map_err(|e| AdminError::Corrupt {
        key: key.to_owned(),
        reason: e.to_string(),
    })
}

/// One record and its version.
pub async fn get<M: Message + Default>(
    store: &dyn Store,
    key: &str,
) -> Result<Option<(M, i64)>, AdminError> {
    match store.get(key).await? {
        Some(kv) => Ok(Some((decode(key, &kv.value)?, kv.version))),
        None => Ok(None),
    }
}

/// Every record under `prefix` with its version, and the revision they were read at.
pub async fn list<M: Message + Default>(
    store: &dyn Store,
    prefix: &str,
) -> Result<(Vec<(M, i64)>, i64), AdminError> {
    let (kvs, revision) = store.list(prefix).await?;
    let records = kvs
        .iter()
        .map(|kv| Ok((decode(&kv.key, &kv.value)?, kv.version)))
        .collect::<Result<Vec<_>, AdminError>>()?;
    Ok((records, revision))
}

/// The compare for an `expected_version`, if any.
pub fn expectation(key: &str, expected_version: i64) -> Option<Compare> {
    match expected_version {
        0 => None,
        v if v < 0 => Some(Compare::Version(key.to_owned(), 0)),
        v => Some(Compare::Version(key.to_owned(), v)),
    }
}

/// The error for a failed compare: names the object and both versions.
pub async fn conflict(store: &dyn Store, key: &str, what: &str, expected: i64) -> AdminError {
    let actual = match store.get(key).await {
        Ok(Some(kv)) => kv.version,
        _ => 0,
    };
    if expected < 0 {
        AdminError::AlreadyExists {
            what: what.to_owned(),
        }
    } else {
        AdminError::Conflict {
            what: what.to_owned(),
            expected,
            actual,
        }
    }
}
