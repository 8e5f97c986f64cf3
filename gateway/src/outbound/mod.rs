//! `Outbound`: a session's bounded queue of frames towards its adapter, and the response
//! stream that drains it into batches.
//!
//! The queue is bounded in bytes, not messages, by a semaphore whose permits are bytes: a
//! frame takes permits when queued and gives them back when it is handed to the transport.
//! That is what keeps a slow consumer from growing the gateway's memory without bound.
//!
//! A frame is encoded when it is queued, into the batch it will leave in: the queue is a
//! list of batches being filled, held as bytes (the way nats-server keeps a client's
//! outbound buffer), and the response stream takes a whole batch at a time. So a delivery
//! costs one encoding under the queue's lock and no hand-off of the frame itself: no
//! channel slot, no vector of frames, no second pass to encode them. A batch grows while
//! frames arrive faster than the transport takes them and is a single frame when the session
//! is idle (no added latency). A publishing session wakes the streams it delivered to once per
//! input batch, not per message ([`DeferredWakes`]). A frame whose payload is `WHOLE_FRAME_PAYLOAD` or larger is
//! queued as a value instead (its payload still shares the buffer it arrived in) and encoded
//! by the transport, so a large payload is copied once between receive and send, not twice
//! (`gateway/tests/no_copy.rs`).
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

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::BytesMut;
use futures::Stream;
use nexus_proto::hot_frames::MsgRef;
use nexus_proto::v1::{Batch, Frame, frame::Kind};
use parking_lot::Mutex;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::Status;

use crate::payload_encoding::{Receiver, ReceiverSlot};

/// Fixed per-frame overhead charged against the byte budget besides the payload.
pub const FRAME_OVERHEAD: u32 = 64;
/// Most frames coalesced into one outbound batch.
const MAX_BATCH_FRAMES: u32 = 512;
/// Most payload bytes coalesced into one outbound batch (one frame may exceed it alone).
const MAX_BATCH_BYTES: u32 = 512 * 1024;
/// Most control frames queued for one session; see the module docs.
pub const MAX_CONTROL_FRAMES: u32 = 65_536;
/// Control frames queued at which the session stops reading its input until its adapter has
/// read some of them ([`Outbound::control_room`]), so answering a client that reads never
/// reaches `MAX_CONTROL_FRAMES`.
pub const CONTROL_HIGH_WATER: u32 = MAX_CONTROL_FRAMES / 2;
/// Payloads from this size on are queued whole and encoded by the transport (module docs).
pub const WHOLE_FRAME_PAYLOAD: usize = 8 * 1024;
/// An empty queue keeps an encoding buffer up to this size for the next batch; a larger one
/// (left by a burst) is given back.
const KEPT_BUFFER: usize = 64 * 1024;

/// Why a frame could not be queued.
#[derive(Debug)]
pub enum EnqueueError {
    /// The byte budget is used up; the frame is handed back.
    Full(Frame),
    /// The session is closed.
    Closed,
}

/// Response streams to wake later. A session routing a batch of publishes collects the wakers
/// of the outbound streams it queued deliveries for ([`Outbound::try_send_msg`]) and wakes
/// each once when the batch is applied, or before it waits for anything, as nats-server
/// flushes the clients a read touched at the end of that read. Woken at each delivery, a
/// subscriber's writer ran (on the other worker thread) for a few messages at a time: one
/// write and one wake-up per handful of messages. Dropping it wakes what it holds, so no wake
/// is lost on an early return.
#[derive(Default)]
pub struct DeferredWakes(Vec<Waker>);

impl DeferredWakes {
    /// Wakes every stream collected so far.
    pub fn wake_all(&mut self) {
        for waker in self.0.drain(..) {
            waker.wake();
        }
    }
}

impl Drop for DeferredWakes {
    fn drop(&mut self) {
        self.wake_all();
    }
}

/// Why [`Outbound::try_send_msg`] did not queue a message.
#[derive(Debug, PartialEq, Eq)]
pub enum MsgUnqueued {
    /// The byte budget is used up.
    Full,
    /// The session is closed.
    Closed,
    /// Its payload is large enough to be queued whole: send it as a frame.
    AsFrame,
}

/// One batch being filled.
struct Filling {
    /// Encoded frames (their bytes are the next `len` bytes of [`Queue::encoded`]), or frames
    /// with large payloads queued whole.
    body: Body,
    frames: u32,
    /// Bytes counted towards `MAX_BATCH_BYTES`.
    bytes: u32,
    /// Budget permits to give back when the transport takes the batch.
    permits: usize,
    /// Control frames in the batch.
    control: u32,
}

