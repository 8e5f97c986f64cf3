//! The tonic implementation of `nexus.v1.Admin`: a thin shell mapping each call to the
//! module that owns it (routes, keys, regions, schemas) and errors to gRPC statuses.
//!
//! Every call that changes pushed configuration (routes, schemas and their enforcement, keys)
//! answers with the store revision of its write in the `nexus-config-version` response
//! header: the config version gateways report once they applied it, so a client can wait for
//! its own write to reach every gateway (`nexusctl` does; docs/control-plane.md §7).
//!
//! Every call that changes anything writes through an [`Audited`] store, which appends the
//! call's audit record to each of its transactions ([`crate::audit`]); `ListAudit` reads
//! the trail and nothing in this API edits or deletes it.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use nexus_proto::v1::admin_server::Admin;
use nexus_proto::v1::*;
use tonic::{Request, Response, Status};

use crate::audit::{Audited, Caller, Retention};
use crate::store::{KeyValue, LeaseId, Store, StoreError, Txn, TxnOutcome, WatchStream};
use crate::{audit, keys, regions, routes, schemas};

pub struct AdminService {
    pub store: Arc<dyn Store>,
    /// How much of the audit trail to keep.
    pub audit_retention: Retention,
}

impl AdminService {
    /// The store as a changing call by `caller` writes to it: every transaction carries the
    /// call's audit record, as `action`.
    fn audited(&self, caller: Caller, action: &'static str) -> Arc<dyn Store> {
        Arc::new(Audited::new(
            self.store.clone(),
            caller,
            action,
            self.audit_retention,
        ))
    }

    /// [`Self::audited`] that also answers with the config version of its write.
    fn recording(&self, caller: Caller, action: &'static str) -> Recording {
        Recording::new(&self.audited(caller, action))
    }
}

type R<T> = Result<Response<T>, Status>;

fn ok<T>(t: T) -> R<T> {
    Ok(Response::new(t))
}

/// The response header carrying the config version a write produced.
pub const CONFIG_VERSION_HEADER: &str = "nexus-config-version";

/// The store as one Admin call sees it, remembering the revision of its last applied write.
struct Recording {
    store: Arc<dyn Store>,
    revision: AtomicI64,
}

impl Recording {
    fn new(store: &Arc<dyn Store>) -> Self {
        Self {
            store: store.clone(),
            revision: AtomicI64::new(0),
        }
    }

    /// `t` as the response, with the write's revision in [`CONFIG_VERSION_HEADER`] (none when
    /// the call wrote nothing).
    fn respond<T>(&self, t: T) -> R<T> {
        let mut response = Response::new(t);
        let revision = self.revision.load(Ordering::Relaxed);
        if revision > 0 {
            response
                .metadata_mut()
                .insert(CONFIG_VERSION_HEADER, revision.into());
        }
        Ok(response)
    }
}

