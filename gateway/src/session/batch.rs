//! Applying an adapter's input batch: frames in order, publishes read in place from a native
//! record (`BatchFrames::next_view`) and applied without an `.await` when nothing waits, the
//! subscribers' outbound streams woken once the batch is applied (`DeferredWakes`).

use std::time::Duration;

use nexus_proto::hot_frames::{BatchFrames, Next};
use nexus_proto::v1::{self, Frame, frame::Kind};
use tonic::Status;

use super::{Flow, IncomingPub, Session};
use crate::connection::Connection;
use crate::outbound::DeferredWakes;
use crate::router::Router;

impl Session {
    /// Applies a batch's frames in order; `Err` ends the session with that outcome. A native
    /// record comes undecoded (in `encoded`) and is decoded one frame at a time as it is
    /// applied, with no vector of frames between: frames before one that fails to decode are
    /// applied, then the session ends naming the problem (docs/protocol.md §1.1).
    pub(super) async fn apply_batch(&mut self, batch: v1::Batch) -> Result<(), Option<Status>> {
        // The decoded publishes' headers, in one vector the session keeps.
        let mut headers = std::mem::take(&mut self.pub_headers);
        let applied = self.apply_frames(batch, &mut headers).await;
        self.wakes.wake_all();
        headers.clear();
        self.pub_headers = headers;
        applied
    }

    /// [`Session::apply_batch`], publishes' headers decoded into `headers`. A native
    /// record's publishes are read in place ([`BatchFrames::next_view`]) and routed
    /// borrowed from it; other frames are decoded into one slot, their kind taken out once
    /// (each move of a frame through an iterator's `Option`s and `Result`s is a ~170-byte
    /// copy).
    async fn apply_frames(
        &mut self,
        batch: v1::Batch,
        headers: &mut Vec<v1::Header>,
    ) -> Result<(), Option<Status>> {
        let conn = self.conn.clone();
        let mut decoded = batch.frames.into_iter();
        let mut records = BatchFrames::new(batch.encoded);
        let mut slot = Frame::default();
        loop {
            let kind = match decoded.next() {
                Some(f) => f.kind,
                None => match records.next_view(&mut slot, headers) {
                    Ok(Some(Next::Frame)) => slot.kind.take(),
                    Ok(Some(Next::Pub(p))) if self.hello => {
                        Self::wait_for_control_room(&self.router, &conn, &mut self.wakes).await?;
                        if let Some(rest) = self.publish_now(IncomingPub::in_batch(p), headers) {
                            self.finish_publish(rest).await;
                        }
                        continue;
                    }
                    // Before Hello: the session ends, as for any frame but Hello.
                    Ok(Some(Next::Pub(_))) => Some(Kind::Pub(v1::Pub::default())),
                    Ok(None) => break,
                    Err(e) => {
                        return Err(Some(Status::invalid_argument(format!(
                            "a record is not a valid nexus.v1.Batch: {e}"
                        ))));
                    }
                },
            };
            Self::wait_for_control_room(&self.router, &conn, &mut self.wakes).await?;
            // Most frames are publishes that wait for nothing: applied here without
            // building `on_frame`'s future (moving a frame into it, and it into this
            // one, cost more than routing the message).
            let f = match kind {
                Some(Kind::Pub(mut p)) if self.hello => {
                    let mut headers = std::mem::take(&mut p.headers);
                    if let Some(rest) = self.publish_now(IncomingPub::decoded(&p), &mut headers) {
                        self.finish_publish(rest).await;
                    }
                    continue;
                }
                kind => Frame { kind },
            };
            self.wakes.wake_all();
            if let Flow::Close(status) = self.on_frame(f).await {
                return Err(Some(status));
            }
        }
        Ok(())
    }

    /// Answers pile up faster than a reading adapter takes them when one batch holds many
    /// frames that are answered: stop reading until it caught up (protocol.md §12.4), rather
    /// than cutting it off as a slow consumer. `Err` ends the session.
    async fn wait_for_control_room(
        router: &Router,
        conn: &Connection,
        wakes: &mut DeferredWakes,
    ) -> Result<(), Option<Status>> {
        if conn.outbound.control_queued() < crate::outbound::CONTROL_HIGH_WATER {
            return Ok(());
        }
        wakes.wake_all();
        if !conn
            .outbound
            .control_room(Duration::from_millis(
                router.config().slow_consumer.max_wait_ms,
            ))
            .await
        {
            return Err(None);
        }
        Ok(())
    }
}
