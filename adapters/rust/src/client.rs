//! [`Client`] and [`ClientBuilder`]: connecting, subscribing, flush, drain and close; publishing
//! (`publish`), requests and replies (`request`) and streams (`streams`) are in the submodules.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use nexus_proto::v1 as pb;
use nexus_proto::v1::frame::Kind;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::batch::{BatchLimits, Outbound};
use crate::connection::{self, AckWaiter, Config, Gateways, Shared, SubEntry, SubKind};
use crate::discovery::{DNS_SERVER_ENV, Discovery, Target, choose_dns_server, parse_target};
use crate::error::{Error, Result};
use crate::native::Transport;
use crate::subject::{validate_queue_group, validate_subscribe_subject};
use crate::subscription::Subscription;
use crate::tls::TlsSettings;

mod builder;
mod publish;
mod request;
mod streams;
pub use builder::ClientBuilder;
pub(crate) use request::reply_frame;

/// Extra time the client waits beyond a request's timeout before giving up on its own (in
/// case the gateway vanished without answering).
const CLIENT_GRACE: Duration = Duration::from_secs(1);

/// Default of [`ClientBuilder::publish_retry_timeout`]: well inside the gateway's 120 s
/// de-duplication window.
pub const DEFAULT_PUBLISH_RETRY_TIMEOUT: Duration = Duration::from_secs(30);

/// A connection to a Nexus gateway. Cheap to clone (all clones share one session).
///
/// The session is closed by [`close`](Client::close), or when the last `Client` clone and the
/// last handle created from it ([`Subscription`], [`Service`](crate::Service), [`BiStream`](crate::BiStream),
/// [`StreamListener`](crate::StreamListener), which each hold a clone) are dropped.
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<ClientInner>,
}

pub(crate) struct ClientInner {
    pub(crate) shared: Arc<Shared>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for ClientInner {
    fn drop(&mut self) {
        self.shared.shutdown.send_replace(true);
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("name", &self.shared().config.name)
            .field("connected", &self.is_connected())
            .finish()
    }
}

/// What the gateway said about a confirmed publish (its `Ack`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublishOutcome {
    /// Subscriptions in the gateway's region the message was queued for.
    pub delivered: u32,
    /// Other regions it was sent to best effort.
    pub forwarded_regions: Vec<String>,
    /// Other regions it was written to the replication spool for (`async` / `sync` routes).
    pub spooled_regions: Vec<String>,
    /// The message id was accepted before: nothing was delivered or replicated again.
    pub duplicate: bool,
    /// The message's id (a ULID), as subscribers see it and `nexusctl trace` takes it.
    pub id: String,
}

/// What the gateway said in its Welcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerInfo {
    /// Session id assigned by the gateway.
    pub session_id: String,
    /// The gateway instance.
    pub gateway_id: String,
    /// The gateway's region.
    pub region: String,
    /// Largest payload accepted (0 = not announced).
    pub max_payload: u64,
    /// Most subscriptions allowed per session (0 = not announced).
    pub max_subscriptions: u32,
    /// Protocol version.
    pub protocol: u32,
}

/// `127.0.0.1:7422` -> `http://127.0.0.1:7422`.
pub(crate) fn normalize_addr(addr: &str) -> String {
    if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("http://{addr}")
    }
}

/// A fresh ULID as the 16 raw bytes the protocol carries. Ids are cut from a per-thread
/// 4 KiB buffer, so each costs a reference count instead of an allocation and a free (a
/// publish runs this for every message).
fn new_id() -> Bytes {
    const CHUNK: usize = 16 * 256;
    thread_local! {
        static IDS: std::cell::RefCell<bytes::BytesMut> =
            std::cell::RefCell::new(bytes::BytesMut::new());
    }
    let id = crate::ids::new_ulid().to_bytes();
    IDS.with(|ids| {
        let mut ids = ids.borrow_mut();
        if ids.capacity() < id.len() {
            *ids = bytes::BytesMut::with_capacity(CHUNK);
        }
        ids.extend_from_slice(&id);
        ids.split_to(id.len()).freeze()
    })
}

