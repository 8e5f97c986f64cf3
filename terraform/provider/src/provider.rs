//! The `tfplugin6.Provider` gRPC service: schemas, validation, the plan/apply/read/import
//! cycle of each resource, data sources. Values arrive and leave as MessagePack
//! ([`crate::value`]); the per-type behaviour lives in [`crate::resources`].

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::Context;
use nexus::ctl::ClientTls;
use nexus::ctl::admin::Admin;
use tonic::{Request, Response, Status};

use crate::resources::{DataKind, Kind};
use crate::schema::{self, Attr, Ty};
use crate::tfplugin6 as tf;
use crate::tfplugin6::provider_server::Provider;
use crate::value::{self, Obj, Val};

/// A diagnostic for Terraform to show.
#[derive(Debug, Clone)]
pub struct Diag {
    pub error: bool,
    pub summary: String,
    pub detail: String,
    pub attribute: Option<String>,
}

impl Diag {
    pub fn error(
        summary: impl Into<String>,
        detail: impl Into<String>,
        attr: Option<&str>,
    ) -> Self {
        Diag {
            error: true,
            summary: summary.into(),
            detail: detail.into(),
            attribute: attr.map(str::to_owned),
        }
    }

    pub fn warning(summary: impl Into<String>, detail: impl Into<String>) -> Self {
        Diag {
            error: false,
            summary: summary.into(),
            detail: detail.into(),
            attribute: None,
        }
    }

    fn to_proto(&self) -> tf::Diagnostic {
        use tf::attribute_path::{Step, step::Selector};
        tf::Diagnostic {
            severity: if self.error {
                tf::diagnostic::Severity::Error
            } else {
                tf::diagnostic::Severity::Warning
            } as i32,
            summary: self.summary.clone(),
            detail: self.detail.clone(),
            attribute: self.attribute.as_ref().map(|a| tf::AttributePath {
                steps: vec![Step {
                    selector: Some(Selector::AttributeName(a.clone())),
                }],
            }),
        }
    }
}

/// An error and its causes on one line (see `nexus::ctl::describe_error`).
pub fn describe(e: &anyhow::Error) -> String {
    nexus::ctl::describe_error(e)
}

fn diags(d: &[Diag]) -> Vec<tf::Diagnostic> {
    d.iter().map(Diag::to_proto).collect()
}

fn failure(summary: &str, e: &anyhow::Error) -> Vec<tf::Diagnostic> {
    diags(&[Diag::error(summary, describe(e), None)])
}

/// How to reach the control plane, from the provider block or the environment variables
/// `nexusctl` reads.
#[derive(Debug, Clone, Default)]
struct Conn {
    control_plane: String,
    admin_key: Option<String>,
    admin_key_file: Option<String>,
    tls: ClientTls,
    /// Settings Terraform did not know yet when it configured the provider (they depend on
    /// resources not created yet).
    unknown: Vec<String>,
}

/// What every resource call shares: the provider configuration and one Admin API client,
/// connected on first use (so that planning objects that need no control plane works while
/// it is not up yet).
#[derive(Default)]
pub struct Ctx {
    conn: std::sync::Mutex<Conn>,
    admin: tokio::sync::Mutex<Option<Admin>>,
}

impl Ctx {
    pub async fn admin(&self) -> anyhow::Result<Admin> {
        let mut slot = self.admin.lock().await;
        if let Some(a) = slot.as_ref() {
            return Ok(a.clone());
        }
        let conn = self.conn.lock().map(|c| c.clone()).unwrap_or_default();
        if !conn.unknown.is_empty() {
            anyhow::bail!(
                "the provider's {} will be known only after apply",
                conn.unknown.join(", ")
            );
        }
        let key = match (&conn.admin_key, &conn.admin_key_file) {
            (Some(k), _) => Some(k.clone()),
            (None, Some(f)) => Some(nexus::ctl::read_secret_file(f.as_ref(), "admin key")?),
            (None, None) => None,
        };
        let admin = nexus::ctl::admin::connect(&conn.control_plane, key.as_deref(), &conn.tls)
            .await
            .context("the nexus provider cannot reach the control plane")?;
        *slot = Some(admin.clone());
        Ok(admin)
    }
}