enum Body {
    /// The newest batch: its frames are the first `len` bytes of [`Queue::encoded`].
    Encoded {
        len: usize,
    },
    /// An older batch, its bytes split off when the next batch began ([`Queue::seal`]).
    Sealed(bytes::Bytes),
    Whole(Vec<Frame>),
}

impl Filling {
    fn count(&mut self, bytes: u32, permits: u32) {
        self.frames += 1;
        self.bytes = self.bytes.saturating_add(bytes);
        self.permits += permits as usize;
        self.control += u32::from(permits == 0);
    }

    fn has_room(&self, whole: bool) -> bool {
        let same_kind = match self.body {
            Body::Whole(_) => whole,
            Body::Encoded { .. } => !whole,
            Body::Sealed(_) => false,
        };
        same_kind && self.frames < MAX_BATCH_FRAMES && self.bytes < MAX_BATCH_BYTES
    }
}

/// What the senders and the response stream share, behind one lock.
#[derive(Default)]
struct Queue {
    /// Oldest first.
    batches: VecDeque<Filling>,
    /// The encoded frames of the newest batch, when it is `Body::Encoded`. Earlier batches
    /// are sealed off it as the next one begins, so that growing it copies one batch at
    /// most, never the whole queue: a queue that grew to megabytes in one buffer, and was
    /// reallocated (and copied) at each doubling, left the allocator holding several times
    /// the live data.
    encoded: BytesMut,
    /// The response stream, when it waits for frames.
    waker: Option<Waker>,
    /// The `Outbound` is gone: the stream ends once the queue is empty.
    senders_gone: bool,
    /// The stream is gone: nothing can be sent any more.
    stream_gone: bool,
    /// Bytes of the last encoded batch taken: a new batch reserves that much at once, rather
    /// than growing (and copying) its buffer by doubling.
    last_len: usize,
}

/// A batch taken from the queue, with what it gives back.
struct Taken {
    batch: Batch,
    frames: u32,
    permits: usize,
    control: u32,
}

impl Queue {
    /// Makes room for a batch like the last one when `encoded` starts a new one.
    fn reserve(&mut self) {
        if self.encoded.is_empty() {
            self.encoded
                .reserve(self.last_len.min(MAX_BATCH_BYTES as usize));
        }
    }

    /// Appends `frame` to the newest batch, or to a new one when that is full or of the
    /// other kind.
    fn push(&mut self, frame: Frame, whole: bool, bytes: u32, permits: u32) {
        if whole {
            let batch = self.newest(true);
            if let Body::Whole(frames) = &mut batch.body {
                frames.push(frame);
            }
            batch.count(bytes, permits);
        } else {
            self.reserve();
            let before = self.encoded.len();
            Batch::encode_frame(&frame, &mut self.encoded);
            self.add_encoded(self.encoded.len() - before, bytes, permits);
        }
    }

    /// Encodes a `Msg` into the newest batch of encoded frames.
    fn push_msg(&mut self, msg: &MsgRef<'_>, bytes: u32, permits: u32) {
        self.reserve();
        let before = self.encoded.len();
        Batch::encode_msg(msg, &mut self.encoded);
        self.add_encoded(self.encoded.len() - before, bytes, permits);
    }

    /// Counts a frame just encoded at the end of `encoded` (`len` bytes) in the newest batch.
    fn add_encoded(&mut self, len: usize, bytes: u32, permits: u32) {
        if !self.batches.back().is_some_and(|b| b.has_room(false)) {
            self.seal(len);
        }
        let batch = self.newest(false);
        if let Body::Encoded { len: total } = &mut batch.body {
            *total += len;
        }
        batch.count(bytes, permits);
    }

    /// Before a new batch begins: splits the encoded bytes of the newest batch, if it is
    /// `Encoded`, off `encoded`, all but the `keep` bytes just encoded for the new one.
    fn seal(&mut self, keep: usize) {
        if let Some(Filling {
            body: body @ Body::Encoded { .. },
            ..
        }) = self.batches.back_mut()
        {
            let len = self.encoded.len() - keep;
            *body = Body::Sealed(self.encoded.split_to(len).freeze());
            // A new encoded batch gets a buffer the size of the one just sealed now, copying
            // only the `keep` bytes, instead of growing by doubling from what was left of the
            // old allocation and copying itself at every step (at saturation that was ~300
            // instructions per message in `reserve`). When nothing was kept (a batch of
            // whole frames begins), `reserve` sizes the buffer when an encoded frame comes.
            self.last_len = len;
            if keep > 0 {
                self.encoded.reserve(len.min(MAX_BATCH_BYTES as usize));
            }
        }
    }

