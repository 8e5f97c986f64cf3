//! `EtcdStore`: the production [`Store`], backed by an etcd cluster (3.4 or later).
//!
//! It speaks etcd's v3 gRPC API through a client generated from etcd's own .proto files
//! ([`super::etcd_api`], compiled with protox at build time, so no `protoc` is needed). The
//! mapping is direct: versions, revisions, leases and watches are etcd's own. Only unary range
//! requests are used (RangeStream needs etcd 3.7).

use std::time::Duration;

use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

use super::etcd_api::etcdserverpb::{
    self as pb, auth_client::AuthClient, compare, kv_client::KvClient, lease_client::LeaseClient,
    maintenance_client::MaintenanceClient, request_op, watch_client::WatchClient, watch_request,
};
use super::etcd_api::mvccpb::{self, event::EventType};
use super::{
    Compare, KeyValue, LeaseId, Op, Store, StoreError, Txn, TxnOutcome, WatchEvent, WatchStream,
    check_txn,
};

/// How long connecting to an endpoint may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a unary request (and the opening of a stream) may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// A store on an etcd cluster; cheap to clone.
#[derive(Clone)]
pub struct EtcdStore {
    channel: Channel,
    token: Token,
    endpoints: Vec<String>,
}

/// How the control plane proves itself to etcd and verifies etcd: TLS (with `https://`
/// endpoints) and/or a user and password (etcd's `--auth` / `etcdctl user add`).
#[derive(Debug, Clone, Default)]
pub struct EtcdAccess {
    /// PEM CA(s) that issued etcd's server certificate.
    pub ca: Option<std::path::PathBuf>,
    /// PEM client certificate and key (etcd's `--client-cert-auth`).
    pub cert: Option<std::path::PathBuf>,
    pub key: Option<std::path::PathBuf>,
    /// etcd user and password.
    pub user: Option<(String, String)>,
}

impl EtcdAccess {
    fn tls(&self) -> Result<Option<tonic::transport::ClientTlsConfig>, StoreError> {
        use tonic::transport::{Certificate, ClientTlsConfig, Identity};
        if self.ca.is_none() && self.cert.is_none() {
            return Ok(None);
        }
        let read = |p: &std::path::Path| {
            std::fs::read(p).map_err(|e| {
                StoreError::Unavailable(format!("etcd TLS: cannot read {}: {e}", p.display()))
            })
        };
        let mut tls = ClientTlsConfig::new();
        if let Some(ca) = &self.ca {
            tls = tls.ca_certificate(Certificate::from_pem(read(ca)?));
        }
        match (&self.cert, &self.key) {
            (Some(c), Some(k)) => tls = tls.identity(Identity::from_pem(read(c)?, read(k)?)),
            (None, None) => {}
            _ => {
                return Err(StoreError::Unavailable(
                    "etcd TLS: a client certificate needs its key and the other way round".into(),
                ));
            }
        }
        Ok(Some(tls))
    }
}

/// etcd's auth token (from `Authenticate` with a user and password), sent as `token` metadata
/// on every call.
#[derive(Clone, Default)]
struct Token(std::sync::Arc<TokenState>);

#[derive(Default)]
struct TokenState {
    current: arc_swap::ArcSwapOption<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
    /// The user and password, to authenticate again when etcd drops the token.
    user: Option<(String, String)>,
    refreshing: std::sync::atomic::AtomicBool,
}

impl tonic::service::Interceptor for Token {
    fn call(&mut self, mut r: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(t) = &*self.0.current.load() {
            r.metadata_mut().insert("token", (**t).clone());
        }
        Ok(r)
    }
}

/// Whether etcd refused a call because its auth token is no longer valid (etcd restarted,
/// auth was re-enabled, or the token's TTL passed).
fn token_invalid(s: &tonic::Status) -> bool {
    s.message().contains("invalid auth token") || s.message().contains("auth store is old")
}

/// Exchanges the user and password for a token.
async fn authenticate(
    channel: &Channel,
    endpoints: &[String],
    (name, password): &(String, String),
) -> Result<tonic::metadata::MetadataValue<tonic::metadata::Ascii>, StoreError> {
    let reply = tokio::time::timeout(
        REQUEST_TIMEOUT,
        AuthClient::new(channel.clone()).authenticate(pb::AuthenticateRequest {
            name: name.clone(),
            password: password.clone(),
        }),
    )
    .await
    .map_err(|_| unavailable(endpoints, "no answer to Authenticate"))?
    .map_err(|s| unavailable(endpoints, format!("user {name:?}: {}", describe(&s))))?;
    reply
        .into_inner()
        .token
        .parse()
        .map_err(|_| unavailable(endpoints, "etcd's auth token is not valid metadata"))
}

type Authed = tonic::service::interceptor::InterceptedService<Channel, Token>;