fn provider_attrs() -> Vec<Attr> {
    vec![
        Attr::optional_computed(
            "control_plane",
            Ty::Str,
            "Admin API address, e.g. http://127.0.0.1:7400 (default: NEXUS_CONTROL_PLANE, else http://127.0.0.1:7400).",
        ),
        Attr::optional_computed(
            "admin_key",
            Ty::Str,
            "Admin API key (default: NEXUS_ADMIN_KEY).",
        )
        .sensitive(),
        Attr::optional_computed(
            "admin_key_file",
            Ty::Str,
            "File holding the admin key (default: NEXUS_ADMIN_KEY_FILE).",
        ),
        Attr::optional_computed(
            "ca_file",
            Ty::Str,
            "CA of an https:// control plane (default: NEXUS_CA).",
        ),
        Attr::optional_computed(
            "tls_cert",
            Ty::Str,
            "Admin client certificate (default: NEXUSCTL_TLS_CERT).",
        ),
        Attr::optional_computed(
            "tls_key",
            Ty::Str,
            "Key of tls_cert (default: NEXUSCTL_TLS_KEY).",
        ),
    ]
}

fn provider_schema_proto() -> tf::Schema {
    // The provider block has no computed attributes: Terraform rejects them there.
    let mut s = schema::to_proto("Nexus control plane connection.", &provider_attrs());
    if let Some(b) = s.block.as_mut() {
        for a in &mut b.attributes {
            a.computed = false;
            a.optional = true;
        }
    }
    s
}

fn decode_obj(v: &Option<tf::DynamicValue>) -> anyhow::Result<Option<Obj>> {
    let Some(v) = v else { return Ok(None) };
    match value::decode(&v.msgpack, &v.json)? {
        Val::Null => Ok(None),
        Val::Map(m) => Ok(Some(m)),
        other => anyhow::bail!("expected an object, got {other:?}"),
    }
}

fn dynamic(o: Option<Obj>) -> Option<tf::DynamicValue> {
    Some(tf::DynamicValue {
        msgpack: value::encode(&o.map_or(Val::Null, Val::Map)),
        json: Vec::new(),
    })
}

fn unknown_type(name: &str) -> Vec<tf::Diagnostic> {
    diags(&[Diag::error(
        format!("the nexus provider has no type {name:?}"),
        String::new(),
        None,
    )])
}

/// The provider service.
#[derive(Default, Clone)]
pub struct NexusProvider {
    ctx: Arc<Ctx>,
}

type R<T> = Result<Response<T>, Status>;

fn reply<T>(t: T) -> R<T> {
    Ok(Response::new(t))
}

fn capabilities() -> Option<tf::ServerCapabilities> {
    Some(tf::ServerCapabilities {
        plan_destroy: false,
        get_provider_schema_optional: false,
        move_resource_state: false,
    })
}

#[tonic::async_trait]
impl Provider for NexusProvider {
    async fn get_metadata(
        &self,
        _: Request<tf::get_metadata::Request>,
    ) -> R<tf::get_metadata::Response> {
        use tf::get_metadata::*;
        reply(Response {
            server_capabilities: capabilities(),
            resources: Kind::ALL
                .iter()
                .map(|k| ResourceMetadata {
                    type_name: k.type_name().into(),
                })
                .collect(),
            data_sources: DataKind::ALL
                .iter()
                .map(|k| DataSourceMetadata {
                    type_name: k.type_name().into(),
                })
                .collect(),
            ..Default::default()
        })
    }

    async fn get_provider_schema(
        &self,
        _: Request<tf::get_provider_schema::Request>,
    ) -> R<tf::get_provider_schema::Response> {
        reply(tf::get_provider_schema::Response {
            provider: Some(provider_schema_proto()),
            resource_schemas: Kind::ALL
                .iter()
                .map(|k| {
                    (
                        k.type_name().to_owned(),
                        schema::to_proto(k.description(), &k.attrs()),
                    )
                })
                .collect(),
            data_source_schemas: DataKind::ALL
                .iter()
                .map(|k| {
                    (
                        k.type_name().to_owned(),
                        schema::to_proto(k.description(), &k.attrs()),
                    )
                })
                .collect(),
            server_capabilities: capabilities(),
            ..Default::default()
        })
    }

