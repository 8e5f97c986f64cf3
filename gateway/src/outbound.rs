//! `Outbound`: a session's bounded queue of frames towards its adapter, and the response
//! stream that drains it into batches.
//!
//! The queue is bounded in bytes, not messages, by a semaphore whose permits are bytes: a
//! frame takes permits when queued and gives them back when it is handed to the transport.
//! That is what keeps a slow consumer from growing the gateway's memory without bound. The
//! draining side coalesces every frame that is ready into one `Batch`, so batches grow under
//! load and stay single-frame (no added latency) when idle.
//!
//! Control frames (acks, errors, pongs, stream credit and close) are never subject to the
//! slow-consumer policy, since losing one would break the protocol; they bypass the byte
//! budget, but a session may have at most `MAX_CONTROL_FRAMES` of them queued, after which it
//! is closed as a slow consumer. So every kind of frame is bounded. The session's own answers
//! (acks, pongs, errors) never get there while the adapter reads: past `CONTROL_HIGH_WATER`
//! the session stops reading input until the adapter has read some (`control_room`), and
//! only an adapter that reads nothing for `max_wait_ms` is cut off.
//!
//! Returning the frame by value in `EnqueueError::Full` lets the caller retry without
//! cloning or boxing on the hot path, hence the allowed large error type.
#![allow(clippy::result_large_err)]

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use nexus_proto::v1::{Batch, Frame};
use parking_lot::Mutex;
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::Status;

use crate::payload_encoding::{Receiver, ReceiverSlot};

/// Fixed per-frame overhead charged against the byte budget besides the payload.
pub const FRAME_OVERHEAD: u32 = 64;
/// Most frames coalesced into one outbound batch.
const MAX_BATCH_FRAMES: usize = 512;
/// Most payload bytes coalesced into one outbound batch (one frame may exceed it alone).
const MAX_BATCH_BYTES: u32 = 512 * 1024;
/// Most control frames queued for one session; see the module docs.
pub const MAX_CONTROL_FRAMES: u32 = 65_536;
/// Control frames queued at which the session stops reading its input until its adapter has
/// read some of them ([`Outbound::control_room`]), so answering a client that reads never
/// reaches `MAX_CONTROL_FRAMES`.
pub const CONTROL_HIGH_WATER: u32 = MAX_CONTROL_FRAMES / 2;

struct Queued {
    frame: Frame,
    /// Budget permits taken; 0 for a control frame.
    cost: u32,
}

/// Why a frame could not be queued.
#[derive(Debug)]
pub enum EnqueueError {
    /// The byte budget is used up; the frame is handed back.
    Full(Frame),
    /// The session is closed.
    Closed,
}

/// The sending half, shared by every task that delivers to this session.
pub struct Outbound {
    tx: mpsc::UnboundedSender<Queued>,
    budget: Arc<Semaphore>,
    max_bytes: u32,
    queued_frames: Arc<AtomicU32>,
    queued_control: Arc<AtomicU32>,
    closed: CancellationToken,
    close_status: Arc<Mutex<Option<Status>>>,
    flush_on_close: Arc<std::sync::atomic::AtomicBool>,
    /// Notified whenever the response stream takes frames from the queue.
    drained: Arc<Notify>,
    /// The codecs the session accepts, set at Hello ([`Outbound::set_receiver`]).
    receiver: Arc<ReceiverSlot>,
}

impl Outbound {
    /// Creates the queue and the response stream that drains it.
    pub fn new(max_bytes: u32) -> (Self, OutboundStream) {
        let (tx, rx) = mpsc::unbounded_channel();
        let budget = Arc::new(Semaphore::new(max_bytes as usize));
        let queued_frames = Arc::new(AtomicU32::new(0));
        let queued_control = Arc::new(AtomicU32::new(0));
        let closed = CancellationToken::new();
        let close_status = Arc::new(Mutex::new(None));
        let flush_on_close = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let drained = Arc::new(Notify::new());
        let receiver = Arc::new(ReceiverSlot::new());
        let stream = OutboundStream {
            receiver: receiver.clone(),
            drained: drained.clone(),
            rx,
            budget: budget.clone(),
            queued_frames: queued_frames.clone(),
            queued_control: queued_control.clone(),
            closed: Box::pin(closed.clone().cancelled_owned()),
            close_status: close_status.clone(),
            flush_on_close: flush_on_close.clone(),
            finished: false,
        };
        (
            Self {
                tx,
                budget,
                max_bytes,
                queued_frames,
                queued_control,
                closed,
                close_status,
                flush_on_close,
                drained,
                receiver,
            },
            stream,
        )
    }