fn unavailable(endpoints: &[String], e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("etcd at {}: {e}", endpoints.join(",")))
}

/// What a gRPC status from etcd says, without tonic's debug dump of metadata.
fn describe(s: &tonic::Status) -> String {
    format!("{:?}: {}", s.code(), s.message())
}

fn convert(kv: mvccpb::KeyValue) -> Result<KeyValue, StoreError> {
    Ok(KeyValue {
        key: String::from_utf8(kv.key.to_vec())
            .map_err(|e| StoreError::Internal(format!("non-UTF-8 key in etcd: {e}")))?,
        value: kv.value,
        version: kv.version,
        mod_revision: kv.mod_revision,
        lease: kv.lease,
    })
}

/// The end of the key range that holds every key starting with `prefix` (etcd's convention:
/// the prefix with its last byte incremented, dropping trailing 0xff bytes; `\0` means "every
/// key" when nothing is left).
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn endpoint(
    url: &str,
    tls: Option<&tonic::transport::ClientTlsConfig>,
) -> Result<Endpoint, StoreError> {
    let ep = Endpoint::from_shared(url.to_owned())
        .map_err(|e| StoreError::Unavailable(format!("bad etcd endpoint {url:?}: {e}")))?;
    let ep = match tls {
        Some(tls) => ep
            .tls_config(tls.clone())
            .map_err(|e| StoreError::Unavailable(format!("etcd TLS for {url}: {e}")))?,
        None => ep,
    };
    Ok(ep
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true))
}

impl EtcdStore {
    /// Connects to `endpoints` (e.g. `http://127.0.0.1:2379`) and checks the cluster answers.
    pub async fn connect(endpoints: &[String]) -> Result<Self, StoreError> {
        Self::connect_with(endpoints, &EtcdAccess::default()).await
    }

    /// Like `connect`, with TLS and/or a user and password (`https://` endpoints for TLS).
    /// The password is exchanged for etcd's auth token once, here.
    pub async fn connect_with(
        endpoints: &[String],
        access: &EtcdAccess,
    ) -> Result<Self, StoreError> {
        let tls = access.tls()?;
        let channel = match endpoints {
            [] => return Err(StoreError::Unavailable("no etcd endpoint given".into())),
            [one] => endpoint(one, tls.as_ref())?
                .connect()
                .await
                .map_err(|e| unavailable(endpoints, error_chain(&e)))?,
            many => Channel::balance_list(
                many.iter()
                    .map(|u| endpoint(u, tls.as_ref()))
                    .collect::<Result<Vec<_>, _>>()?
                    .into_iter(),
            ),
        };
        // A balanced channel connects lazily and waits for a ready endpoint; bound the check.
        let mut maintenance = MaintenanceClient::new(channel.clone());
        match tokio::time::timeout(REQUEST_TIMEOUT, maintenance.status(pb::StatusRequest {})).await
        {
            Ok(Ok(_)) => {}
            Ok(Err(s)) => return Err(unavailable(endpoints, describe(&s))),
            Err(_) => {
                return Err(unavailable(
                    endpoints,
                    format!("no answer within {REQUEST_TIMEOUT:?}"),
                ));
            }
        }
        let token = Token(std::sync::Arc::new(TokenState {
            user: access.user.clone(),
            ..TokenState::default()
        }));
        if let Some(user) = &access.user {
            let t = authenticate(&channel, endpoints, user).await?;
            token.0.current.store(Some(std::sync::Arc::new(t)));
        }
        Ok(Self {
            channel,
            token,
            endpoints: endpoints.to_vec(),
        })
    }

    /// Like `connect`, retrying with exponential backoff (100 ms doubling to 5 s) until
    /// `give_up_after` has passed; each failure is logged with its reason.
    pub async fn connect_with_retry(
        endpoints: &[String],
        give_up_after: Duration,
    ) -> Result<Self, StoreError> {
        Self::connect_with_retry_using(endpoints, &EtcdAccess::default(), give_up_after).await
    }