    async fn validate_provider_config(
        &self,
        _: Request<tf::validate_provider_config::Request>,
    ) -> R<tf::validate_provider_config::Response> {
        reply(Default::default())
    }

    async fn validate_resource_config(
        &self,
        r: Request<tf::validate_resource_config::Request>,
    ) -> R<tf::validate_resource_config::Response> {
        let r = r.into_inner();
        let Some(kind) = Kind::from_name(&r.type_name) else {
            return reply(tf::validate_resource_config::Response {
                diagnostics: unknown_type(&r.type_name),
            });
        };
        let diagnostics = match decode_obj(&r.config) {
            Ok(c) => diags(&kind.validate(&c.unwrap_or_default())),
            Err(e) => failure("cannot decode the configuration", &e),
        };
        reply(tf::validate_resource_config::Response { diagnostics })
    }

    async fn validate_data_resource_config(
        &self,
        _: Request<tf::validate_data_resource_config::Request>,
    ) -> R<tf::validate_data_resource_config::Response> {
        reply(Default::default())
    }

    async fn upgrade_resource_state(
        &self,
        r: Request<tf::upgrade_resource_state::Request>,
    ) -> R<tf::upgrade_resource_state::Response> {
        let r = r.into_inner();
        let Some(kind) = Kind::from_name(&r.type_name) else {
            return reply(tf::upgrade_resource_state::Response {
                diagnostics: unknown_type(&r.type_name),
                ..Default::default()
            });
        };
        let json = r.raw_state.map(|s| s.json).unwrap_or_default();
        match value::decode(&[], &json) {
            Ok(Val::Map(m)) => reply(tf::upgrade_resource_state::Response {
                upgraded_state: dynamic(Some(schema::complete(&kind.attrs(), m))),
                ..Default::default()
            }),
            Ok(_) => reply(tf::upgrade_resource_state::Response {
                upgraded_state: dynamic(None),
                ..Default::default()
            }),
            Err(e) => reply(tf::upgrade_resource_state::Response {
                diagnostics: failure("cannot read the stored state", &e),
                ..Default::default()
            }),
        }
    }

    async fn configure_provider(
        &self,
        r: Request<tf::configure_provider::Request>,
    ) -> R<tf::configure_provider::Response> {
        let config = match decode_obj(&r.into_inner().config) {
            Ok(c) => c.unwrap_or_default(),
            Err(e) => {
                return reply(tf::configure_provider::Response {
                    diagnostics: failure("cannot decode the provider configuration", &e),
                });
            }
        };
        let pick = |attr: &str, env: &str| {
            config
                .get(attr)
                .and_then(|v| v.as_str().map(str::to_owned))
                .filter(|v| !v.is_empty())
                .or_else(|| std::env::var(env).ok().filter(|v| !v.is_empty()))
        };
        let unknown = provider_attrs()
            .iter()
            .filter(|a| config.get(a.name) == Some(&Val::Unknown))
            .map(|a| a.name.to_owned())
            .collect();
        let conn = Conn {
            unknown,
            control_plane: pick("control_plane", "NEXUS_CONTROL_PLANE")
                .unwrap_or_else(|| "http://127.0.0.1:7400".into()),
            admin_key: pick("admin_key", "NEXUS_ADMIN_KEY"),
            admin_key_file: pick("admin_key_file", "NEXUS_ADMIN_KEY_FILE"),
            tls: ClientTls {
                ca: pick("ca_file", "NEXUS_CA").map(Into::into),
                cert: pick("tls_cert", "NEXUSCTL_TLS_CERT").map(Into::into),
                key: pick("tls_key", "NEXUSCTL_TLS_KEY").map(Into::into),
            },
        };
        tracing::info!(control_plane = %conn.control_plane, "configured");
        if let Ok(mut c) = self.ctx.conn.lock() {
            *c = conn;
        }
        *self.ctx.admin.lock().await = None;
        reply(Default::default())
    }

