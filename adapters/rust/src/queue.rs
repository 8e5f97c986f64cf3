//! The outbound queue: where API calls leave frames for the connection's writer.
//!
//! A plain publish is encoded straight into the queue, under its lock, at the end of the
//! tail *chunk*: a buffer of `Batch.frames` records written back to back, which fills up to
//! one batch's limits. The writer takes what is queued and, when that is one chunk, sends
//! the chunk itself as the batch's bytes: a publish is written once between the
//! application's call and the socket. Every other frame (requests, acked publishes,
//! subscribes, replies, stream frames, and publishes whose encoding depends on the session:
//! large or compressed ones) is queued as a frame with its session epoch, in order with the
//! chunks around it.
//!
//! The queue is bounded in frames (`ClientBuilder::outbound_capacity`) and in bytes
//! (`ClientBuilder::outbound_max_bytes`, as encoded before compression): when either is
//! reached, publishers wait for the writer to take some (a single frame larger than the byte
//! bound still goes, alone). The writer is woken when the queue goes from
//! empty to non-empty, so under load once per batch rather than once per frame.
//!
//! [`Pending`] is the queue's state, without locks or wakes, tested on its own;
//! [`OutboundQueue`] wraps it in a `parking_lot` mutex (never held across an `.await`, nor
//! while a frame is compressed or encoded; a publish's encoding is a copy of its fields) and
//! two [`Notify`]s. It replaced a bounded `mpsc` channel of one item per frame: its
//! semaphore, list and wakes, with the copy of every early-encoded publish from its own buffer
//! into the batch, cost ~10 % of a publishing client's CPU (docs/benchmarks.md, round 7).

use std::collections::VecDeque;

use bytes::BytesMut;
use nexus_proto::hot_frames::PubRef;
use nexus_proto::v1 as pb;
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::batch::{BatchLimits, Outbound};
use crate::error::{Error, Result};

/// The smallest buffer a new chunk starts with.
const MIN_CHUNK: usize = 1024;

/// One entry of the queue.
#[derive(Debug)]
pub(crate) enum Item {
    /// Publishes encoded as `Batch.frames` records, for any session.
    Chunk { bytes: BytesMut, frames: usize },
    /// A frame the writer encodes (and may compress) for the session it goes out in, with
    /// its encoded length as it stands (before compression), counted once when queued.
    Frame { o: Outbound, len: usize },
}

/// The queue's state: items in order, and how many frames they hold.
#[derive(Debug)]
pub(crate) struct Pending {
    items: VecDeque<Item>,
    frames: usize,
    /// Encoded bytes queued (a frame's as it stands, before compression).
    bytes: usize,
    limits: BatchLimits,
    /// Bytes of the chunk taken last: a new chunk reserves twice that at once, so that under
    /// load a chunk is rarely outgrown (when it is, the next one starts, twice as large).
    last_chunk: usize,
}

impl Pending {
    pub(crate) fn new(limits: BatchLimits) -> Self {
        Pending {
            items: VecDeque::new(),
            frames: 0,
            bytes: 0,
            limits: BatchLimits {
                max_frames: limits.max_frames.max(1),
                max_bytes: limits.max_bytes.max(1),
            },
            last_chunk: 0,
        }
    }

    /// Frames queued (each publish in a chunk counts as one).
    pub(crate) fn frames(&self) -> usize {
        self.frames
    }

    /// Encoded bytes queued.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Queues a frame after everything queued.
    pub(crate) fn push_frame(&mut self, o: Outbound) {
        let len = prost::Message::encoded_len(&*o.frame);
        self.bytes += len;
        self.items.push_back(Item::Frame { o, len });
        self.frames += 1;
    }