    /// The batch to add a frame to: the newest, or a new one when that is full or of the
    /// other kind.
    fn newest(&mut self, whole: bool) -> &mut Filling {
        let fits = self.batches.back().is_some_and(|b| b.has_room(whole));
        if !fits {
            if whole {
                self.seal(0);
            }
            self.batches.push_back(Filling {
                body: if whole {
                    Body::Whole(Vec::new())
                } else {
                    Body::Encoded { len: 0 }
                },
                frames: 0,
                bytes: 0,
                permits: 0,
                control: 0,
            });
        }
        let Some(batch) = self.batches.back_mut() else {
            unreachable!("a batch was just added");
        };
        batch
    }

    fn take(&mut self) -> Option<Taken> {
        let filled = self.batches.pop_front()?;
        let batch = match filled.body {
            Body::Sealed(encoded) => Batch {
                frames: Vec::new(),
                encoded,
            },
            Body::Encoded { len } => {
                self.last_len = len;
                let encoded = self.encoded.split_to(len).freeze();
                if self.encoded.is_empty() && self.encoded.capacity() > KEPT_BUFFER {
                    self.encoded = BytesMut::new();
                }
                Batch {
                    frames: Vec::new(),
                    encoded,
                }
            }
            Body::Whole(frames) => Batch::of(frames),
        };
        Some(Taken {
            batch,
            frames: filled.frames,
            permits: filled.permits,
            control: filled.control,
        })
    }
}

/// The payload a frame carries, for choosing how to queue it.
fn payload_len(frame: &Frame) -> usize {
    match &frame.kind {
        Some(Kind::Msg(m)) => m.payload.len(),
        Some(Kind::Reply(r)) => r.payload.len(),
        Some(Kind::StreamData(d)) => d.payload.len(),
        _ => 0,
    }
}

/// The sending half, shared by every task that delivers to this session.
pub struct Outbound {
    queue: Arc<Mutex<Queue>>,
    budget: Arc<Semaphore>,
    max_bytes: u32,
    queued_frames: Arc<AtomicU32>,
    queued_control: Arc<AtomicU32>,
    closed: CancellationToken,
    close_status: Arc<Mutex<Option<Status>>>,
    flush_on_close: Arc<AtomicBool>,
    /// Notified whenever the response stream takes frames from the queue.
    drained: Arc<Notify>,
    /// The codecs the session accepts, set at Hello ([`Outbound::set_receiver`]).
    receiver: Arc<ReceiverSlot>,
}