    /// `connect_with_retry` with TLS and/or a user and password.
    pub async fn connect_with_retry_using(
        endpoints: &[String],
        access: &EtcdAccess,
        give_up_after: Duration,
    ) -> Result<Self, StoreError> {
        let deadline = tokio::time::Instant::now() + give_up_after;
        let mut delay = Duration::from_millis(100);
        loop {
            match Self::connect_with(endpoints, access).await {
                Ok(s) => return Ok(s),
                Err(e) if tokio::time::Instant::now() + delay < deadline => {
                    tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "etcd not reachable yet");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn err(&self, s: tonic::Status) -> StoreError {
        if token_invalid(&s) {
            self.reauthenticate();
        }
        if s.code() == tonic::Code::NotFound {
            StoreError::Internal(s.message().to_owned())
        } else {
            unavailable(&self.endpoints, describe(&s))
        }
    }

    /// Fetches a new token in the background after etcd refused the current one; the call
    /// that noticed fails (as unavailable) and its caller's retry uses the new token.
    fn reauthenticate(&self) {
        use std::sync::atomic::Ordering;
        let state = self.token.0.clone();
        let Some(user) = state.user.clone() else {
            return;
        };
        if state.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let (channel, endpoints) = (self.channel.clone(), self.endpoints.clone());
        tokio::spawn(async move {
            match authenticate(&channel, &endpoints, &user).await {
                Ok(t) => {
                    state.current.store(Some(std::sync::Arc::new(t)));
                    tracing::info!("etcd auth token renewed");
                }
                Err(e) => tracing::warn!(error = %e, "etcd re-authentication failed"),
            }
            state.refreshing.store(false, Ordering::Release);
        });
    }

    fn kv(&self) -> KvClient<Authed> {
        KvClient::with_interceptor(self.channel.clone(), self.token.clone())
    }

    fn lease(&self) -> LeaseClient<Authed> {
        LeaseClient::with_interceptor(self.channel.clone(), self.token.clone())
    }

    async fn range(&self, key: &str, range_end: Vec<u8>) -> Result<pb::RangeResponse, StoreError> {
        let request = pb::RangeRequest {
            key: key.as_bytes().to_vec(),
            range_end,
            ..Default::default()
        };
        Ok(self
            .kv()
            .range(request)
            .await
            .map_err(|s| self.err(s))?
            .into_inner())
    }
}

/// A transport error and its sources, each said once ("connection refused" rather than
/// "transport error: transport error").
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut current = Some(e);
    while let Some(err) = current {
        let text = err.to_string();
        if !parts.iter().any(|p| p == &text) {
            parts.push(text);
        }
        current = err.source();
    }
    parts.join(": ")
}

#[async_trait::async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let resp = self.range(key, Vec::new()).await?;
        resp.kvs.into_iter().next().map(convert).transpose()
    }

    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, i64), StoreError> {
        let resp = self.range(prefix, prefix_end(prefix)).await?;
        let revision = resp.header.map_or(0, |h| h.revision);
        let kvs = resp
            .kvs
            .into_iter()
            .map(convert)
            .collect::<Result<_, _>>()?;
        Ok((kvs, revision))
    }

    async fn range_page(
        &self,
        start: &str,
        end: &str,
        limit: usize,
        descending: bool,
    ) -> Result<Vec<KeyValue>, StoreError> {
        let order = if descending {
            pb::range_request::SortOrder::Descend
        } else {
            pb::range_request::SortOrder::Ascend
        };
        let request = pb::RangeRequest {
            key: start.as_bytes().to_vec(),
            range_end: end.as_bytes().to_vec(),
            limit: limit as i64,
            sort_order: order as i32,
            sort_target: pb::range_request::SortTarget::Key as i32,
            ..Default::default()
        };
        let resp = self
            .kv()
            .range(request)
            .await
            .map_err(|s| self.err(s))?
            .into_inner();
        resp.kvs.into_iter().map(convert).collect()
    }

    async fn txn(&self, txn: Txn) -> Result<TxnOutcome, StoreError> {
        check_txn(&txn)?;
        let compare = txn
            .compares
            .iter()
            .map(|Compare::Version(k, v)| pb::Compare {
                result: pb::compare::CompareResult::Equal as i32,
                target: pb::compare::CompareTarget::Version as i32,
                key: k.as_bytes().to_vec(),
                range_end: Vec::new(),
                target_union: Some(compare::TargetUnion::Version(*v)),
            })
            .collect();
        let success = txn
            .ops
            .iter()
            .map(|op| pb::RequestOp {
                request: Some(match op {
                    Op::Put { key, value, lease } => {
                        request_op::Request::RequestPut(pb::PutRequest {
                            key: key.as_bytes().to_vec(),
                            value: value.to_vec(),
                            lease: lease.unwrap_or(0),
                            ..Default::default()
                        })
                    }
                    Op::Delete { key } => {
                        request_op::Request::RequestDeleteRange(pb::DeleteRangeRequest {
                            key: key.as_bytes().to_vec(),
                            ..Default::default()
                        })
                    }
                }),
            })
            .collect();
        let request = pb::TxnRequest {
            compare,
            success,
            failure: Vec::new(),
        };
        let resp = self
            .kv()
            .txn(request)
            .await
            .map_err(|s| {
                if s.message().contains("requested lease not found") {
                    StoreError::LeaseNotFound(
                        txn.ops
                            .iter()
                            .find_map(|o| match o {
                                Op::Put { lease, .. } => *lease,
                                Op::Delete { .. } => None,
                            })
                            .unwrap_or(0),
                    )
                } else {
                    self.err(s)
                }
            })?
            .into_inner();
        Ok(TxnOutcome {
            succeeded: resp.succeeded,
            revision: resp.header.map_or(0, |h| h.revision),
        })
    }

    async fn watch(&self, prefix: &str, from_revision: i64) -> Result<WatchStream, StoreError> {
        // The request half stays open for as long as the caller reads the stream (the sender
        // moves into it): etcd ends a watch when its client closes the request stream.
        let (requests, rx) = mpsc::channel::<pb::WatchRequest>(1);
        let create = pb::WatchCreateRequest {
            key: prefix.as_bytes().to_vec(),
            range_end: prefix_end(prefix),
            start_revision: from_revision.max(0),
            ..Default::default()
        };
        requests
            .send(pb::WatchRequest {
                request_union: Some(watch_request::RequestUnion::CreateRequest(create)),
            })
            .await
            .map_err(|_| StoreError::Internal("watch request channel closed".into()))?;
        let mut responses = WatchClient::with_interceptor(self.channel.clone(), self.token.clone())
            .watch(ReceiverStream::new(rx))
            .await
            .map_err(|s| self.err(s))?
            .into_inner();
        // etcd confirms the watch before any event; waiting for it means every change
        // committed after `watch` returns is seen.
        let first = match responses.message().await {
            Ok(Some(r)) => r,
            Ok(None) => {
                return Err(unavailable(
                    &self.endpoints,
                    "the watch stream ended before etcd confirmed it",
                ));
            }
            Err(s) => return Err(self.err(s)),
        };
        let endpoints = self.endpoints.clone();
        let responses = futures::stream::once(async move { Ok(first) }).chain(responses);
        let events = responses.flat_map(move |resp| {
            let _keep_open = &requests;
            let items: Vec<Result<WatchEvent, StoreError>> = match resp {
                Err(s) => vec![Err(unavailable(&endpoints, describe(&s)))],
                Ok(r) if r.compact_revision > 0 => vec![Err(StoreError::Compacted {
                    requested: from_revision,
                    oldest: r.compact_revision,
                })],
                Ok(r) if r.canceled => vec![Err(StoreError::Unavailable(format!(
                    "etcd cancelled the watch: {}",
                    r.cancel_reason
                )))],
                Ok(r) => r
                    .events
                    .into_iter()
                    .filter_map(|e| {
                        let kind = e.r#type();
                        let kv = e.kv?;
                        Some(match kind {
                            EventType::Put => convert(kv).map(WatchEvent::Put),
                            EventType::Delete => convert(kv).map(|kv| WatchEvent::Delete {
                                key: kv.key,
                                revision: kv.mod_revision,
                            }),
                        })
                    })
                    .collect(),
            };
            futures::stream::iter(items)
        });
        Ok(Box::pin(events))
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        let secs = ttl.as_secs().max(1) as i64;
        let resp = self
            .lease()
            .lease_grant(pb::LeaseGrantRequest { ttl: secs, id: 0 })
            .await
            .map_err(|s| self.err(s))?
            .into_inner();
        if !resp.error.is_empty() {
            return Err(unavailable(&self.endpoints, resp.error));
        }
        Ok(resp.id)
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<(), StoreError> {
        let not_found = |s: tonic::Status| {
            if s.message().contains("not found") {
                StoreError::LeaseNotFound(lease)
            } else {
                self.err(s)
            }
        };
        // One refresh: open the bidirectional stream, send one request, read its answer.
        let (requests, rx) = mpsc::channel(1);
        requests
            .send(pb::LeaseKeepAliveRequest { id: lease })
            .await
            .map_err(|_| StoreError::Internal("keep-alive request channel closed".into()))?;
        let mut responses = self
            .lease()
            .lease_keep_alive(ReceiverStream::new(rx))
            .await
            .map_err(not_found)?
            .into_inner();
        let answer = responses.message().await.map_err(not_found)?;
        drop(requests);
        match answer {
            Some(r) if r.ttl > 0 => Ok(()),
            _ => Err(StoreError::LeaseNotFound(lease)),
        }
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError> {
        match self
            .lease()
            .lease_revoke(pb::LeaseRevokeRequest { id: lease })
            .await
        {
            Ok(_) => Ok(()),
            Err(s) if s.message().contains("lease not found") => {
                Err(StoreError::LeaseNotFound(lease))
            }
            Err(s) => Err(self.err(s)),
        }
    }

    async fn revision(&self) -> Result<i64, StoreError> {
        let resp = self.range("\0", Vec::new()).await?;
        Ok(resp.header.map_or(0, |h| h.revision))
    }
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn prefix_end_increments_the_last_byte() {
        assert_eq!(prefix_end("/nexus/v1/"), b"/nexus/v10".to_vec());
        assert_eq!(prefix_end("a"), b"b".to_vec());
        assert_eq!(prefix_end(""), vec![0]);
    }
}