    /// Says which payload codecs the session decodes itself; from then on its outbound
    /// stream decodes any other encoded payload before sending it ([`crate::payload_encoding`]).
    /// Once per session; later calls are ignored.
    pub fn set_receiver(&self, receiver: Receiver) {
        let _ = self.receiver.set(receiver);
    }

    /// Budget cost of a frame carrying `payload_len` bytes of payload (plus headers and
    /// subject, when the caller includes them).
    pub fn cost(&self, payload_len: usize) -> u32 {
        (payload_len as u64 + FRAME_OVERHEAD as u64).min(self.max_bytes as u64) as u32
    }

    /// Queues a control frame outside the byte budget. Returns false (and closes the
    /// session as a slow consumer) when the session already has `MAX_CONTROL_FRAMES`
    /// control frames waiting, i.e. it has stopped reading.
    pub fn send_control(&self, frame: Frame) -> bool {
        if self.closed.is_cancelled() {
            return false;
        }
        let queued = self.queued_control.fetch_add(1, Ordering::Relaxed);
        if queued >= MAX_CONTROL_FRAMES {
            self.queued_control.fetch_sub(1, Ordering::Relaxed);
            self.close(Some(Status::resource_exhausted(format!(
                "slow consumer: {MAX_CONTROL_FRAMES} acks, errors and stream control frames queued and unread"
            ))));
            return false;
        }
        if self.push(frame, 0).is_err() {
            self.queued_control.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Control frames queued and not yet handed to the transport.
    pub fn control_queued(&self) -> u32 {
        self.queued_control.load(Ordering::Relaxed)
    }

    /// Waits while `CONTROL_HIGH_WATER` or more control frames are queued, as long as the
    /// adapter keeps reading: returns false (having closed the session as a slow consumer)
    /// only when nothing was taken from the queue for `max_wait`, and at once if the session
    /// is closed.
    pub async fn control_room(&self, max_wait: Duration) -> bool {
        loop {
            let drained = self.drained.notified();
            if self.closed.is_cancelled() {
                return false;
            }
            let queued = self.queued_control.load(Ordering::Relaxed);
            if queued < CONTROL_HIGH_WATER {
                return true;
            }
            tokio::select! {
                _ = drained => {}
                _ = self.closed.cancelled() => return false,
                _ = tokio::time::sleep(max_wait) => {
                    self.close(Some(Status::resource_exhausted(format!(
                        "slow consumer: {queued} acks, errors and other control frames answering this session were queued and none was read for {} ms",
                        max_wait.as_millis()
                    ))));
                    return false;
                }
            }
        }
    }

    /// Frames queued and not yet handed to the transport; the balancer adds it to a member's
    /// load so a member that reads slowly gets less work.
    pub fn depth(&self) -> u32 {
        self.queued_frames.load(Ordering::Relaxed)
    }

    /// Queues `frame` if the budget has room, without waiting.
    pub fn try_send(&self, frame: Frame, cost: u32) -> Result<(), EnqueueError> {
        if self.closed.is_cancelled() {
            return Err(EnqueueError::Closed);
        }
        match self.budget.try_acquire_many(cost) {
            Ok(permit) => {
                permit.forget();
                self.push(frame, cost)
            }
            Err(tokio::sync::TryAcquireError::NoPermits) => Err(EnqueueError::Full(frame)),
            Err(tokio::sync::TryAcquireError::Closed) => Err(EnqueueError::Closed),
        }
    }

    /// Queues `frame`, waiting up to `max_wait` for budget. Returns the frame back on timeout.
    pub async fn send_wait(
        &self,
        frame: Frame,
        cost: u32,
        max_wait: Duration,
    ) -> Result<(), EnqueueError> {
        let acquire = self.budget.acquire_many(cost);
        tokio::select! {
            permit = acquire => match permit {
                Ok(permit) => {
                    permit.forget();
                    self.push(frame, cost)
                }
                Err(_) => Err(EnqueueError::Closed),
            },
            _ = self.closed.cancelled() => Err(EnqueueError::Closed),
            _ = tokio::time::sleep(max_wait) => Err(EnqueueError::Full(frame)),
        }
    }

    fn push(&self, frame: Frame, cost: u32) -> Result<(), EnqueueError> {
        self.queued_frames.fetch_add(1, Ordering::Relaxed);
        self.tx.send(Queued { frame, cost }).map_err(|_| {
            self.queued_frames.fetch_sub(1, Ordering::Relaxed);
            EnqueueError::Closed
        })
    }

    /// Ends the session after the frames already queued have been sent (used at shutdown,
    /// so the final UNAVAILABLE error frame reaches the adapter).
    pub fn close_after_flush(&self, status: Option<Status>) {
        self.flush_on_close.store(true, Ordering::Relaxed);
        self.close(status);
    }

    /// Ends the session: the response stream yields `status` (if given) and then ends.
    /// Frames still queued are discarded. Idempotent; the first status wins.
    pub fn close(&self, status: Option<Status>) {
        {
            let mut slot = self.close_status.lock();
            if slot.is_none() && !self.closed.is_cancelled() {
                *slot = status;
            }
        }
        self.closed.cancel();
        self.budget.close();
    }

    pub fn is_closed(&self) -> bool {
        self.closed.is_cancelled()
    }

    /// Resolves when the session has been closed.
    pub fn closed(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.closed.cancelled()
    }
}

/// The gRPC response stream of a session: drains the queue into batches.
pub struct OutboundStream {
    rx: mpsc::UnboundedReceiver<Queued>,
    budget: Arc<Semaphore>,
    queued_frames: Arc<AtomicU32>,
    queued_control: Arc<AtomicU32>,
    closed: Pin<Box<WaitForCancellationFutureOwned>>,
    close_status: Arc<Mutex<Option<Status>>>,
    flush_on_close: Arc<std::sync::atomic::AtomicBool>,
    finished: bool,
    drained: Arc<Notify>,
    receiver: Arc<ReceiverSlot>,
}

impl OutboundStream {
    /// Takes whatever is queued, up to the batch limits, without waiting.
    fn collect(&mut self, cx: &mut Context<'_>) -> (Vec<Frame>, bool) {
        // The batch is handed to tonic by value, so its buffer cannot be reused; size it
        // from the queue depth instead of growing it 1, 2, 4, … 512 (about ten reallocations
        // and copies per full batch). The depth may be stale; it is only a hint.
        let hint = (self.queued_frames.load(Ordering::Relaxed) as usize).clamp(1, MAX_BATCH_FRAMES);
        let mut frames = Vec::with_capacity(hint);
        let mut bytes = 0u32;
        let mut released = 0usize;
        let mut control = 0u32;
        let mut ended = false;
        let mut taken = 0u32;
        let receiver = self.receiver.clone();
        let receiver = receiver.get();
        while frames.len() < MAX_BATCH_FRAMES && bytes < MAX_BATCH_BYTES {
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(mut q)) => {
                    taken += 1;
                    if q.cost == 0 {
                        control += 1;
                    }
                    bytes = bytes.saturating_add(q.cost.max(FRAME_OVERHEAD));
                    released += q.cost as usize;
                    if let Some(r) = receiver
                        && !r.prepare(&mut q.frame)
                    {
                        continue;
                    }
                    frames.push(q.frame);
                }
                Poll::Ready(None) => {
                    ended = true;
                    break;
                }
                Poll::Pending => break,
            }
        }
        if taken > 0 {
            self.queued_frames.fetch_sub(taken, Ordering::Relaxed);
            self.queued_control.fetch_sub(control, Ordering::Relaxed);
            // The frames now belong to the transport, which applies HTTP/2 flow control;
            // giving the budget back here keeps at most one batch per session outside
            // the bound.
            self.budget.add_permits(released);
            self.drained.notify_one();
            if frames.is_empty() && !ended {
                // Every frame taken was undeliverable and the queue may hold more: poll again
                // rather than wait for a wake-up that was not registered.
                cx.waker().wake_by_ref();
            }
        }
        (frames, ended)
    }
}