impl Outbound {
    /// Creates the queue and the response stream that drains it.
    pub fn new(max_bytes: u32) -> (Self, OutboundStream) {
        let queue = Arc::new(Mutex::new(Queue::default()));
        let budget = Arc::new(Semaphore::new(max_bytes as usize));
        let queued_frames = Arc::new(AtomicU32::new(0));
        let queued_control = Arc::new(AtomicU32::new(0));
        let closed = CancellationToken::new();
        let close_status = Arc::new(Mutex::new(None));
        let flush_on_close = Arc::new(AtomicBool::new(false));
        let drained = Arc::new(Notify::new());
        let receiver = Arc::new(ReceiverSlot::new());
        let stream = OutboundStream {
            queue: queue.clone(),
            drained: drained.clone(),
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
                queue,
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

    /// Says which payload codecs the session decodes itself; from then on a frame queued for
    /// it with any other encoded payload is decoded first ([`crate::payload_encoding`]).
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

    /// Queues a `Msg` encoded from borrowed fields if the budget has room, without waiting
    /// and without building the frame: the delivery path for a publish. The caller checked
    /// that its payload is not compressed (a session may need it decoded, which takes the
    /// frame); one of `WHOLE_FRAME_PAYLOAD` or more is refused with `AsFrame`. The response
    /// stream, when it waits, is not woken here: its waker goes into `wakes`.
    pub fn try_send_msg(
        &self,
        msg: &MsgRef<'_>,
        cost: u32,
        wakes: &mut DeferredWakes,
    ) -> Result<(), MsgUnqueued> {
        if msg.payload.len() >= WHOLE_FRAME_PAYLOAD {
            return Err(MsgUnqueued::AsFrame);
        }
        if self.closed.is_cancelled() {
            return Err(MsgUnqueued::Closed);
        }
        match self.budget.try_acquire_many(cost) {
            Ok(permit) => permit.forget(),
            Err(tokio::sync::TryAcquireError::NoPermits) => return Err(MsgUnqueued::Full),
            Err(tokio::sync::TryAcquireError::Closed) => return Err(MsgUnqueued::Closed),
        }
        match self.enqueue_quietly(|queue| queue.push_msg(msg, cost.max(FRAME_OVERHEAD), cost)) {
            None => Err(MsgUnqueued::Closed),
            Some(waker) => {
                wakes.0.extend(waker);
                Ok(())
            }
        }
    }

    /// Counts a frame and appends it with `push` under the queue's lock, then wakes the
    /// response stream if it waits. False (nothing queued) when the stream is gone.
    fn enqueue(&self, push: impl FnOnce(&mut Queue)) -> bool {
        match self.enqueue_quietly(push) {
            None => false,
            Some(waker) => {
                if let Some(waker) = waker {
                    waker.wake();
                }
                true
            }
        }
    }

    /// [`Outbound::enqueue`] without the wake: the response stream's waker, when it waits
    /// (`Some(None)` when it does not); `None` (nothing queued) when the stream is gone.
    fn enqueue_quietly(&self, push: impl FnOnce(&mut Queue)) -> Option<Option<Waker>> {
        // Counted before the stream can see the frame, which subtracts it when taken.
        self.queued_frames.fetch_add(1, Ordering::Relaxed);
        let mut queue = self.queue.lock();
        if queue.stream_gone {
            drop(queue);
            self.queued_frames.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        push(&mut queue);
        Some(queue.waker.take())
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

    /// Encodes `frame` into the queue; `cost` budget permits were taken for it (0 for a
    /// control frame, already counted in `queued_control`).
    fn push(&self, mut frame: Frame, cost: u32) -> Result<(), EnqueueError> {
        if let Some(receiver) = self.receiver.get()
            && !receiver.prepare(&mut frame)
        {
            // Its payload could not be decoded for this session (counted and logged by
            // `prepare`): not delivered, and its place in the queue is given back.
            if cost == 0 {
                self.queued_control.fetch_sub(1, Ordering::Relaxed);
            } else {
                self.budget.add_permits(cost as usize);
            }
            return Ok(());
        }
        let whole = payload_len(&frame) >= WHOLE_FRAME_PAYLOAD;
        if !self.enqueue(|queue| queue.push(frame, whole, cost.max(FRAME_OVERHEAD), cost)) {
            return Err(EnqueueError::Closed);
        }
        Ok(())
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

impl Drop for Outbound {
    fn drop(&mut self) {
        let waker = {
            let mut queue = self.queue.lock();
            queue.senders_gone = true;
            queue.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// The gRPC response stream of a session: hands the queue's batches to the transport.
pub struct OutboundStream {
    queue: Arc<Mutex<Queue>>,
    budget: Arc<Semaphore>,
    queued_frames: Arc<AtomicU32>,
    queued_control: Arc<AtomicU32>,
    closed: Pin<Box<WaitForCancellationFutureOwned>>,
    close_status: Arc<Mutex<Option<Status>>>,
    flush_on_close: Arc<AtomicBool>,
    finished: bool,
    drained: Arc<Notify>,
}

impl OutboundStream {
    /// Takes the oldest batch, if any, and gives back what its frames held; `Err(())` when the
    /// queue is empty and nothing will be queued any more. Without a batch, registers `cx` to
    /// be woken by the next frame.
    fn take(&mut self, cx: &mut Context<'_>) -> Result<Option<Batch>, ()> {
        let taken = {
            let mut queue = self.queue.lock();
            match queue.take() {
                Some(taken) => taken,
                None if queue.senders_gone => return Err(()),
                None => {
                    if !queue
                        .waker
                        .as_ref()
                        .is_some_and(|w| w.will_wake(cx.waker()))
                    {
                        queue.waker = Some(cx.waker().clone());
                    }
                    return Ok(None);
                }
            }
        };
        self.queued_frames
            .fetch_sub(taken.frames, Ordering::Relaxed);
        self.queued_control
            .fetch_sub(taken.control, Ordering::Relaxed);
        // The frames now belong to the transport, which applies HTTP/2 flow control; giving
        // the budget back here keeps at most one batch per session outside the bound.
        self.budget.add_permits(taken.permits);
        self.drained.notify_one();
        Ok(Some(taken.batch))
    }
}

impl Drop for OutboundStream {
    fn drop(&mut self) {
        self.queue.lock().stream_gone = true;
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
            if this.flush_on_close.load(Ordering::Relaxed)
                && let Ok(Some(batch)) = this.take(cx)
            {
                return Poll::Ready(Some(Ok(batch)));
            }
            this.finished = true;
            return Poll::Ready(this.close_status.lock().take().map(Err));
        }
        match this.take(cx) {
            Ok(Some(batch)) => Poll::Ready(Some(Ok(batch))),
            Ok(None) => Poll::Pending,
            Err(()) => {
                this.finished = true;
                Poll::Ready(None)
            }
        }
    }
}

#[cfg(test)]
mod tests;
