//! Routes: which regions a subject's messages may reach, by what policy, and under which
//! consistency contract. Validation happens here, before anything is written, and names the
//! offending field.

use std::collections::BTreeSet;

use nexus_proto::subject::validate_pattern;
use nexus_proto::v1::{Consistency, Route, RoutePolicy};

use crate::error::AdminError;
use crate::names::{ROUTES, now_ms, route_key, validate_name};
use crate::records::{conflict, encode, expectation, get, list};
use crate::regions;
use crate::store::{Op, Store, Txn};

const MAX_SUBJECTS: usize = 64;
const MAX_DESCRIPTION: usize = 1024;

/// Checks a route against the known regions; fills in the default policy (local_first).
pub fn validate(route: &mut Route, known: &BTreeSet<String>) -> Result<(), AdminError> {
    validate_name("route.name", &route.name)?;
    if route.subjects.is_empty() {
        return Err(AdminError::invalid(
            "route.subjects",
            "at least one subject pattern is required",
        ));
    }
    if route.subjects.len() > MAX_SUBJECTS {
        return Err(AdminError::invalid(
            "route.subjects",
            format!("at most {MAX_SUBJECTS} patterns"),
        ));
    }
    for (i, s) in route.subjects.iter().enumerate() {
        validate_pattern(s)
            .map_err(|e| AdminError::invalid(format!("route.subjects[{i}]"), e.to_string()))?;
    }
    let region_known = |field: String, region: &str| -> Result<(), AdminError> {
        if known.contains(region) {
            Ok(())
        } else {
            let list: Vec<&str> = known.iter().map(String::as_str).collect();
            Err(AdminError::invalid(
                field,
                format!(
                    "unknown region {region:?} (known regions: {})",
                    if list.is_empty() {
                        "none yet".to_owned()
                    } else {
                        list.join(", ")
                    }
                ),
            ))
        }
    };
    let policy = RoutePolicy::try_from(route.policy).map_err(|_| {
        AdminError::invalid(
            "route.policy",
            format!("unknown policy number {}", route.policy),
        )
    })?;
    let policy = if policy == RoutePolicy::Unspecified {
        route.policy = RoutePolicy::LocalFirst as i32;
        RoutePolicy::LocalFirst
    } else {
        policy
    };
    match policy {
        RoutePolicy::Pinned => {
            if route.pinned_region.is_empty() {
                return Err(AdminError::invalid(
                    "route.pinned_region",
                    "the pinned policy needs a region",
                ));
            }
            region_known("route.pinned_region".into(), &route.pinned_region)?;
        }
        _ if !route.pinned_region.is_empty() => {
            return Err(AdminError::invalid(
                "route.pinned_region",
                "only the pinned policy takes a pinned region",
            ));
        }
        _ => {}
    }
    if policy == RoutePolicy::Weighted {
        if route.weights.is_empty() {
            return Err(AdminError::invalid(
                "route.weights",
                "the weighted policy needs at least one region weight",
            ));
        }
        for (region, w) in &route.weights {
            region_known(format!("route.weights[{region}]"), region)?;
            if *w == 0 {
                return Err(AdminError::invalid(
                    format!("route.weights[{region}]"),
                    "weights must be positive",
                ));
            }
        }
    } else if !route.weights.is_empty() {
        return Err(AdminError::invalid(
            "route.weights",
            "only the weighted policy takes weights",
        ));
    }
    let mut seen = BTreeSet::new();
    for (i, r) in route.failover.iter().enumerate() {
        region_known(format!("route.failover[{i}]"), r)?;
        if !seen.insert(r) {
            return Err(AdminError::invalid(
                format!("route.failover[{i}]"),
                format!("region {r:?} is listed twice"),
            ));
        }
    }
    let consistency = Consistency::try_from(route.consistency).unwrap_or(Consistency::Unspecified);
    if consistency == Consistency::Unspecified {
        return Err(AdminError::invalid(
            "route.consistency",
            "choose the contract explicitly: local, best_effort, async or sync",
        ));
    }
    if route.sync_quorum != 0 && consistency != Consistency::Sync {
        return Err(AdminError::invalid(
            "route.sync_quorum",
            "only sync routes take a quorum",
        ));
    }
    if route.description.len() > MAX_DESCRIPTION {
        return Err(AdminError::invalid(
            "route.description",
            format!("at most {MAX_DESCRIPTION} bytes"),
        ));
    }
    Ok(())
}

