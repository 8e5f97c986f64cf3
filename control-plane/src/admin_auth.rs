//! Authentication of the Admin API: every call carries `authorization: Bearer <api key>`
//! of a key with the admin scope (unless the control plane runs with admin auth off, as
//! `nexus dev` does). Keys are checked against the in-memory config snapshot, so the check
//! costs no store round trip and revocation applies as soon as the snapshot changes.
//!
//! Bootstrap: when admin auth is on and no admin key exists, the control plane creates one
//! at start and writes its token to a file readable only by the owner; that is the only
//! way a secret leaves the control plane other than the response to CreateKey/RotateKey.

use std::path::Path;
use std::sync::Arc;

use nexus_proto::keys;
use nexus_proto::v1::KeyScopes;
use tonic::{Request, Status};

use crate::audit::Actor;
use crate::error::AdminError;
use crate::push::ClusterView;
use crate::store::Store;

/// The tonic interceptor for `nexus.v1.Admin`.
#[derive(Clone)]
pub struct AdminAuth {
    pub view: Arc<ClusterView>,
    pub required: bool,
    /// Admin client certificates (`<name>.admin.nexus`, verified against the control
    /// plane's client CA by the TLS layer) authorise a call as an admin key would.
    pub admin_certificates: bool,
}

fn now_ms() -> i64 {
    crate::names::now_ms()
}

impl tonic::service::Interceptor for AdminAuth {
    /// Lets an authorised call through with its [`Actor`] in the request's extensions, for
    /// the audit trail.
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if !self.required {
            return Ok(request);
        }
        if self.admin_certificates
            && let Some(certs) = request.peer_certs()
            && let Some(name) = certs.first().and_then(nexus_tls::issue::admin_identity)
        {
            tracing::debug!(admin = %name, "Admin API call by certificate");
            request.extensions_mut().insert(Actor::Certificate(name));
            return Ok(request);
        }
        let header = request
            .metadata()
            .get("authorization")
            .ok_or_else(|| {
                Status::unauthenticated(
                    "the Admin API needs an admin key: pass --admin-key or set NEXUS_ADMIN_KEY",
                )
            })?
            .to_str()
            .map_err(|_| Status::unauthenticated("authorization header is not text"))?;
        let token = header
            .strip_prefix("Bearer ")
            .ok_or_else(|| {
                Status::unauthenticated(
                    "authorization must be `Bearer <admin key>` (the `Bearer ` prefix is missing)",
                )
            })?
            .trim();
        let (id, secret) = keys::parse(token)
            .ok_or_else(|| Status::unauthenticated("authorization is not a Nexus API key"))?;
        let snapshot = self.view.snapshot();
        let stored = snapshot
            .keys
            .iter()
            .find(|k| k.key.as_ref().is_some_and(|k| k.id == id))
            .ok_or_else(|| Status::unauthenticated(format!("API key {id} is unknown")))?;
        let key = stored
            .key
            .as_ref()
            .ok_or_else(|| Status::internal("key without record"))?;
        let now = now_ms();
        if key.revoked {
            return Err(Status::unauthenticated(format!("API key {id} was revoked")));
        }
        if key.expires_at_ms != 0 && now >= key.expires_at_ms {
            return Err(Status::unauthenticated(format!("API key {id} has expired")));
        }
        let ok = keys::secret_matches(secret, &stored.secret_sha256)
            || (now < key.previous_valid_until_ms
                && keys::secret_matches(secret, &stored.previous_secret_sha256));
        if !ok {
            return Err(Status::unauthenticated(format!(
                "wrong secret for API key {id}"
            )));
        }
        if !key.scopes.as_ref().is_some_and(|s| s.admin) {
            return Err(Status::permission_denied(format!(
                "API key {id} ({}) does not have the admin scope",
                key.name
            )));
        }
        let actor = Actor::Key(id.to_owned());
        request.extensions_mut().insert(actor);
        Ok(request)
    }
}

/// Creates the first admin key when none exists and writes its token to `file`.
pub async fn bootstrap(store: &dyn Store, file: Option<&Path>) -> Result<(), AdminError> {
    let existing = crate::keys::list_keys(store).await?;
    let has_admin = existing
        .iter()
        .any(|k| !k.revoked && k.scopes.as_ref().is_some_and(|s| s.admin));
    if has_admin {
        return Ok(());
    }
    let Some(file) = file else {
        tracing::warn!(
            "no admin key exists and no --admin-key-file is set: the Admin API cannot be used until one is created"
        );
        return Ok(());
    };
    let (key, token) = crate::keys::create(
        store,
        "bootstrap-admin",
        KeyScopes {
            publish: Vec::new(),
            subscribe: Vec::new(),
            admin: true,
        },
        0,
        None,
    )
    .await?;
    write_secret(file, &token).map_err(|e| {
        AdminError::invalid(
            "admin_key_file",
            format!("cannot write {}: {e}", file.display()),
        )
    })?;
    tracing::info!(key = %key.id, file = %file.display(), "created the bootstrap admin key");
    Ok(())
}

fn write_secret(path: &Path, token: &str) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options.open(path)?;
    writeln!(f, "{token}")?;
    f.sync_all()
}