    /// Encodes the publish `p` at the end of the tail chunk, or of a new one when the tail
    /// is a frame, is full (a batch's frames or bytes), or lacks room for `p` (a chunk never
    /// grows: growing would copy what it holds).
    pub(crate) fn push_pub(&mut self, p: &PubRef<'_>) {
        // The record's own key and two lengths take at most 12 bytes.
        let need = p.encoded_len() + 12;
        let limits = self.limits;
        let fits = |bytes: &BytesMut, frames: usize| {
            frames < limits.max_frames
                && bytes.len() < limits.max_bytes
                && bytes.capacity() - bytes.len() >= need
        };
        let (tail_fits, outgrown) = match self.items.back() {
            Some(Item::Chunk { bytes, frames }) => (fits(bytes, *frames), bytes.capacity()),
            _ => (false, 0),
        };
        if !tail_fits {
            // Twice the chunk taken last, or twice the one just outgrown: like a vector's
            // doubling, without moving what is written.
            let size = (2 * self.last_chunk.max(outgrown))
                .clamp(MIN_CHUNK, limits.max_bytes.max(MIN_CHUNK))
                .max(need);
            self.items.push_back(Item::Chunk {
                bytes: BytesMut::with_capacity(size),
                frames: 0,
            });
        }
        let Some(Item::Chunk { bytes, frames }) = self.items.back_mut() else {
            unreachable!("the tail is a chunk with room")
        };
        let before = bytes.len();
        pb::Batch::encode_pub(p, bytes);
        self.bytes += bytes.len() - before;
        *frames += 1;
        self.frames += 1;
    }