/// Creates or replaces a route, compare-and-swap on `expected_version`.
pub async fn apply(
    store: &dyn Store,
    mut route: Route,
    expected_version: i64,
) -> Result<Route, AdminError> {
    let known = regions::known(store).await?;
    validate(&mut route, &known)?;
    let key = route_key(&route.name);
    route.updated_at_ms = now_ms();
    route.version = 0;
    let mut txn = Txn::new().then(Op::put(key.clone(), encode(&route)));
    if let Some(c) = expectation(&key, expected_version) {
        txn = txn.when(c);
    }
    if !store.txn(txn).await?.succeeded {
        return Err(conflict(
            store,
            &key,
            &format!("route {:?}", route.name),
            expected_version,
        )
        .await);
    }
    get_route(store, &route.name).await
}

pub async fn get_route(store: &dyn Store, name: &str) -> Result<Route, AdminError> {
    validate_name("name", name)?;
    match get::<Route>(store, &route_key(name)).await? {
        Some((mut r, version)) => {
            r.version = version;
            Ok(r)
        }
        None => Err(AdminError::not_found(format!("route {name:?}"))),
    }
}

pub async fn list_routes(store: &dyn Store) -> Result<(Vec<Route>, i64), AdminError> {
    let (records, revision) = list::<Route>(store, ROUTES).await?;
    let routes = records
        .into_iter()
        .map(|(mut r, v)| {
            r.version = v;
            r
        })
        .collect();
    Ok((routes, revision))
}

pub async fn delete(
    store: &dyn Store,
    name: &str,
    expected_version: i64,
) -> Result<u32, AdminError> {
    validate_name("name", name)?;
    let key = route_key(name);
    if store.get(&key).await?.is_none() {
        return Err(AdminError::not_found(format!("route {name:?}")));
    }
    let mut txn = Txn::new().then(Op::delete(key.clone()));
    if let Some(c) = expectation(&key, expected_version) {
        txn = txn.when(c);
    }
    if !store.txn(txn).await?.succeeded {
        return Err(conflict(store, &key, &format!("route {name:?}"), expected_version).await);
    }
    Ok(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known() -> BTreeSet<String> {
        ["us-east", "eu-west"]
            .into_iter()
            .map(String::from)
            .collect()
    }

    fn route() -> Route {
        Route {
            name: "orders".into(),
            subjects: vec!["orders.>".into()],
            consistency: Consistency::Async as i32,
            ..Default::default()
        }
    }

    #[test]
    fn defaults_and_valid_routes() {
        let mut r = route();
        validate(&mut r, &known()).unwrap();
        assert_eq!(r.policy, RoutePolicy::LocalFirst as i32);
        let mut r = Route {
            policy: RoutePolicy::Weighted as i32,
            weights: [("us-east".to_string(), 3), ("eu-west".to_string(), 1)].into(),
            failover: vec!["eu-west".into()],
            ..route()
        };
        validate(&mut r, &known()).unwrap();
    }

    #[test]
    fn errors_name_the_field() {
        let cases: Vec<(Route, &str)> = vec![
            (
                Route {
                    name: "Bad Name".into(),
                    ..route()
                },
                "route.name",
            ),
            (
                Route {
                    subjects: vec![],
                    ..route()
                },
                "route.subjects",
            ),
            (
                Route {
                    subjects: vec!["a..b".into()],
                    ..route()
                },
                "route.subjects[0]",
            ),
            (
                Route {
                    failover: vec!["mars".into()],
                    ..route()
                },
                "unknown region \"mars\"",
            ),
            (
                Route {
                    failover: vec!["us-east".into(), "us-east".into()],
                    ..route()
                },
                "route.failover[1]",
            ),
            (
                Route {
                    policy: RoutePolicy::Pinned as i32,
                    ..route()
                },
                "route.pinned_region",
            ),
            (
                Route {
                    policy: RoutePolicy::Weighted as i32,
                    ..route()
                },
                "route.weights",
            ),
            (
                Route {
                    consistency: 0,
                    ..route()
                },
                "route.consistency",
            ),
            (
                Route {
                    sync_quorum: 2,
                    ..route()
                },
                "route.sync_quorum",
            ),
        ];
        for (mut r, needle) in cases {
            let e = validate(&mut r, &known()).unwrap_err().to_string();
            assert!(e.contains(needle), "{e} should mention {needle}");
        }
    }
}
