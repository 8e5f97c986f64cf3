//! Outbound frame batching.
//!
//! Every API call turns into one or more frames pushed onto the bounded outbound queue. A
//! single writer task drains that queue: it waits for the first frame, then takes whatever
//! else is *immediately* available until the batch reaches [`BatchLimits`] (frames or encoded
//! bytes), and sends the batch. A batch is therefore flushed as soon as the queue goes idle
//! (no added latency) or when it is full (bounded size).
//!
//! The writer encodes each frame as it takes it, into the batch's bytes
//! ([`pb::Batch::encoded`]): one pass over each frame, and no vector of frames to move them
//! through. A plain publish arrives already encoded ([`Outgoing::Encoded`], written where the
//! application called `publish`), and the writer only appends its bytes.

use nexus_proto::v1 as pb;

/// What a queued item carries.
#[derive(Debug)]
pub(crate) enum Outgoing {
    /// Boxed, so that the queue moves 40 bytes per item rather than a frame's 170: most
    /// items are publishes, which arrive encoded.
    Frame(Box<pb::Frame>),
    /// One frame already encoded as a `Batch.frames` record (a publish whose payload is below
    /// the compression threshold: nothing about it depends on the session).
    Encoded(bytes::Bytes),
}

/// A frame waiting in the outbound queue.
#[derive(Debug)]
pub(crate) struct Outbound {
    pub(crate) frame: Outgoing,
    /// Session epoch the frame belongs to, or 0 if it may go out in any session. Frames of an
    /// older epoch (e.g. a request whose caller was already failed with `Disconnected`) are
    /// dropped by the writer instead of being sent on a new session.
    pub(crate) epoch: u64,
}

impl Outbound {
    pub(crate) fn any(kind: pb::frame::Kind) -> Self {
        Outbound {
            frame: Outgoing::Frame(Box::new(pb::Frame { kind: Some(kind) })),
            epoch: 0,
        }
    }

    pub(crate) fn in_epoch(kind: pb::frame::Kind, epoch: u64) -> Self {
        Outbound {
            frame: Outgoing::Frame(Box::new(pb::Frame { kind: Some(kind) })),
            epoch,
        }
    }

    /// An encoded frame that may go out in any session.
    pub(crate) fn encoded(bytes: bytes::Bytes) -> Self {
        Outbound {
            frame: Outgoing::Encoded(bytes),
            epoch: 0,
        }
    }

    /// The frame, when it is not encoded yet.
    #[cfg(test)]
    pub(crate) fn kind(&self) -> Option<&pb::frame::Kind> {
        match &self.frame {
            Outgoing::Frame(f) => f.kind.as_ref(),
            Outgoing::Encoded(_) => None,
        }
    }
}

/// Maximum size of one outbound batch.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BatchLimits {
    pub(crate) max_frames: usize,
    pub(crate) max_bytes: usize,
}

/// Accumulates frames into a batch until a limit is reached.
#[derive(Debug)]
pub(crate) struct Coalescer {
    limits: BatchLimits,
    /// The batch's frames, encoded.
    encoded: bytes::BytesMut,
    frames: usize,
    /// Bytes of the last batch: a new one reserves that much at once instead of growing (and
    /// copying) its buffer by doubling.
    last_len: usize,
}

impl Coalescer {
    pub(crate) fn new(limits: BatchLimits) -> Self {
        Coalescer {
            limits: BatchLimits {
                max_frames: limits.max_frames.max(1),
                max_bytes: limits.max_bytes.max(1),
            },
            encoded: bytes::BytesMut::new(),
            frames: 0,
            last_len: 0,
        }
    }

    /// Adds a frame. A single frame larger than `max_bytes` still forms a batch of its own.
    pub(crate) fn push(&mut self, item: Outgoing) {
        if self.encoded.is_empty() {
            self.encoded
                .reserve(self.last_len.min(self.limits.max_bytes));
        }
        match item {
            Outgoing::Frame(frame) => pb::Batch::encode_frame(&frame, &mut self.encoded),
            Outgoing::Encoded(bytes) => self.encoded.extend_from_slice(&bytes),
        }
        self.frames += 1;
    }

    /// True when no more frames should be added.
    pub(crate) fn is_full(&self) -> bool {
        self.frames >= self.limits.max_frames || self.encoded.len() >= self.limits.max_bytes
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.frames == 0
    }

