//! The tonic implementation of `nexus.v1.Admin`: a thin shell mapping each call to the
//! module that owns it (routes, keys, regions, schemas) and errors to gRPC statuses.

use std::sync::Arc;

use nexus_proto::v1::admin_server::Admin;
use nexus_proto::v1::*;
use tonic::{Request, Response, Status};

use crate::store::Store;
use crate::{keys, regions, routes, schemas};

pub struct AdminService {
    pub store: Arc<dyn Store>,
}

type R<T> = Result<Response<T>, Status>;

fn ok<T>(t: T) -> R<T> {
    Ok(Response::new(t))
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
        let r = r.into_inner();
        let route = r
            .route
            .ok_or_else(|| Status::invalid_argument("route is required"))?;
        ok(routes::apply(&*self.store, route, r.expected_version).await?)
    }

    async fn delete_route(&self, r: Request<DeleteRouteRequest>) -> R<DeleteResponse> {
        let r = r.into_inner();
        let deleted = routes::delete(&*self.store, &r.name, r.expected_version).await?;
        ok(DeleteResponse { deleted })
    }

    async fn register_schema(&self, r: Request<RegisterSchemaRequest>) -> R<SchemaVersion> {
        ok(schemas::register(&*self.store, r.into_inner()).await?)
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
        let r = r.into_inner();
        let deleted = schemas::delete(&*self.store, &r.subject, r.version).await?;
        ok(DeleteResponse { deleted })
    }

    async fn set_schema_config(&self, r: Request<SetSchemaConfigRequest>) -> R<SchemaConfig> {
        let config = r
            .into_inner()
            .config
            .ok_or_else(|| Status::invalid_argument("config is required"))?;
        ok(schemas::set_config(&*self.store, config).await?)
    }

    async fn get_schema_config(&self, r: Request<GetSchemaConfigRequest>) -> R<SchemaConfig> {
        ok(schemas::get_config(&*self.store, &r.into_inner().subject).await?)
    }

    async fn create_key(&self, r: Request<CreateKeyRequest>) -> R<CreateKeyResponse> {
        let r = r.into_inner();
        let (key, secret) = keys::create(
            &*self.store,
            &r.name,
            r.scopes.unwrap_or_default(),
            r.expires_at_ms,
        )
        .await?;
        ok(CreateKeyResponse {
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
        let r = r.into_inner();
        let (key, secret) = keys::rotate(&*self.store, &r.id, r.overlap_seconds).await?;
        ok(CreateKeyResponse {
            key: Some(key),
            secret,
        })
    }

    async fn revoke_key(&self, r: Request<RevokeKeyRequest>) -> R<ApiKey> {
        ok(keys::revoke(&*self.store, &r.into_inner().id).await?)
    }

    async fn set_key_limits(&self, r: Request<SetKeyLimitsRequest>) -> R<ApiKey> {
        let r = r.into_inner();
        ok(keys::set_limits(&*self.store, &r.id, r.limits.unwrap_or_default()).await?)
    }

    async fn update_key_scopes(&self, r: Request<UpdateKeyScopesRequest>) -> R<ApiKey> {
        let r = r.into_inner();
        let scopes = r
            .scopes
            .ok_or_else(|| crate::error::AdminError::invalid("scopes", "required"))?;
        ok(keys::update_scopes(&*self.store, &r.id, scopes).await?)
    }

    async fn list_regions(&self, _: Request<ListRegionsRequest>) -> R<ListRegionsResponse> {
        ok(ListRegionsResponse {
            regions: regions::list_regions(&*self.store).await?,
        })
    }

    async fn create_region(&self, r: Request<CreateRegionRequest>) -> R<Region> {
        ok(regions::ensure(&*self.store, &r.into_inner().name).await?)
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
}
