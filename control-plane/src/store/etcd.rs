//! `EtcdStore`: the production [`Store`], backed by an etcd cluster (3.4 or later) through
//! `etcd-client`.
//!
//! The mapping is direct: versions, revisions, leases and watches are etcd's own. Only
//! unary range requests are used (RangeStream needs etcd 3.7).

use std::time::Duration;

use bytes::Bytes;
use etcd_client::{
    Client, Compare as EtcdCompare, CompareOp, ConnectOptions, EventType, GetOptions, PutOptions,
    Txn as EtcdTxn, TxnOp, WatchOptions,
};
use futures::StreamExt;

use super::{
    Compare, KeyValue, LeaseId, Op, Store, StoreError, Txn, TxnOutcome, WatchEvent, WatchStream,
    check_txn,
};

/// A store on an etcd cluster; cheap to clone.
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    endpoints: Vec<String>,
}

fn unavailable(endpoints: &[String], e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("etcd at {}: {e}", endpoints.join(",")))
}

fn convert(kv: &etcd_client::KeyValue) -> Result<KeyValue, StoreError> {
    Ok(KeyValue {
        key: kv
            .key_str()
            .map_err(|e| StoreError::Internal(format!("non-UTF-8 key in etcd: {e}")))?
            .to_owned(),
        value: Bytes::copy_from_slice(kv.value()),
        version: kv.version(),
        mod_revision: kv.mod_revision(),
        lease: kv.lease(),
    })
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
    fn options(&self) -> Result<ConnectOptions, StoreError> {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(3))
            .with_timeout(Duration::from_secs(5))
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5));
        let read = |p: &std::path::Path| {
            std::fs::read(p).map_err(|e| {
                StoreError::Unavailable(format!("etcd TLS: cannot read {}: {e}", p.display()))
            })
        };
        if self.ca.is_some() || self.cert.is_some() {
            let mut tls = etcd_client::TlsOptions::new();
            if let Some(ca) = &self.ca {
                tls = tls.ca_certificate(etcd_client::Certificate::from_pem(read(ca)?));
            }
            match (&self.cert, &self.key) {
                (Some(c), Some(k)) => {
                    tls = tls.identity(etcd_client::Identity::from_pem(read(c)?, read(k)?));
                }
                (None, None) => {}
                _ => {
                    return Err(StoreError::Unavailable(
                        "etcd TLS: a client certificate needs its key and the other way round"
                            .into(),
                    ));
                }
            }
            options = options.with_tls(tls);
        }
        if let Some((user, password)) = &self.user {
            options = options.with_user(user.clone(), password.clone());
        }
        Ok(options)
    }
}

impl EtcdStore {
    /// Connects to `endpoints` (e.g. `http://127.0.0.1:2379`) and checks the cluster answers.
    pub async fn connect(endpoints: &[String]) -> Result<Self, StoreError> {
        Self::connect_with(endpoints, &EtcdAccess::default()).await
    }

    /// Like `connect`, with TLS and/or a user and password (`https://` endpoints for TLS).
    pub async fn connect_with(
        endpoints: &[String],
        access: &EtcdAccess,
    ) -> Result<Self, StoreError> {
        let options = access.options()?;
        let mut client = Client::connect(endpoints, Some(options))
            .await
            .map_err(|e| unavailable(endpoints, e))?;
        client
            .status()
            .await
            .map_err(|e| unavailable(endpoints, e))?;
        Ok(Self {
            client,
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

    fn err(&self, e: etcd_client::Error) -> StoreError {
        match e {
            etcd_client::Error::GRpcStatus(s) if s.code() == tonic::Code::NotFound => {
                StoreError::Internal(s.message().to_owned())
            }
            other => unavailable(&self.endpoints, other),
        }
    }
}

#[async_trait::async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let mut c = self.client.clone();
        let resp = c.get(key, None).await.map_err(|e| self.err(e))?;
        resp.kvs().first().map(convert).transpose()
    }

    async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, i64), StoreError> {
        let mut c = self.client.clone();
        let resp = c
            .get(prefix, Some(GetOptions::new().with_prefix()))
            .await
            .map_err(|e| self.err(e))?;
        let revision = resp.header().map_or(0, |h| h.revision());
        let kvs = resp.kvs().iter().map(convert).collect::<Result<_, _>>()?;
        Ok((kvs, revision))
    }