    async fn read_resource(
        &self,
        r: Request<tf::read_resource::Request>,
    ) -> R<tf::read_resource::Response> {
        let r = r.into_inner();
        let Some(kind) = Kind::from_name(&r.type_name) else {
            return reply(tf::read_resource::Response {
                diagnostics: unknown_type(&r.type_name),
                ..Default::default()
            });
        };
        let result = async {
            match decode_obj(&r.current_state)? {
                None => Ok(None),
                Some(state) => kind.read(&self.ctx, &state).await,
            }
        }
        .await;
        match result {
            Ok(o) => reply(tf::read_resource::Response {
                new_state: dynamic(o.map(|o| schema::complete(&kind.attrs(), o))),
                private: r.private,
                ..Default::default()
            }),
            Err(e) => reply(tf::read_resource::Response {
                diagnostics: failure(&format!("cannot read {}", kind.type_name()), &e),
                ..Default::default()
            }),
        }
    }

    async fn plan_resource_change(
        &self,
        r: Request<tf::plan_resource_change::Request>,
    ) -> R<tf::plan_resource_change::Response> {
        use tf::attribute_path::{Step, step::Selector};
        let r = r.into_inner();
        let Some(kind) = Kind::from_name(&r.type_name) else {
            return reply(tf::plan_resource_change::Response {
                diagnostics: unknown_type(&r.type_name),
                ..Default::default()
            });
        };
        let decoded = (|| {
            Ok::<_, anyhow::Error>((
                decode_obj(&r.prior_state)?,
                decode_obj(&r.proposed_new_state)?,
                decode_obj(&r.config)?,
            ))
        })();
        let (prior, proposed, config) = match decoded {
            Ok(d) => d,
            Err(e) => {
                return reply(tf::plan_resource_change::Response {
                    diagnostics: failure("cannot decode the plan", &e),
                    ..Default::default()
                });
            }
        };
        let Some(proposed) = proposed else {
            // Destroy.
            return reply(tf::plan_resource_change::Response {
                planned_state: dynamic(None),
                ..Default::default()
            });
        };
        let attrs = kind.attrs();
        let (planned, replace) = schema::plan(
            &attrs,
            prior.as_ref(),
            &proposed,
            &config.unwrap_or_default(),
        );
        let planned = schema::complete(&attrs, planned);
        let checks = kind.plan_check(&self.ctx, prior.as_ref(), &planned).await;
        reply(tf::plan_resource_change::Response {
            planned_state: dynamic(Some(planned)),
            requires_replace: replace
                .into_iter()
                .map(|a| tf::AttributePath {
                    steps: vec![Step {
                        selector: Some(Selector::AttributeName(a.into())),
                    }],
                })
                .collect(),
            planned_private: r.prior_private,
            diagnostics: diags(&checks),
            ..Default::default()
        })
    }

    async fn apply_resource_change(
        &self,
        r: Request<tf::apply_resource_change::Request>,
    ) -> R<tf::apply_resource_change::Response> {
        let r = r.into_inner();
        let Some(kind) = Kind::from_name(&r.type_name) else {
            return reply(tf::apply_resource_change::Response {
                diagnostics: unknown_type(&r.type_name),
                ..Default::default()
            });
        };
        let result = async {
            let prior = decode_obj(&r.prior_state)?;
            let planned = decode_obj(&r.planned_state)?;
            match (prior, planned) {
                (Some(prior), None) => kind.delete(&self.ctx, &prior).await.map(|()| None),
                (None, Some(planned)) => kind.create(&self.ctx, &planned).await.map(Some),
                (Some(prior), Some(planned)) => {
                    kind.update(&self.ctx, &prior, &planned).await.map(Some)
                }
                (None, None) => Ok(None),
            }
        }
        .await;
        match result {
            Ok(o) => reply(tf::apply_resource_change::Response {
                new_state: dynamic(o.map(|o| schema::complete(&kind.attrs(), o))),
                private: r.planned_private,
                ..Default::default()
            }),
            Err(e) => reply(tf::apply_resource_change::Response {
                // On failure Terraform keeps the prior state.
                new_state: r.prior_state,
                diagnostics: failure(&format!("{} failed", kind.type_name()), &e),
                ..Default::default()
            }),
        }
    }