#[tonic::async_trait]
impl Store for Recording {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        self.store.get(key).await
    }
    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, i64), StoreError> {
        self.store.list(prefix).await
    }
    async fn range_page(
        &self,
        start: &str,
        end: &str,
        limit: usize,
        descending: bool,
    ) -> Result<Vec<KeyValue>, StoreError> {
        self.store.range_page(start, end, limit, descending).await
    }
    async fn txn(&self, txn: Txn) -> Result<TxnOutcome, StoreError> {
        let outcome = self.store.txn(txn).await?;
        if outcome.succeeded {
            self.revision.fetch_max(outcome.revision, Ordering::Relaxed);
        }
        Ok(outcome)
    }
    async fn watch(&self, prefix: &str, from_revision: i64) -> Result<WatchStream, StoreError> {
        self.store.watch(prefix, from_revision).await
    }
    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        self.store.grant_lease(ttl).await
    }
    async fn keep_alive(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.store.keep_alive(lease).await
    }
    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.store.revoke_lease(lease).await
    }
    async fn revision(&self) -> Result<i64, StoreError> {
        self.store.revision().await
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn list_routes(&self, _: Request<ListRoutesRequest>) -> R<ListRoutesResponse> {
        let (routes, config_version) = routes::list_routes(&*self.store).await?;
        ok(ListRoutesResponse {
            routes,
            config_version,
        })
    }

    async fn get_route(&self, r: Request<GetRouteRequest>) -> R<Route> {
        ok(routes::get_route(&*self.store, &r.into_inner().name).await?)
    }

    async fn apply_route(&self, r: Request<ApplyRouteRequest>) -> R<Route> {
        let w = self.recording(Caller::of(&r), "routes.apply");
        let r = r.into_inner();
        let route = r
            .route
            .ok_or_else(|| Status::invalid_argument("route is required"))?;
        w.respond(routes::apply(&w, route, r.expected_version).await?)
    }

    async fn delete_route(&self, r: Request<DeleteRouteRequest>) -> R<DeleteResponse> {
        let w = self.recording(Caller::of(&r), "routes.delete");
        let r = r.into_inner();
        let deleted = routes::delete(&w, &r.name, r.expected_version).await?;
        w.respond(DeleteResponse { deleted })
    }

    async fn register_schema(&self, r: Request<RegisterSchemaRequest>) -> R<SchemaVersion> {
        let w = self.recording(Caller::of(&r), "schemas.register");
        w.respond(schemas::register(&w, r.into_inner()).await?)
    }

    async fn check_schema(&self, r: Request<CheckSchemaRequest>) -> R<CheckSchemaResponse> {
        ok(schemas::check(&*self.store, r.into_inner()).await?)
    }

    async fn list_schemas(&self, _: Request<ListSchemasRequest>) -> R<ListSchemasResponse> {
        ok(schemas::list_subjects(&*self.store).await?)
    }

    async fn get_schema(&self, r: Request<GetSchemaRequest>) -> R<SchemaVersion> {
        let r = r.into_inner();
        ok(schemas::get_version(&*self.store, &r.subject, r.version).await?)
    }

    async fn delete_schema(&self, r: Request<DeleteSchemaRequest>) -> R<DeleteResponse> {
        let w = self.recording(Caller::of(&r), "schemas.delete");
        let r = r.into_inner();
        let deleted = schemas::delete(&w, &r.subject, r.version).await?;
        w.respond(DeleteResponse { deleted })
    }

    async fn set_schema_config(&self, r: Request<SetSchemaConfigRequest>) -> R<SchemaConfig> {
        let w = self.recording(Caller::of(&r), "schemas.set_config");
        let config = r
            .into_inner()
            .config
            .ok_or_else(|| Status::invalid_argument("config is required"))?;
        w.respond(schemas::set_config(&w, config).await?)
    }

    async fn get_schema_config(&self, r: Request<GetSchemaConfigRequest>) -> R<SchemaConfig> {
        ok(schemas::get_config(&*self.store, &r.into_inner().subject).await?)
    }

    async fn create_key(&self, r: Request<CreateKeyRequest>) -> R<CreateKeyResponse> {
        let w = self.recording(Caller::of(&r), "keys.create");
        let r = r.into_inner();
        let (key, secret) = keys::create(
            &w,
            &r.name,
            r.scopes.unwrap_or_default(),
            r.expires_at_ms,
            r.cert_binding,
        )
        .await?;
        w.respond(CreateKeyResponse {
            key: Some(key),
            secret,
        })
    }

    async fn list_keys(&self, _: Request<ListKeysRequest>) -> R<ListKeysResponse> {
        ok(ListKeysResponse {
            keys: keys::list_keys(&*self.store).await?,
        })
    }

    async fn rotate_key(&self, r: Request<RotateKeyRequest>) -> R<CreateKeyResponse> {
        let w = self.recording(Caller::of(&r), "keys.rotate");
        let r = r.into_inner();
        let (key, secret) = keys::rotate(&w, &r.id, r.overlap_seconds).await?;
        w.respond(CreateKeyResponse {
            key: Some(key),
            secret,
        })
    }

    async fn revoke_key(&self, r: Request<RevokeKeyRequest>) -> R<ApiKey> {
        let w = self.recording(Caller::of(&r), "keys.revoke");
        w.respond(keys::revoke(&w, &r.into_inner().id).await?)
    }

    async fn set_key_limits(&self, r: Request<SetKeyLimitsRequest>) -> R<ApiKey> {
        // No config-version header here (as before the audit trail): callers do not wait.
        let w = self.audited(Caller::of(&r), "keys.set_limits");
        let r = r.into_inner();
        ok(keys::set_limits(&*w, &r.id, r.limits.unwrap_or_default()).await?)
    }

    async fn set_key_cert_binding(&self, r: Request<SetKeyCertBindingRequest>) -> R<ApiKey> {
        let w = self.audited(Caller::of(&r), "keys.set_cert_binding");
        let r = r.into_inner();
        ok(keys::set_cert_binding(&*w, &r.id, r.binding).await?)
    }

    async fn update_key_scopes(&self, r: Request<UpdateKeyScopesRequest>) -> R<ApiKey> {
        let w = self.audited(Caller::of(&r), "keys.update_scopes");
        let r = r.into_inner();
        let scopes = r
            .scopes
            .ok_or_else(|| crate::error::AdminError::invalid("scopes", "required"))?;
        ok(keys::update_scopes(&*w, &r.id, scopes).await?)
    }

    async fn list_regions(&self, _: Request<ListRegionsRequest>) -> R<ListRegionsResponse> {
        ok(ListRegionsResponse {
            regions: regions::list_regions(&*self.store).await?,
        })
    }

    async fn create_region(&self, r: Request<CreateRegionRequest>) -> R<Region> {
        // A region is not pushed config: no config-version header to wait on.
        let w = self.audited(Caller::of(&r), "regions.create");
        ok(regions::ensure(&*w, &r.into_inner().name).await?)
    }

    async fn delete_region(&self, r: Request<DeleteRegionRequest>) -> R<DeleteResponse> {
        let w = self.audited(Caller::of(&r), "regions.delete");
        ok(DeleteResponse {
            deleted: regions::delete(&*w, &r.into_inner().name).await?,
        })
    }

    async fn list_gateways(&self, r: Request<ListGatewaysRequest>) -> R<ListGatewaysResponse> {
        ok(ListGatewaysResponse {
            gateways: regions::gateways(&*self.store, &r.into_inner().region).await?,
        })
    }

    async fn get_topology(&self, _: Request<GetTopologyRequest>) -> R<Topology> {
        let store = &*self.store;
        let mut out = Vec::new();
        for region in regions::list_regions(store).await? {
            let gateways = regions::gateways(store, &region.name).await?;
            out.push(RegionTopology {
                region: Some(region),
                gateways,
            });
        }
        ok(Topology {
            regions: out,
            config_version: store
                .revision()
                .await
                .map_err(crate::error::AdminError::from)?,
        })
    }

    async fn list_audit(&self, r: Request<ListAuditRequest>) -> R<ListAuditResponse> {
        ok(audit::query::list(&*self.store, r.into_inner()).await?)
    }

    async fn get_trace(&self, r: Request<GetTraceRequest>) -> R<GetTraceResponse> {
        let req = r.into_inner();
        if req.message_id.is_empty() && !req.subject.is_empty() {
            nexus_proto::subject::validate_pattern(&req.subject)
                .map_err(|e| Status::invalid_argument(format!("subject {:?}: {e}", req.subject)))?;
        }
        let gateways = regions::gateways(&*self.store, "").await?;
        ok(crate::trace::collect(&gateways, &req).await)
    }

    type TailStream = tokio_stream::wrappers::ReceiverStream<Result<TailEvent, Status>>;

    async fn tail(&self, r: Request<TailRequest>) -> R<Self::TailStream> {
        ok(crate::tail::start(self.store.clone(), r.into_inner()).await?)
    }

    type FollowLogsStream = tokio_stream::wrappers::ReceiverStream<Result<LogRecord, Status>>;

    async fn follow_logs(&self, r: Request<FollowLogsRequest>) -> R<Self::FollowLogsStream> {
        ok(crate::logs::start(self.store.clone(), r.into_inner()).await?)
    }
}
