//! [`Subscription`]: a stream of messages matching a subject pattern.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use futures::Stream;

use crate::client::Client;
use crate::error::Result;
use crate::inbox::InboxReceiver;
use crate::message::Message;

/// Messages delivered for one subscription, in order. Implements
/// [`futures::Stream`]`<Item = Message>`; ends when the client closes.
///
/// Deliveries are buffered in a bounded inbox
/// ([`subscription_capacity`](crate::ClientBuilder::subscription_capacity), default 8192).
/// If the application does not keep up and the buffer fills, the client stops reading from
/// the gateway (for *all* subscriptions of the session) until there is room again; HTTP/2
/// flow control propagates that backpressure to the gateway, which may then drop messages
/// for this subscriber and report SLOW_CONSUMER (counted by [`dropped`](Self::dropped)).
///
/// Dropping a `Subscription` unsubscribes.
pub struct Subscription {
    client: Client,
    sid: u64,
    subject: String,
    rx: InboxReceiver,
    dropped: Arc<AtomicU64>,
    active: bool,
}

impl Subscription {
    pub(crate) fn new(
        client: Client,
        sid: u64,
        subject: String,
        rx: InboxReceiver,
        dropped: Arc<AtomicU64>,
    ) -> Self {
        Subscription {
            client,
            sid,
            subject,
            rx,
            dropped,
            active: true,
        }
    }

    /// The next message, or `None` once the subscription ended.
    ///
    /// ```no_run
    /// # async fn demo(client: nexus_client::Client) -> nexus_client::Result<()> {
    /// use std::time::Duration;
    /// let mut sub = client.subscribe("orders.>").await?;
    /// match tokio::time::timeout(Duration::from_secs(1), sub.next_message()).await {
    ///     Ok(Some(msg)) => println!("{}", msg.subject),
    ///     Ok(None) => println!("the subscription ended"),
    ///     Err(_) => println!("nothing within a second"),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn next_message(&mut self) -> Option<Message> {
        std::future::poll_fn(|cx| self.rx.poll_recv(cx)).await
    }

    /// The next message if one is already buffered.
    pub fn try_next_message(&mut self) -> Option<Message> {
        self.rx.try_recv()
    }

    /// Stops the subscription. Messages already buffered are discarded.
    ///
    /// ```no_run
    /// # async fn demo(client: nexus_client::Client) -> nexus_client::Result<()> {
    /// let sub = client.subscribe("orders.>").await?;
    /// sub.unsubscribe().await?;
    /// # Ok(()) }
    /// ```
    pub async fn unsubscribe(mut self) -> Result<()> {
        self.active = false;
        self.client.shared().remove_sub(self.sid);
        Ok(())
    }

    /// How many times the gateway reported SLOW_CONSUMER for this subscription (i.e. it
    /// dropped messages because this subscriber did not keep up).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Messages buffered locally, not yet taken by the application.
    pub fn pending(&self) -> usize {
        self.rx.len()
    }

    /// The subscription id used on the wire.
    pub fn sid(&self) -> u64 {
        self.sid
    }

    /// The subject pattern.
    pub fn subject(&self) -> &str {
        &self.subject
    }
}

impl Stream for Subscription {
    type Item = Message;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if self.active {
            self.client.shared().remove_sub(self.sid);
        }
    }
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("sid", &self.sid)
            .field("subject", &self.subject)
            .finish()
    }
}