impl Stream for OutboundStream {
    type Item = Result<Batch, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.finished {
            return Poll::Ready(None);
        }
        if this.closed.as_mut().poll(cx).is_ready() {
            if this.flush_on_close.load(Ordering::Relaxed) {
                let (frames, _) = this.collect(cx);
                if !frames.is_empty() {
                    return Poll::Ready(Some(Ok(Batch { frames })));
                }
            }
            this.finished = true;
            return Poll::Ready(this.close_status.lock().take().map(Err));
        }
        let (frames, ended) = this.collect(cx);
        if frames.is_empty() {
            if ended {
                this.finished = true;
                return Poll::Ready(None);
            }
            return Poll::Pending;
        }
        Poll::Ready(Some(Ok(Batch { frames })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use nexus_proto::v1::{Ping, frame::Kind};

    fn ping(n: u64) -> Frame {
        Frame {
            kind: Some(Kind::Ping(Ping { nonce: n })),
        }
    }

    #[tokio::test]
    async fn coalesces_ready_frames_and_bounds_bytes() {
        let (out, mut stream) = Outbound::new(1000);
        for i in 0..10 {
            out.try_send(ping(i), 100).unwrap();
        }
        assert!(matches!(
            out.try_send(ping(99), 100),
            Err(EnqueueError::Full(_))
        ));
        assert_eq!(out.depth(), 10);
        let batch = stream.next().await.unwrap().unwrap();
        assert_eq!(batch.frames.len(), 10);
        assert_eq!(out.depth(), 0);
        out.try_send(ping(11), 1000).unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn send_wait_times_out_then_succeeds_after_drain() {
        let (out, mut stream) = Outbound::new(100);
        out.try_send(ping(1), 100).unwrap();
        let r = out.send_wait(ping(2), 100, Duration::from_millis(50)).await;
        assert!(matches!(r, Err(EnqueueError::Full(_))));
        stream.next().await.unwrap().unwrap();
        out.send_wait(ping(3), 100, Duration::from_millis(50))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn control_frames_bypass_the_budget_but_are_capped() {
        let (out, mut stream) = Outbound::new(100);
        out.try_send(ping(0), 100).unwrap();
        assert!(out.send_control(ping(1)));
        let batch = stream.next().await.unwrap().unwrap();
        assert_eq!(batch.frames.len(), 2);
        for i in 0..MAX_CONTROL_FRAMES {
            assert!(out.send_control(ping(i as u64)));
        }
        assert!(
            !out.send_control(ping(0)),
            "one past the cap closes the session"
        );
        assert!(out.is_closed());
        let err = stream.next().await.unwrap().unwrap_err();
        assert!(err.message().contains("slow consumer"), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn control_room_waits_while_the_adapter_reads_and_cuts_one_that_does_not() {
        let (out, mut stream) = Outbound::new(100);
        for i in 0..CONTROL_HIGH_WATER {
            assert!(out.send_control(ping(i as u64)));
        }
        // The adapter reads: room comes back, the session goes on.
        let reader = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            stream.next().await.unwrap().unwrap();
            stream
        });
        assert!(out.control_room(Duration::from_secs(2)).await);
        assert!(out.control_queued() < CONTROL_HIGH_WATER);
        let _stream = reader.await.unwrap();
        // It stops reading: cut off after max_wait without progress.
        while out.control_queued() < CONTROL_HIGH_WATER {
            assert!(out.send_control(ping(0)));
        }
        assert!(!out.control_room(Duration::from_secs(2)).await);
        assert!(out.is_closed());
    }

    #[tokio::test]
    async fn close_after_flush_delivers_queued_frames_first() {
        let (out, mut stream) = Outbound::new(100);
        assert!(out.send_control(ping(7)));
        out.close_after_flush(Some(Status::unavailable("bye")));
        let batch = stream.next().await.unwrap().unwrap();
        assert_eq!(batch.frames.len(), 1);
        assert_eq!(stream.next().await.unwrap().unwrap_err().message(), "bye");
        assert!(stream.next().await.is_none());
    }

    #[tokio::test]
    async fn close_yields_status_then_ends() {
        let (out, mut stream) = Outbound::new(100);
        out.try_send(ping(1), 10).unwrap();
        out.close(Some(Status::resource_exhausted("slow consumer")));
        let err = stream.next().await.unwrap().unwrap_err();
        assert_eq!(err.message(), "slow consumer");
        assert!(stream.next().await.is_none());
        assert!(matches!(
            out.try_send(ping(2), 10),
            Err(EnqueueError::Closed)
        ));
    }
}
