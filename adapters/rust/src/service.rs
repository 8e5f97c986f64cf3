//! [`Service`]: a request handler running on a subscription (see [`Client::serve`]).

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use bytes::Bytes;
use futures::FutureExt as _;
use tokio::sync::{Semaphore, oneshot};
use tokio::task::JoinHandle;

use crate::batch::Outbound;
use crate::client::{Client, reply_frame};
use crate::error::ServiceError;
use crate::message::Message;
use crate::subscription::Subscription;

/// A running request handler. Stops when [`stop`](Self::stop)ped or dropped.
pub struct Service {
    subject: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Service {
    pub(crate) fn start<F, Fut>(client: Client, mut sub: Subscription, handler: F) -> Service
    where
        F: Fn(Message) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Bytes, ServiceError>> + Send + 'static,
    {
        let subject = sub.subject().to_owned();
        let (stop_tx, mut stop_rx) = oneshot::channel::<()>();
        let max = client.shared().config.max_concurrent_handlers.min(1 << 20);
        let handler = Arc::new(handler);
        let busy = Busy::enter(&client);
        let task = tokio::spawn(async move {
            let _busy = busy;
            let permits = Arc::new(Semaphore::new(max));
            loop {
                let msg = tokio::select! {
                    _ = &mut stop_rx => break,
                    m = sub.next_message() => match m {
                        Some(m) => m,
                        None => break,
                    },
                };
                // Bounded concurrency: waiting here leaves messages in the subscription
                // buffer, which eventually backpressures the gateway.
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    break;
                };
                let handler = handler.clone();
                let client = client.clone();
                tokio::spawn(async move {
                    let reply_to = msg.reply_to.clone();
                    let traceparent = msg.traceparent().map(str::to_owned);
                    let subject = msg.subject.clone();
                    let result = crate::trace::in_request(
                        traceparent.clone(),
                        &subject,
                        AssertUnwindSafe(handler(msg)).catch_unwind(),
                    )
                    .await;
                    if let Some(reply_to) = reply_to {
                        let result = match result {
                            Ok(r) => r,
                            Err(_) => Err(ServiceError::new("handler panicked")),
                        };
                        let frame = reply_frame(traceparent.as_deref(), reply_to, result);
                        let _ = client.enqueue(Outbound::any(frame)).await;
                    }
                    drop(permit);
                });
            }
            let _ = sub.unsubscribe().await;
            // Let in-flight handlers finish and send their replies.
            let _ = permits.acquire_many(max as u32).await;
        });
        Service {
            subject,
            stop: Some(stop_tx),
            task: Some(task),
        }
    }

    /// The subject served.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// Unsubscribes and waits for running handlers to finish.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

/// Counts a running service loop in [`Shared::busy`](crate::connection::Shared) until dropped,
/// so that [`Client::drain`] can wait for handlers to answer.
struct Busy(Client);

impl Busy {
    fn enter(client: &Client) -> Busy {
        client.shared().busy.send_modify(|n| *n += 1);
        Busy(client.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0
            .shared()
            .busy
            .send_modify(|n| *n = n.saturating_sub(1));
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        // Dropping the sender also signals the task to stop.
        self.stop.take();
    }
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("subject", &self.subject)
            .finish()
    }
}