    /// Takes the batch, leaving the coalescer empty. Its buffer is used again for the next
    /// batch once the transport has sent this one.
    pub(crate) fn take(&mut self) -> pb::Batch {
        self.frames = 0;
        self.last_len = self.encoded.len();
        pb::Batch {
            frames: Vec::new(),
            encoded: self.encoded.split().freeze(),
        }
    }

    /// Fills the batch from `next` (which returns immediately available frames) until it is
    /// full or `next` has nothing more.
    pub(crate) fn fill(&mut self, mut next: impl FnMut() -> Option<Outgoing>) {
        while !self.is_full() {
            match next() {
                Some(f) => self.push(f),
                None => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::collections::VecDeque;

    fn pub_frame(n: usize) -> pb::Frame {
        pb::Frame {
            kind: Some(pb::frame::Kind::Pub(pb::Pub {
                subject: "a.b".into(),
                payload: Bytes::from(vec![0u8; n]),
                ..Default::default()
            })),
        }
    }

    fn drain(c: &mut Coalescer, q: &mut VecDeque<pb::Frame>) -> Vec<usize> {
        let mut sizes = Vec::new();
        while let Some(first) = q.pop_front() {
            c.push(Outgoing::Frame(Box::new(first)));
            c.fill(|| q.pop_front().map(|f| Outgoing::Frame(Box::new(f))));
            sizes.push(c.take().into_frames().unwrap().len());
            assert!(c.is_empty());
        }
        sizes
    }

    #[test]
    fn flushes_when_idle() {
        let mut c = Coalescer::new(BatchLimits {
            max_frames: 256,
            max_bytes: 1 << 20,
        });
        let mut q: VecDeque<_> = (0..10).map(|_| pub_frame(10)).collect();
        assert_eq!(drain(&mut c, &mut q), [10]);
    }

    #[test]
    fn splits_on_frame_limit() {
        let mut c = Coalescer::new(BatchLimits {
            max_frames: 4,
            max_bytes: 1 << 20,
        });
        let mut q: VecDeque<_> = (0..10).map(|_| pub_frame(10)).collect();
        assert_eq!(drain(&mut c, &mut q), [4, 4, 2]);
    }

    #[test]
    fn splits_on_byte_limit() {
        let mut c = Coalescer::new(BatchLimits {
            max_frames: 256,
            max_bytes: 3000,
        });
        // ~1 KiB each: three fit before the limit is reached.
        let mut q: VecDeque<_> = (0..7).map(|_| pub_frame(1000)).collect();
        assert_eq!(drain(&mut c, &mut q), [3, 3, 1]);
        // An oversized frame still goes out alone.
        let mut q: VecDeque<_> = [pub_frame(10_000), pub_frame(1)].into();
        assert_eq!(drain(&mut c, &mut q), [1, 1]);
    }

    #[test]
    fn encoded_frames_go_out_as_they_came() {
        let mut c = Coalescer::new(BatchLimits {
            max_frames: 8,
            max_bytes: 1 << 20,
        });
        let mut pre = bytes::BytesMut::new();
        pb::Batch::encode_frame(&pub_frame(7), &mut pre);
        c.push(Outgoing::Frame(Box::new(pub_frame(1))));
        c.push(Outgoing::Encoded(pre.freeze()));
        c.push(Outgoing::Frame(Box::new(pub_frame(3))));
        let frames = c.take().into_frames().unwrap();
        assert_eq!(frames, [pub_frame(1), pub_frame(7), pub_frame(3)]);
    }

    #[test]
    fn order_is_preserved() {
        let mut c = Coalescer::new(BatchLimits {
            max_frames: 3,
            max_bytes: 1 << 20,
        });
        let mut q: VecDeque<_> = (1..=5).map(pub_frame).collect();
        let mut lens = Vec::new();
        while let Some(f) = q.pop_front() {
            c.push(Outgoing::Frame(Box::new(f)));
            c.fill(|| q.pop_front().map(|f| Outgoing::Frame(Box::new(f))));
            for f in c.take().into_frames().unwrap() {
                if let Some(pb::frame::Kind::Pub(p)) = f.kind {
                    lens.push(p.payload.len());
                }
            }
        }
        assert_eq!(lens, [1, 2, 3, 4, 5]);
    }
}