fn duration_ms(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

impl Client {
    /// Connects with default settings. `addr` is `http://host:port` (a bare `host:port`
    /// gets `http://`), or a discovery name `nexus+srv://<region>.<zone>[?dns=ip[:port]]`
    /// whose gateways are found through the DNS SRV records of `_nexus._tcp.<region>.<zone>`
    /// (see [`ClientBuilder::connect`] and the crate docs).
    ///
    /// ```no_run
    /// # async fn demo() -> nexus_client::Result<()> {
    /// let client = nexus_client::Client::connect("http://127.0.0.1:7422").await?;
    /// println!("connected to {:?}", client.server_info());
    /// # Ok(()) }
    /// ```
    pub async fn connect(addr: &str) -> Result<Client> {
        Self::builder(addr).connect().await
    }

    /// A builder to configure the connection.
    ///
    /// ```no_run
    /// # async fn demo() -> nexus_client::Result<()> {
    /// use std::time::Duration;
    /// let client = nexus_client::Client::builder("nexus+srv://us-east.nexus.local")
    ///     .api_key("nxk_...")
    ///     .request_timeout(Duration::from_secs(2))
    ///     .connect()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn builder(addr: &str) -> ClientBuilder {
        ClientBuilder::new(addr)
    }

    pub(crate) fn shared(&self) -> &Shared {
        &self.inner.shared
    }

    pub(crate) fn request_timeout(&self) -> Duration {
        self.shared().config.request_timeout
    }

    fn check_open(&self) -> Result<()> {
        if self.shared().closed.load(Ordering::Acquire) {
            Err(Error::Closed)
        } else {
            Ok(())
        }
    }

    pub(crate) fn check_payload(&self, len: usize) -> Result<()> {
        if !self.shared().config.local_payload_check {
            return Ok(());
        }
        let max = self.shared().max_payload.load(Ordering::Relaxed);
        if max > 0 && len as u64 > max {
            return Err(Error::Limit {
                message: format!("payload of {len} bytes exceeds max_payload {max}"),
            });
        }
        Ok(())
    }

    /// Queues a frame, waiting for room in the outbound queue.
    pub(crate) async fn enqueue(&self, o: Outbound) -> Result<()> {
        self.check_open()?;
        self.shared().outbound.push(o).await
    }

    /// Registers session work with `f` under the state lock and returns the epoch it belongs
    /// to. While the gateway is draining (`GoAway`, docs/protocol.md §3.4) it first waits for
    /// the move to end, so that new work goes to the next gateway, not the draining one; the
    /// wait is bounded by the gateway's drain period.
    async fn register<T>(&self, f: impl FnOnce(&mut connection::State) -> T) -> (T, u64) {
        let mut moving = self.shared().moving.subscribe();
        loop {
            {
                let mut st = self.shared().state.lock();
                if !st.moving {
                    let t = f(&mut st);
                    return (t, st.epoch);
                }
            }
            let _ = moving.wait_for(|m| !*m).await;
        }
    }

    /// Waits until a session with a gateway is up (at once when it is).
    pub(crate) async fn wait_connected(&self) {
        let mut up = self.shared().up.subscribe();
        let _ = up.wait_for(|up| *up).await;
    }

    async fn await_ack(
        &self,
        ack_id: u64,
        o: Outbound,
        mut rx: oneshot::Receiver<std::result::Result<pb::Ack, crate::error::Fail>>,
        subject: &str,
    ) -> Result<pb::Ack> {
        let t = self.request_timeout();
        if let Err(e) = self.enqueue(o).await {
            self.shared().state.lock().acks.remove(&ack_id);
            return Err(e);
        }
        let answer = match tokio::time::timeout(t + CLIENT_GRACE, &mut rx).await {
            Ok(answer) => answer,
            Err(_) => {
                let mut st = self.shared().state.lock();
                match st.acks.get_mut(&ack_id) {
                    // A subscribe: keep waiting for the Ack in the background, so that a Sub
                    // the gateway applies after all is undone with an Unsub that follows it.
                    Some(w) if w.sid.is_some() => w.tx = None,
                    Some(_) => drop(st.acks.remove(&ack_id)),
                    // Answered just now, while timing out.
                    None => {
                        drop(st);
                        if let Ok(answer) = rx.try_recv() {
                            return answer.map_err(|f| f.into_error(subject, t));
                        }
                    }
                }
                return Err(Error::Timeout {
                    subject: subject.to_owned(),
                    after: t,
                    detail: None,
                });
            }
        };
        match answer {
            Ok(Ok(ack)) => Ok(ack),
            Ok(Err(f)) => Err(f.into_error(subject, t)),
            Err(_) => Err(Error::Closed),
        }
    }

    /// Registers a subscription and waits for the gateway's Ack. Returns the sid.
    pub(crate) async fn add_sub(
        &self,
        subject: &str,
        group: &str,
        kind: SubKind,
    ) -> Result<(u64, Arc<AtomicU64>)> {
        validate_subscribe_subject(subject)?;
        if !group.is_empty() {
            validate_queue_group(group)?;
        }
        self.check_open()?;
        let sid = self.shared().next_id();
        let ack_id = self.shared().next_id();
        let dropped = Arc::new(AtomicU64::new(0));
        let (tx, rx) = oneshot::channel();
        let ((), epoch) = self
            .register(|st| {
                st.subs.insert(
                    sid,
                    SubEntry {
                        subject: subject.to_owned(),
                        queue_group: group.to_owned(),
                        kind,
                        confirmed: false,
                        dropped: dropped.clone(),
                    },
                );
                st.acks.insert(ack_id, AckWaiter::new(tx, Some(sid)));
            })
            .await;
        let frame = Kind::Sub(pb::Sub {
            sid,
            subject: subject.to_owned(),
            queue_group: group.to_owned(),
            ack_id,
        });
        match self
            .await_ack(ack_id, Outbound::in_epoch(frame, epoch), rx, subject)
            .await
        {
            Ok(_) => Ok((sid, dropped)),
            Err(e) => {
                // Refused, disconnected or timed out. After a timeout the gateway may still
                // apply the Sub: its late Ack then triggers the Unsub (see `connection::on_ack`),
                // so no Unsub is sent here, where it could reach the gateway for a sid it does
                // not know (refused Sub) and be answered with Error{INVALID}.
                let entry = self.shared().state.lock().subs.remove(&sid);
                drop(entry);
                Err(e)
            }
        }
    }

    /// Subscribes to `subject` (a pattern with optional `*` / trailing `>`). Returns after the
    /// gateway confirmed it, so refusals (invalid subject, subscription limit) are reported
    /// here.
    ///
    /// ```no_run
    /// # async fn demo(client: nexus_client::Client) -> nexus_client::Result<()> {
    /// let mut sub = client.subscribe("orders.*.created").await?;
    /// while let Some(msg) = sub.next_message().await {
    ///     println!("{}: {:?}", msg.subject, msg.payload);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn subscribe(&self, subject: &str) -> Result<Subscription> {
        self.subscribe_inner(subject, "").await
    }

    /// Like [`subscribe`](Self::subscribe) but in queue group `group`: each message goes to
    /// one member of the group.
    ///
    /// ```no_run
    /// # async fn demo(client: nexus_client::Client) -> nexus_client::Result<()> {
    /// // Each message goes to one of the subscribers in "resizers".
    /// let mut jobs = client.queue_subscribe("images.resize", "resizers").await?;
    /// let job = jobs.next_message().await;
    /// # Ok(()) }
    /// ```
    pub async fn queue_subscribe(&self, subject: &str, group: &str) -> Result<Subscription> {
        validate_queue_group(group)?;
        self.subscribe_inner(subject, group).await
    }

    pub(crate) async fn subscribe_inner(&self, subject: &str, group: &str) -> Result<Subscription> {
        let (tx, rx) = crate::inbox::inbox(self.shared().config.subscription_capacity);
        let (sid, dropped) = self.add_sub(subject, group, SubKind::Messages(tx)).await?;
        Ok(Subscription::new(
            self.clone(),
            sid,
            subject.to_owned(),
            rx,
            dropped,
        ))
    }

    /// Waits until everything queued before this call has been handed to the transport and
    /// processed by the gateway (a Ping/Pong round trip behind it). While disconnected it
    /// waits for the reconnect; it has no timeout of its own.
    ///
    /// ```no_run
    /// # async fn demo(client: nexus_client::Client) -> nexus_client::Result<()> {
    /// for i in 0..1000 {
    ///     client.publish("metrics.tick", i.to_string()).await?;
    /// }
    /// client.flush().await?; // the gateway has processed all 1000
    /// # Ok(()) }
    /// ```
    pub async fn flush(&self) -> Result<()> {
        let nonce = self.shared().next_id();
        let (tx, rx) = oneshot::channel();
        let ((), epoch) = self
            .register(|st| {
                st.pings.insert(nonce, tx);
            })
            .await;
        if let Err(e) = self
            .enqueue(Outbound::in_epoch(Kind::Ping(pb::Ping { nonce }), epoch))
            .await
        {
            self.shared().state.lock().pings.remove(&nonce);
            return Err(e);
        }
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(f)) => Err(f.into_error("", Duration::ZERO)),
            Err(_) => Err(Error::Closed),
        }
    }

    /// True while a session with the gateway is established.
    pub fn is_connected(&self) -> bool {
        self.shared().connected.load(Ordering::Acquire)
    }

    /// The gateway's Welcome of the current (or last) session. With discovery this is the
    /// gateway in use now (it changes when the client fails over).
    pub fn server_info(&self) -> Option<ServerInfo> {
        self.shared()
            .state
            .lock()
            .welcome
            .as_ref()
            .map(|w| ServerInfo {
                session_id: w.session_id.clone(),
                gateway_id: w.gateway_id.clone(),
                region: w.region.clone(),
                max_payload: w.max_payload,
                max_subscriptions: w.max_subscriptions,
                protocol: w.protocol,
            })
    }

    /// Closes gracefully, the way NATS clients drain: every subscription is unsubscribed
    /// without losing what the gateway already sent for it (buffered messages stay readable,
    /// then the subscription ends), services answer the requests they received, everything
    /// queued is sent and processed by the gateway, then the session ends. Bounded by the
    /// request timeout; later calls fail with [`Error::Closed`].
    ///
    /// ```no_run
    /// # async fn demo(client: nexus_client::Client) {
    /// client.publish("orders.created", "last one").await.unwrap();
    /// client.drain().await; // the publish above reaches the gateway first
    /// # }
    /// ```
    pub async fn drain(&self) {
        if !self.shared().closed.load(Ordering::Acquire) {
            let _ = tokio::time::timeout(self.request_timeout(), self.drain_in_flight()).await;
        }
        self.close().await;
    }

    async fn drain_in_flight(&self) {
        // Unsubscribe, but keep routing deliveries until the gateway confirmed it.
        let unsubs: Vec<Outbound> = {
            let mut st = self.shared().state.lock();
            let sids: Vec<u64> = st
                .subs
                .iter()
                .filter(|(_, s)| s.confirmed)
                .map(|(&sid, _)| sid)
                .collect();
            sids.into_iter()
                .filter_map(|sid| st.unsub_once(sid))
                .collect()
        };
        for o in unsubs {
            self.shared().send_ctl(o);
        }
        // The Pong comes after every Msg the gateway queued before it took the Unsubs.
        let _ = self.flush().await;
        // Each subscription now yields what it buffered, then ends.
        let subs = std::mem::take(&mut self.shared().state.lock().subs);
        drop(subs);
        let mut busy = self.shared().busy.subscribe();
        let _ = busy.wait_for(|n| *n == 0).await;
        let _ = self.flush().await;
    }

    /// Flushes (bounded by the request timeout), then ends the session. Pending operations
    /// fail with [`Error::Closed`], subscriptions end, later calls return `Error::Closed`.
    pub async fn close(&self) {
        if self.is_connected() && !self.shared().closed.load(Ordering::Acquire) {
            let _ = tokio::time::timeout(self.request_timeout(), self.flush()).await;
        }
        self.shared().closed.store(true, Ordering::Release);
        self.shared().shutdown.send_replace(true);
        let task = self.inner.task.lock().take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(normalize_addr("127.0.0.1:7422"), "http://127.0.0.1:7422");
        assert_eq!(normalize_addr("http://h:1"), "http://h:1");
        assert_eq!(normalize_addr("https://h:1"), "https://h:1");
    }

    #[test]
    fn millis_saturate() {
        assert_eq!(duration_ms(Duration::from_millis(1500)), 1500);
        assert_eq!(duration_ms(Duration::from_secs(u64::MAX)), u32::MAX);
    }
}