    /// Moves items into `out`, oldest first, until they make a batch full by `room` (the
    /// frames and bytes the batch being built still takes); a single item larger than that
    /// still goes. A frame counts its encoded length before compression.
    pub(crate) fn take_into(&mut self, room: BatchLimits, out: &mut Vec<Item>) {
        let (mut frames, mut bytes) = (0usize, 0usize);
        while frames < room.max_frames && bytes < room.max_bytes {
            let Some(item) = self.items.pop_front() else {
                break;
            };
            let (n, len) = match &item {
                Item::Chunk { bytes, frames } => {
                    self.last_chunk = bytes.len();
                    (*frames, bytes.len())
                }
                Item::Frame { len, .. } => (1, *len),
            };
            frames += n;
            bytes += len;
            self.frames -= n;
            self.bytes -= len;
            out.push(item);
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

/// [`Pending`] behind a lock, with the wakes for the writer and for publishers waiting for
/// room.
pub(crate) struct OutboundQueue {
    pending: Mutex<State>,
    capacity: usize,
    max_bytes: usize,
    /// Notified when the queue goes from empty to non-empty.
    ready: Notify,
    /// Notified when the writer took frames from a full queue, and when the queue closes.
    room: Notify,
}

struct State {
    pending: Pending,
    closed: bool,
}

impl OutboundQueue {
    /// A queue of at most `capacity` frames and `max_bytes` bytes, whose chunks fill up to
    /// `limits`.
    pub(crate) fn new(capacity: usize, max_bytes: usize, limits: BatchLimits) -> Self {
        OutboundQueue {
            pending: Mutex::new(State {
                pending: Pending::new(limits),
                closed: false,
            }),
            capacity: capacity.max(1),
            max_bytes: max_bytes.max(1),
            ready: Notify::new(),
            room: Notify::new(),
        }
    }

    /// Queues `o`, waiting while the queue is full; fails once the client is closed.
    pub(crate) async fn push(&self, o: Outbound) -> Result<()> {
        let mut o = Some(o);
        self.push_with(|p| p.push_frame(o.take().expect("pushed once")))
            .await
    }

    /// Encodes and queues the publish `p`, waiting while the queue is full.
    pub(crate) async fn push_pub(&self, p: &PubRef<'_>) -> Result<()> {
        self.push_with(|pending| pending.push_pub(p)).await
    }

    /// Queues `o` without waiting, even over capacity: for frames queued where no one can
    /// wait (from `Drop`), which must stay in order after what is queued.
    pub(crate) fn push_now(&self, o: Outbound) {
        let mut st = self.pending.lock();
        if st.closed {
            return;
        }
        let was_empty = st.pending.is_empty();
        st.pending.push_frame(o);
        drop(st);
        if was_empty {
            self.ready.notify_one();
        }
    }

    async fn push_with(&self, mut push: impl FnMut(&mut Pending)) -> Result<()> {
        // A publisher that never finds the queue full never waits; like a channel's send, it
        // spends the task's cooperative budget, so that a publishing loop yields now and
        // then to the writer and the other tasks of its thread instead of filling the queue.
        tokio::task::coop::consume_budget().await;
        if let Some(done) = self.try_push(&mut push) {
            return done;
        }
        loop {
            let room = self.room.notified();
            tokio::pin!(room);
            // Registered before the queue is looked at: a take after this wakes it.
            room.as_mut().enable();
            if let Some(done) = self.try_push(&mut push) {
                return done;
            }
            room.await;
        }
    }

    /// Pushes when there is room: `None` when the queue is full.
    fn try_push(&self, push: &mut impl FnMut(&mut Pending)) -> Option<Result<()>> {
        let mut st = self.pending.lock();
        if st.closed {
            return Some(Err(Error::Closed));
        }
        if self.is_full(&st.pending) {
            return None;
        }
        let was_empty = st.pending.is_empty();
        push(&mut st.pending);
        drop(st);
        if was_empty {
            self.ready.notify_one();
        }
        Some(Ok(()))
    }

    /// No room for another frame: `capacity` frames, or `max_bytes` bytes, are queued.
    fn is_full(&self, p: &Pending) -> bool {
        p.frames() >= self.capacity || (p.frames() > 0 && p.bytes() >= self.max_bytes)
    }

    /// Completes when something is queued (at once if it already is).
    pub(crate) async fn readable(&self) {
        loop {
            let ready = self.ready.notified();
            tokio::pin!(ready);
            ready.as_mut().enable();
            if !self.pending.lock().pending.is_empty() {
                return;
            }
            ready.await;
        }
    }

    /// Moves what is queued into `out`, up to `room` (see [`Pending::take_into`]), and wakes
    /// publishers waiting for room.
    pub(crate) fn take_into(&self, room: BatchLimits, out: &mut Vec<Item>) {
        let mut st = self.pending.lock();
        let was_full = self.is_full(&st.pending);
        st.pending.take_into(room, out);
        drop(st);
        if was_full {
            self.room.notify_waiters();
        }
    }

    /// Refuses further frames and wakes publishers waiting for room (they fail with
    /// [`Error::Closed`]). What is queued is dropped.
    pub(crate) fn close(&self) {
        let mut st = self.pending.lock();
        st.closed = true;
        let limits = st.pending.limits;
        let dropped = std::mem::replace(&mut st.pending, Pending::new(limits));
        drop(st);
        drop(dropped);
        self.room.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nexus_proto::v1::frame::Kind;
    use std::sync::Arc;

    /// Lets spawned tasks (on the test's single thread) run until they wait.
    async fn settle() {
        for _ in 0..16 {
            tokio::task::yield_now().await;
        }
    }

    const LIMITS: BatchLimits = BatchLimits {
        max_frames: 4,
        max_bytes: 1 << 20,
    };

    fn publish(subject: &str) -> PubRef<'_> {
        PubRef {
            subject,
            reply_to: "",
            headers: &[],
            payload: b"payload",
            id: b"0123456789abcdef",
            ack_id: 0,
        }
    }

    fn ping(nonce: u64) -> Outbound {
        Outbound::any(Kind::Ping(pb::Ping { nonce }))
    }

    /// What the items hold, decoded: publishes by subject, pings by nonce.
    fn decode(items: Vec<Item>) -> Vec<String> {
        let mut out = Vec::new();
        for item in items {
            match item {
                Item::Chunk { bytes, frames } => {
                    let batch = pb::Batch {
                        frames: Vec::new(),
                        encoded: bytes.freeze(),
                    };
                    let decoded = batch.into_frames().expect("a chunk decodes");
                    assert_eq!(decoded.len(), frames, "a chunk counts its records");
                    for f in decoded {
                        match f.kind {
                            Some(Kind::Pub(p)) => out.push(p.subject.to_string()),
                            other => panic!("a chunk holds only publishes: {other:?}"),
                        }
                    }
                }
                Item::Frame { o, .. } => match o.frame.kind {
                    Some(Kind::Ping(p)) => out.push(format!("ping {}", p.nonce)),
                    other => panic!("unexpected frame {other:?}"),
                },
            }
        }
        out
    }

    fn take_all(p: &mut Pending) -> Vec<Item> {
        let mut out = Vec::new();
        p.take_into(
            BatchLimits {
                max_frames: usize::MAX,
                max_bytes: usize::MAX,
            },
            &mut out,
        );
        out
    }

    #[test]
    fn publishes_and_frames_keep_their_order() {
        let mut p = Pending::new(LIMITS);
        p.push_pub(&publish("a"));
        p.push_pub(&publish("b"));
        p.push_frame(ping(1));
        p.push_pub(&publish("c"));
        assert_eq!(p.frames(), 4);
        let items = take_all(&mut p);
        assert_eq!(items.len(), 3, "two publishes share a chunk: {items:?}");
        assert_eq!(decode(items), ["a", "b", "ping 1", "c"]);
        assert_eq!(p.frames(), 0);
        assert!(p.is_empty());
    }

    #[test]
    fn a_chunk_holds_at_most_one_batch() {
        let mut p = Pending::new(LIMITS);
        for s in ["a", "b", "c", "d", "e"] {
            p.push_pub(&publish(s));
        }
        let items = take_all(&mut p);
        let sizes: Vec<usize> = items
            .iter()
            .map(|i| match i {
                Item::Chunk { frames, .. } => *frames,
                Item::Frame { .. } => 0,
            })
            .collect();
        assert_eq!(sizes, [4, 1]);
        assert_eq!(decode(items), ["a", "b", "c", "d", "e"]);

        let mut p = Pending::new(BatchLimits {
            max_frames: 100,
            max_bytes: 100,
        });
        for s in ["a", "b", "c", "d"] {
            p.push_pub(&publish(s));
        }
        let items = take_all(&mut p);
        assert!(items.len() > 1, "a chunk stops at max_bytes");
        assert_eq!(decode(items), ["a", "b", "c", "d"]);
    }

    #[test]
    fn a_chunk_never_grows() {
        let mut p = Pending::new(BatchLimits {
            max_frames: 1000,
            max_bytes: 1 << 20,
        });
        // Records of ~650 bytes: the first chunk (1 KiB) holds one, the next (2 KiB) two.
        let big = "x".repeat(600);
        for _ in 0..3 {
            p.push_pub(&PubRef {
                payload: big.as_bytes(),
                ..publish("big")
            });
        }
        let chunks: Vec<(usize, usize)> = take_all(&mut p)
            .iter()
            .filter_map(|i| match i {
                Item::Chunk { bytes, frames } => Some((*frames, bytes.capacity())),
                Item::Frame { .. } => None,
            })
            .collect();
        assert_eq!(chunks, [(1, MIN_CHUNK), (2, 2 * MIN_CHUNK)]);
    }

    #[test]
    fn chunks_double_and_start_from_the_last_one_taken() {
        let mut p = Pending::new(BatchLimits {
            max_frames: 1000,
            max_bytes: 1 << 20,
        });
        for _ in 0..200 {
            p.push_pub(&publish("a.b"));
        }
        let capacities = |items: &[Item]| -> Vec<(usize, usize)> {
            items
                .iter()
                .filter_map(|i| match i {
                    Item::Chunk { bytes, .. } => Some((bytes.len(), bytes.capacity())),
                    Item::Frame { .. } => None,
                })
                .collect()
        };
        let burst = capacities(&take_all(&mut p));
        assert!(
            burst.len() > 2,
            "the burst outgrew the first chunk: {burst:?}"
        );
        for pair in burst.windows(2) {
            assert_eq!(pair[1].1, 2 * pair[0].1, "each chunk doubles: {burst:?}");
        }
        let (last_len, _) = burst[burst.len() - 1];
        p.push_pub(&publish("a.b"));
        let next = capacities(&take_all(&mut p));
        assert_eq!(
            next[0].1,
            (2 * last_len).max(MIN_CHUNK),
            "{burst:?} then {next:?}"
        );
    }

    #[test]
    fn take_stops_at_the_room_left() {
        let mut p = Pending::new(LIMITS);
        for n in 0..3 {
            p.push_frame(ping(n));
        }
        let mut out = Vec::new();
        p.take_into(
            BatchLimits {
                max_frames: 2,
                max_bytes: 1 << 20,
            },
            &mut out,
        );
        assert_eq!(decode(std::mem::take(&mut out)), ["ping 0", "ping 1"]);
        assert_eq!(p.frames(), 1);
        // A chunk larger than the room still goes whole.
        for s in ["a", "b", "c"] {
            p.push_pub(&publish(s));
        }
        p.take_into(
            BatchLimits {
                max_frames: 1,
                max_bytes: 1 << 20,
            },
            &mut out,
        );
        assert_eq!(decode(out), ["ping 2"]);
        assert_eq!(p.frames(), 3);
    }

    #[tokio::test]
    async fn a_full_queue_makes_publishers_wait_until_the_writer_takes() {
        let q = Arc::new(OutboundQueue::new(2, usize::MAX, LIMITS));
        q.push_pub(&publish("a")).await.unwrap();
        q.push(ping(1)).await.unwrap();
        let waiting = tokio::spawn({
            let q = q.clone();
            async move { q.push(ping(2)).await }
        });
        settle().await;
        assert!(!waiting.is_finished(), "the third frame waits for room");
        let mut out = Vec::new();
        q.take_into(LIMITS, &mut out);
        assert_eq!(decode(out), ["a", "ping 1"]);
        waiting.await.unwrap().unwrap();
        let mut out = Vec::new();
        q.take_into(LIMITS, &mut out);
        assert_eq!(decode(out), ["ping 2"]);
    }

    #[tokio::test]
    async fn a_publishing_loop_yields_to_other_tasks() {
        // One thread: the other task runs only if the publisher's pushes yield now and then.
        let q = OutboundQueue::new(100_000, usize::MAX, LIMITS);
        let ran = Arc::new(std::sync::atomic::AtomicBool::new(false));
        tokio::spawn({
            let ran = ran.clone();
            async move { ran.store(true, std::sync::atomic::Ordering::Relaxed) }
        });
        let mut pushed_before_it_ran = None;
        for n in 0..10_000 {
            q.push_pub(&publish("a")).await.unwrap();
            if pushed_before_it_ran.is_none() && ran.load(std::sync::atomic::Ordering::Relaxed) {
                pushed_before_it_ran = Some(n);
            }
        }
        let n = pushed_before_it_ran.expect("the other task never ran during 10 000 publishes");
        assert!(n < 1_000, "it ran only after {n} publishes");
    }

    #[test]
    fn bytes_are_counted_in_and_out() {
        let mut p = Pending::new(LIMITS);
        p.push_pub(&publish("a"));
        let one = p.bytes();
        assert!(
            one > 16,
            "a publish's record, id and payload included: {one}"
        );
        p.push_pub(&publish("b"));
        p.push_frame(ping(1));
        let ping_len = prost::Message::encoded_len(&*ping(1).frame);
        assert_eq!(p.bytes(), 2 * one + ping_len);
        take_all(&mut p);
        assert_eq!(p.bytes(), 0);
    }

    #[tokio::test]
    async fn the_byte_bound_makes_publishers_wait_too() {
        let one = {
            let mut p = Pending::new(LIMITS);
            p.push_pub(&publish("a"));
            p.bytes()
        };
        // Room for three publishes' bytes, and frames to spare.
        let q = Arc::new(OutboundQueue::new(1_000, 3 * one, LIMITS));
        for s in ["a", "b", "c"] {
            q.push_pub(&publish(s)).await.unwrap();
        }
        let waiting = tokio::spawn({
            let q = q.clone();
            async move { q.push_pub(&publish("d")).await }
        });
        settle().await;
        assert!(
            !waiting.is_finished(),
            "the fourth waits for bytes to leave"
        );
        let mut out = Vec::new();
        q.take_into(LIMITS, &mut out);
        assert_eq!(decode(out), ["a", "b", "c"]);
        waiting.await.unwrap().unwrap();
        // A frame larger than the bound still goes, alone.
        let q = OutboundQueue::new(1_000, 1, LIMITS);
        q.push_pub(&publish("big")).await.unwrap();
        let mut out = Vec::new();
        q.take_into(LIMITS, &mut out);
        assert_eq!(decode(out), ["big"]);
    }

    #[tokio::test]
    async fn closing_fails_waiting_and_later_publishers() {
        let q = Arc::new(OutboundQueue::new(1, usize::MAX, LIMITS));
        q.push(ping(1)).await.unwrap();
        let waiting = tokio::spawn({
            let q = q.clone();
            async move { q.push(ping(2)).await }
        });
        settle().await;
        q.close();
        assert!(matches!(waiting.await.unwrap(), Err(Error::Closed)));
        assert!(matches!(
            q.push_pub(&publish("a")).await,
            Err(Error::Closed)
        ));
    }

    #[tokio::test]
    async fn the_writer_wakes_when_something_is_queued() {
        let q = Arc::new(OutboundQueue::new(8, usize::MAX, LIMITS));
        let writer = tokio::spawn({
            let q = q.clone();
            async move {
                q.readable().await;
                let mut out = Vec::new();
                q.take_into(LIMITS, &mut out);
                decode(out)
            }
        });
        settle().await;
        assert!(!writer.is_finished());
        q.push_now(ping(7));
        assert_eq!(writer.await.unwrap(), ["ping 7"]);
        // Readable at once while something is queued, wake or not.
        q.push_now(ping(8));
        q.readable().await;
        q.readable().await;
    }
}
