//! Validation of the names operators choose (routes, regions, key names) and the store key
//! layout under `/nexus/v1/`, kept in one place so every module agrees on it.

use crate::error::AdminError;

pub const ROOT: &str = "/nexus/v1/";
pub const ROUTES: &str = "/nexus/v1/routes/";
pub const REGIONS: &str = "/nexus/v1/regions/";
pub const KEYS: &str = "/nexus/v1/keys/";
pub const SCHEMAS: &str = "/nexus/v1/schemas/";
pub const SCHEMA_CONFIG: &str = "/nexus/v1/config/schemas/";
pub const DEFAULT_COMPATIBILITY: &str = "/nexus/v1/config/compatibility";
/// The audit trail: not config, so config push ignores it.
pub const AUDIT: &str = "/nexus/v1/audit/";
/// One record per change, keyed by sequence number.
pub const AUDIT_RECORDS: &str = "/nexus/v1/audit/records/";
/// The end of the `AUDIT_RECORDS` range (`/` + 1 = `0`).
pub const AUDIT_RECORDS_END: &str = "/nexus/v1/audit/records0";
/// The last sequence number given out; every appended record moves it in the same
/// transaction, which is what keeps the sequence gapless.
pub const AUDIT_SEQUENCE: &str = "/nexus/v1/audit/sequence";

pub fn route_key(name: &str) -> String {
    format!("{ROUTES}{name}")
}

pub fn region_key(region: &str) -> String {
    format!("{REGIONS}{region}/info")
}

pub fn gateways_prefix(region: &str) -> String {
    format!("{REGIONS}{region}/gateways/")
}

pub fn gateway_key(region: &str, id: &str) -> String {
    format!("{REGIONS}{region}/gateways/{id}")
}

pub fn key_key(id: &str) -> String {
    format!("{KEYS}{id}")
}

pub fn schema_prefix(subject: &str) -> String {
    format!("{SCHEMAS}{subject}/")
}

/// Versions are zero-padded so that keys sort in version order.
pub fn schema_key(subject: &str, version: u32) -> String {
    format!("{SCHEMAS}{subject}/{version:010}")
}

pub fn schema_config_key(subject: &str) -> String {
    format!("{SCHEMA_CONFIG}{subject}")
}

/// Sequence numbers are zero-padded so that keys sort in sequence order.
pub fn audit_key(sequence: u64) -> String {
    format!("{AUDIT_RECORDS}{sequence:020}")
}

/// A region name becomes a DNS label: 1-63 of a-z, 0-9, '-', not at either end.
pub fn validate_region(field: &str, name: &str) -> Result<(), AdminError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(AdminError::invalid(
            field,
            format!(
                "{name:?} must be 1-63 characters of a-z, 0-9 and '-', not starting or ending with '-'"
            ),
        ))
    }
}

/// Route and key names: 1-128 of a-z, 0-9, '-', '_', '.'.
pub fn validate_name(field: &str, name: &str) -> Result<(), AdminError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_' || b == b'.'
        });
    if ok {
        Ok(())
    } else {
        Err(AdminError::invalid(
            field,
            format!("{name:?} must be 1-128 characters of a-z, 0-9, '-', '_' and '.'"),
        ))
    }
}

/// Milliseconds since the Unix epoch, for record timestamps.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(validate_region("region", "us-east-1").is_ok());
        for bad in ["", "US", "-a", "a-", "a.b", &"a".repeat(64)] {
            assert!(validate_region("region", bad).is_err(), "{bad}");
        }
        assert!(validate_name("name", "orders.eu_v2-x").is_ok());
        assert!(validate_name("name", "Orders").is_err());
        assert_eq!(schema_key("a.b", 7), "/nexus/v1/schemas/a.b/0000000007");
    }
}
