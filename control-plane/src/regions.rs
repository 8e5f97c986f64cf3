//! Regions and the gateways registered in them.
//!
//! A region record (`/nexus/v1/regions/<region>/info`) is created by an operator or by the
//! first gateway that registers in it; routes may only name known regions. Gateway records
//! (`.../gateways/<id>`) are attached to a lease that the gateway keeps alive, so a dead
//! gateway disappears within the lease TTL.

use std::collections::BTreeSet;

use nexus_proto::v1::{GatewayInfo, Region};

use crate::error::AdminError;
use crate::names::{REGIONS, gateways_prefix, now_ms, region_key, validate_region};
use crate::records::{decode, encode, get};
use crate::store::{Compare, Op, Store, Txn};

/// Creates a region if it does not exist; returns it either way.
pub async fn ensure(store: &dyn Store, name: &str) -> Result<Region, AdminError> {
    validate_region("region", name)?;
    let key = region_key(name);
    let region = Region {
        name: name.to_owned(),
        created_at_ms: now_ms(),
    };
    let txn = Txn::new()
        .when(Compare::Version(key.clone(), 0))
        .then(Op::put(key.clone(), encode(&region)));
    if store.txn(txn).await?.succeeded {
        return Ok(region);
    }
    match get::<Region>(store, &key).await? {
        Some((r, _)) => Ok(r),
        None => Err(AdminError::not_found(format!("region {name:?}"))),
    }
}

/// Deletes a region's record (1, or 0 when it did not exist). Refused while gateways are
/// registered in it or a route names it: either would bring it back or point at nothing.
pub async fn delete(store: &dyn Store, name: &str) -> Result<u32, AdminError> {
    validate_region("region", name)?;
    let live = gateways(store, name).await?;
    if !live.is_empty() {
        let ids: Vec<&str> = live.iter().map(|g| g.id.as_str()).collect();
        return Err(AdminError::invalid(
            "region",
            format!(
                "region {name:?} still has live gateways ({}); stop them first",
                ids.join(", ")
            ),
        ));
    }
    let (routes, _) = crate::routes::list_routes(store).await?;
    if let Some(r) = routes.iter().find(|r| {
        r.pinned_region == name
            || r.weights.contains_key(name)
            || r.failover.iter().any(|f| f == name)
    }) {
        return Err(AdminError::invalid(
            "region",
            format!(
                "route {:?} names region {name:?}; change or delete it first",
                r.name
            ),
        ));
    }
    if store.get(&region_key(name)).await?.is_none() {
        return Err(AdminError::not_found(format!("region {name:?}")));
    }
    store.delete(&region_key(name)).await?;
    Ok(1)
}

pub async fn list_regions(store: &dyn Store) -> Result<Vec<Region>, AdminError> {
    let (kvs, _) = store.list(REGIONS).await?;
    kvs.iter()
        .filter(|kv| kv.key.ends_with("/info"))
        .map(|kv| decode(&kv.key, &kv.value))
        .collect()
}

pub async fn known(store: &dyn Store) -> Result<BTreeSet<String>, AdminError> {
    Ok(list_regions(store)
        .await?
        .into_iter()
        .map(|r| r.name)
        .collect())
}

pub async fn gateways(store: &dyn Store, region: &str) -> Result<Vec<GatewayInfo>, AdminError> {
    let prefix = if region.is_empty() {
        REGIONS.to_owned()
    } else {
        validate_region("region", region)?;
        gateways_prefix(region)
    };
    let (kvs, _) = store.list(&prefix).await?;
    kvs.iter()
        .filter(|kv| kv.key.contains("/gateways/"))
        .map(|kv| decode(&kv.key, &kv.value))
        .collect()
}