    async fn import_resource_state(
        &self,
        r: Request<tf::import_resource_state::Request>,
    ) -> R<tf::import_resource_state::Response> {
        let r = r.into_inner();
        let Some(kind) = Kind::from_name(&r.type_name) else {
            return reply(tf::import_resource_state::Response {
                diagnostics: unknown_type(&r.type_name),
                ..Default::default()
            });
        };
        match kind.import(&self.ctx, &r.id).await {
            Ok(o) => reply(tf::import_resource_state::Response {
                imported_resources: vec![tf::import_resource_state::ImportedResource {
                    type_name: r.type_name,
                    state: dynamic(Some(schema::complete(&kind.attrs(), o))),
                    private: Vec::new(),
                }],
                ..Default::default()
            }),
            Err(e) => reply(tf::import_resource_state::Response {
                diagnostics: failure(
                    &format!("cannot import {} {:?}", kind.type_name(), r.id),
                    &e,
                ),
                ..Default::default()
            }),
        }
    }

    async fn move_resource_state(
        &self,
        _: Request<tf::move_resource_state::Request>,
    ) -> R<tf::move_resource_state::Response> {
        reply(tf::move_resource_state::Response {
            diagnostics: diags(&[Diag::error(
                "the nexus provider does not move resource state",
                "",
                None,
            )]),
            ..Default::default()
        })
    }

    async fn read_data_source(
        &self,
        r: Request<tf::read_data_source::Request>,
    ) -> R<tf::read_data_source::Response> {
        let r = r.into_inner();
        let Some(kind) = DataKind::from_name(&r.type_name) else {
            return reply(tf::read_data_source::Response {
                diagnostics: unknown_type(&r.type_name),
                ..Default::default()
            });
        };
        let result = async {
            let config = decode_obj(&r.config)?.unwrap_or_default();
            kind.read(&self.ctx, &config).await
        }
        .await;
        match result {
            Ok(o) => reply(tf::read_data_source::Response {
                state: dynamic(Some(schema::complete(&kind.attrs(), o))),
                ..Default::default()
            }),
            Err(e) => reply(tf::read_data_source::Response {
                diagnostics: failure(&format!("cannot read {}", kind.type_name()), &e),
                ..Default::default()
            }),
        }
    }

    async fn validate_ephemeral_resource_config(
        &self,
        _: Request<tf::validate_ephemeral_resource_config::Request>,
    ) -> R<tf::validate_ephemeral_resource_config::Response> {
        reply(Default::default())
    }

    async fn open_ephemeral_resource(
        &self,
        _: Request<tf::open_ephemeral_resource::Request>,
    ) -> R<tf::open_ephemeral_resource::Response> {
        Err(Status::unimplemented(
            "the nexus provider has no ephemeral resources",
        ))
    }

    async fn renew_ephemeral_resource(
        &self,
        _: Request<tf::renew_ephemeral_resource::Request>,
    ) -> R<tf::renew_ephemeral_resource::Response> {
        Err(Status::unimplemented(
            "the nexus provider has no ephemeral resources",
        ))
    }

    async fn close_ephemeral_resource(
        &self,
        _: Request<tf::close_ephemeral_resource::Request>,
    ) -> R<tf::close_ephemeral_resource::Response> {
        Err(Status::unimplemented(
            "the nexus provider has no ephemeral resources",
        ))
    }

    async fn get_functions(
        &self,
        _: Request<tf::get_functions::Request>,
    ) -> R<tf::get_functions::Response> {
        reply(tf::get_functions::Response {
            functions: HashMap::new(),
            diagnostics: Vec::new(),
        })
    }

    async fn call_function(
        &self,
        _: Request<tf::call_function::Request>,
    ) -> R<tf::call_function::Response> {
        Err(Status::unimplemented("the nexus provider has no functions"))
    }

    async fn stop_provider(
        &self,
        _: Request<tf::stop_provider::Request>,
    ) -> R<tf::stop_provider::Response> {
        reply(Default::default())
    }
}