    async fn txn(&self, txn: Txn) -> Result<TxnOutcome, StoreError> {
        check_txn(&txn)?;
        let compares: Vec<EtcdCompare> = txn
            .compares
            .iter()
            .map(|Compare::Version(k, v)| EtcdCompare::version(k.as_str(), CompareOp::Equal, *v))
            .collect();
        let ops: Vec<TxnOp> = txn
            .ops
            .iter()
            .map(|op| match op {
                Op::Put { key, value, lease } => TxnOp::put(
                    key.as_str(),
                    value.to_vec(),
                    lease.map(|l| PutOptions::new().with_lease(l)),
                ),
                Op::Delete { key } => TxnOp::delete(key.as_str(), None),
            })
            .collect();
        let mut c = self.client.clone();
        let resp = c
            .txn(EtcdTxn::new().when(compares).and_then(ops))
            .await
            .map_err(|e| match e {
                etcd_client::Error::GRpcStatus(s)
                    if s.message().contains("requested lease not found") =>
                {
                    StoreError::LeaseNotFound(
                        txn.ops
                            .iter()
                            .find_map(|o| match o {
                                Op::Put { lease, .. } => *lease,
                                Op::Delete { .. } => None,
                            })
                            .unwrap_or(0),
                    )
                }
                other => self.err(other),
            })?;
        Ok(TxnOutcome {
            succeeded: resp.succeeded(),
            revision: resp.header().map_or(0, |h| h.revision()),
        })
    }

    async fn watch(&self, prefix: &str, from_revision: i64) -> Result<WatchStream, StoreError> {
        let mut c = self.client.clone();
        let mut options = WatchOptions::new().with_prefix();
        if from_revision > 0 {
            options = options.with_start_revision(from_revision);
        }
        let stream = c
            .watch(prefix, Some(options))
            .await
            .map_err(|e| self.err(e))?;
        let endpoints = self.endpoints.clone();
        let events = stream.flat_map(move |resp| {
            let items: Vec<Result<WatchEvent, StoreError>> = match resp {
                Err(e) => vec![Err(unavailable(&endpoints, e))],
                Ok(r) if r.compact_revision() > 0 => vec![Err(StoreError::Compacted {
                    requested: from_revision,
                    oldest: r.compact_revision(),
                })],
                Ok(r) if r.canceled() => vec![Err(StoreError::Unavailable(format!(
                    "etcd cancelled the watch: {}",
                    r.cancel_reason()
                )))],
                Ok(r) => r
                    .events()
                    .iter()
                    .filter_map(|e| {
                        let kv = e.kv()?;
                        Some(match e.event_type() {
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
        let mut c = self.client.clone();
        let secs = ttl.as_secs().max(1) as i64;
        let resp = c.lease_grant(secs, None).await.map_err(|e| self.err(e))?;
        Ok(resp.id())
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<(), StoreError> {
        let mut c = self.client.clone();
        let not_found = |e: etcd_client::Error| match e {
            etcd_client::Error::GRpcStatus(s) if s.message().contains("not found") => {
                StoreError::LeaseNotFound(lease)
            }
            etcd_client::Error::LeaseKeepAliveError(m) if m.contains("not found") => {
                StoreError::LeaseNotFound(lease)
            }
            other => self.err(other),
        };
        let (mut keeper, mut responses) = c.lease_keep_alive(lease).await.map_err(not_found)?;
        keeper.keep_alive().await.map_err(not_found)?;
        match responses.message().await.map_err(not_found)? {
            Some(r) if r.ttl() > 0 => Ok(()),
            _ => Err(StoreError::LeaseNotFound(lease)),
        }
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError> {
        let mut c = self.client.clone();
        match c.lease_revoke(lease).await {
            Ok(_) => Ok(()),
            Err(etcd_client::Error::GRpcStatus(s)) if s.message().contains("lease not found") => {
                Err(StoreError::LeaseNotFound(lease))
            }
            Err(e) => Err(self.err(e)),
        }
    }

    async fn revision(&self) -> Result<i64, StoreError> {
        let mut c = self.client.clone();
        let resp = c.get("\0", None).await.map_err(|e| self.err(e))?;
        Ok(resp.header().map_or(0, |h| h.revision()))
    }
}
