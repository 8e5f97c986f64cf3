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
    self as pb, compare, kv_client::KvClient, lease_client::LeaseClient,
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
    endpoints: Vec<String>,
}

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

fn endpoint(url: &str) -> Result<Endpoint, StoreError> {
    Ok(Endpoint::from_shared(url.to_owned())
        .map_err(|e| StoreError::Unavailable(format!("bad etcd endpoint {url:?}: {e}")))?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(REQUEST_TIMEOUT)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true))
}

impl EtcdStore {
    /// Connects to `endpoints` (e.g. `http://127.0.0.1:2379`) and checks the cluster answers.
    pub async fn connect(endpoints: &[String]) -> Result<Self, StoreError> {
        let channel = match endpoints {
            [] => return Err(StoreError::Unavailable("no etcd endpoint given".into())),
            [one] => endpoint(one)?
                .connect()
                .await
                .map_err(|e| unavailable(endpoints, error_chain(&e)))?,
            many => Channel::balance_list(
                many.iter()
                    .map(|u| endpoint(u))
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
        Ok(Self {
            channel,
            endpoints: endpoints.to_vec(),
        })
    }

    /// Like `connect`, retrying with exponential backoff (100 ms doubling to 5 s) until
    /// `give_up_after` has passed; each failure is logged with its reason.
    pub async fn connect_with_retry(
        endpoints: &[String],
        give_up_after: Duration,
    ) -> Result<Self, StoreError> {
        let deadline = tokio::time::Instant::now() + give_up_after;
        let mut delay = Duration::from_millis(100);
        loop {
            match Self::connect(endpoints).await {
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
        if s.code() == tonic::Code::NotFound {
            StoreError::Internal(s.message().to_owned())
        } else {
            unavailable(&self.endpoints, describe(&s))
        }
    }

    fn kv(&self) -> KvClient<Channel> {
        KvClient::new(self.channel.clone())
    }

    fn lease(&self) -> LeaseClient<Channel> {
        LeaseClient::new(self.channel.clone())
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
        let mut responses = WatchClient::new(self.channel.clone())
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
