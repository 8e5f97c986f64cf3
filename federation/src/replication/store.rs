//! The spool on disk (redb): this spool's stream id, unconfirmed messages per receiving
//! region, the last `seq` each region confirmed, how far each stream from other gateways was
//! delivered here (the receiver's marks), the message ids accepted recently (idempotent
//! publishing), the interest other regions advertised (so messages published while a
//! region is unreachable, even right after a restart, are still spooled for it), and the
//! copies of other gateways' spools this gateway keeps as their replica.
//!
//! Every batch of operations is one transaction, committed durably before the caller is told;
//! a crash leaves either all of a batch or none of it.

use std::collections::HashMap;
use std::path::Path;

use nexus_proto::v1::{SpoolRecord, Spooled};
use prost::Message;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::StreamId;
use super::dedup::MessageId;

const META: TableDefinition<&str, &str> = TableDefinition::new("meta");
const ENTRIES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("entries");
const ACKED: TableDefinition<&str, u64> = TableDefinition::new("acked");
/// region -> the highest seq deleted without confirmation (age or size limit), so that
/// numbering continues after it even when nothing else on disk remembers those numbers.
const DELETED: TableDefinition<&str, u64> = TableDefinition::new("deleted");
/// stream -> (region it comes from, delivered and recorded through). (The table `received`
/// of link protocol 1, keyed by region, is no longer read.)
const INBOX: TableDefinition<&str, (&str, u64)> = TableDefinition::new("inbox");
const INTEREST: TableDefinition<&str, &str> = TableDefinition::new("interest");
/// (accepted at, message id): ids of publishes accepted recently, oldest first.
const ACCEPTED: TableDefinition<(i64, &[u8]), ()> = TableDefinition::new("accepted");
/// Copies kept as another gateway's replica: (stream, queue, seq) -> the message as a
/// `Spooled` (its stream field empty).
const REPLICA_ENTRIES: TableDefinition<(&str, &str, u64), &[u8]> =
    TableDefinition::new("replica_entries");
/// stream -> the gateway whose spool it is.
const REPLICA_ORIGIN: TableDefinition<&str, &str> = TableDefinition::new("replica_origin");
/// (stream, queue) -> everything at or below this was confirmed or deleted at the origin.
const REPLICA_FLOOR: TableDefinition<(&str, &str), u64> = TableDefinition::new("replica_floor");

#[derive(Debug, thiserror::Error)]
#[error("spool store {path}: {message}")]
pub struct StoreError {
    pub path: String,
    pub message: String,
}

/// One change to the spool on disk.
#[derive(Debug, Clone)]
pub enum Op {
    Append {
        region: String,
        spooled: std::sync::Arc<Spooled>,
    },
    /// `region` confirmed up to `up_to`: delete those messages and remember the mark.
    Ack { region: String, up_to: u64 },
    /// Delete messages without delivery (overflow or expiry).
    Delete { region: String, seqs: Vec<u64> },
    /// Everything of `stream` (from `region`) up to `seq` was delivered here.
    Received {
        stream: StreamId,
        region: String,
        seq: u64,
    },
    /// A publish with this id was accepted at `at_ms`.
    Accepted { id: MessageId, at_ms: i64 },
    /// Forget ids accepted before `before_ms`.
    ForgetAccepted { before_ms: i64 },
    /// `region`'s advertised interest, replacing what was stored.
    Interest {
        region: String,
        patterns: Vec<String>,
    },
    /// As `origin`'s replica: keep `entries` of its `stream`'s queue `destination`, and drop
    /// what is at or below `floor`.
    ReplicaHold {
        stream: StreamId,
        origin: String,
        destination: String,
        floor: u64,
        entries: Vec<Spooled>,
    },
    /// Drop every copy of `stream`.
    ReplicaRelease { stream: StreamId },
}

/// Copies of one other gateway's spool, as found on disk.
#[derive(Debug)]
pub struct HeldSpool {
    pub stream: StreamId,
    pub origin: String,
    /// queue -> (floor, entries)
    pub queues: HashMap<String, (u64, Vec<Spooled>)>,
}

/// What a gateway finds in its spool when it starts.
#[derive(Debug)]
pub struct Loaded {
    /// This spool's stream id.
    pub stream: StreamId,
    /// Per receiving region: what is left of its queue.
    pub queues: HashMap<String, StoredQueue>,
    /// (stream, region it comes from, delivered through)
    pub inbox: Vec<(StreamId, String, u64)>,
    pub interest: HashMap<String, Vec<String>>,
    /// Recently accepted message ids, with when.
    pub accepted: Vec<(MessageId, i64)>,
    /// Other gateways' spools kept here as their replica.
    pub held: Vec<HeldSpool>,
}

/// One receiving region's queue as found on disk.
#[derive(Debug, Default)]
pub struct StoredQueue {
    /// The last `seq` the region confirmed.
    pub acked: u64,
    /// The highest `seq` deleted by a limit without confirmation.
    pub deleted_through: u64,
    /// Unconfirmed messages.
    pub entries: Vec<Spooled>,
}

pub struct SpoolStore {
    db: Database,
    path: String,
    stream: StreamId,
}

impl SpoolStore {
    /// Opens (or creates) the spool at `path`; a new spool gets a new stream id naming
    /// `gateway_id`.
    pub fn open(path: &Path, gateway_id: &str) -> Result<Self, StoreError> {
        let err = |message: String| StoreError {
            path: path.display().to_string(),
            message,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| err(format!("cannot create {}: {e}", dir.display())))?;
        }
        let db = Database::create(path).map_err(|e| err(e.to_string()))?;
        let mut store = SpoolStore {
            db,
            path: path.display().to_string(),
            stream: StreamId::from(""),
        };
        // Create the tables so reads of a fresh spool find them, and name the spool.
        store.apply(&[])?;
        store.stream = store.stream_id(gateway_id)?;
        Ok(store)
    }

    /// The spool's stream id, chosen and written when it is first needed.
    fn stream_id(&self, gateway_id: &str) -> Result<StreamId, StoreError> {
        let w = self.db.begin_write().map_err(|e| self.err(e))?;
        let id = {
            let mut meta = w.open_table(META).map_err(|e| self.err(e))?;
            let existing = meta
                .get("stream")
                .map_err(|e| self.err(e))?
                .map(|v| v.value().to_owned());
            match existing {
                Some(id) => StreamId::from(id),
                None => {
                    let id = StreamId::generate(gateway_id);
                    meta.insert("stream", id.as_str())
                        .map_err(|e| self.err(e))?;
                    id
                }
            }
        };
        w.commit().map_err(|e| self.err(e))?;
        Ok(id)
    }

    pub fn stream(&self) -> &StreamId {
        &self.stream
    }

    fn err(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }

    /// Applies `ops` in one durable transaction.
    pub fn apply(&self, ops: &[Op]) -> Result<(), StoreError> {
        let w = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut entries = w.open_table(ENTRIES).map_err(|e| self.err(e))?;
            let mut acked = w.open_table(ACKED).map_err(|e| self.err(e))?;
            let mut deleted = w.open_table(DELETED).map_err(|e| self.err(e))?;
            let mut inbox = w.open_table(INBOX).map_err(|e| self.err(e))?;
            let mut interest = w.open_table(INTEREST).map_err(|e| self.err(e))?;
            let mut accepted = w.open_table(ACCEPTED).map_err(|e| self.err(e))?;
            let mut rep_entries = w.open_table(REPLICA_ENTRIES).map_err(|e| self.err(e))?;
            let mut rep_origin = w.open_table(REPLICA_ORIGIN).map_err(|e| self.err(e))?;
            let mut rep_floor = w.open_table(REPLICA_FLOOR).map_err(|e| self.err(e))?;
            w.open_table(META).map_err(|e| self.err(e))?;
            let mut buf = Vec::new();
            for op in ops {
                match op {
                    Op::Append { region, spooled } => {
                        buf.clear();
                        SpoolRecord {
                            route: spooled.route.clone(),
                            forward: spooled.forward.clone(),
                            spooled_at_ms: spooled.spooled_at_ms,
                            relay_of: spooled.relay_of.clone(),
                        }
                        .encode(&mut buf)
                        .map_err(|e| self.err(e))?;
                        entries
                            .insert((region.as_str(), spooled.seq), buf.as_slice())
                            .map_err(|e| self.err(e))?;
                    }
                    Op::Ack { region, up_to } => {
                        let keys: Vec<u64> = entries
                            .range((region.as_str(), 0)..=(region.as_str(), *up_to))
                            .map_err(|e| self.err(e))?
                            .filter_map(|r| r.ok().map(|(k, _)| k.value().1))
                            .collect();
                        for seq in keys {
                            entries
                                .remove((region.as_str(), seq))
                                .map_err(|e| self.err(e))?;
                        }
                        let prev = acked
                            .get(region.as_str())
                            .map_err(|e| self.err(e))?
                            .map_or(0, |v| v.value());
                        acked
                            .insert(region.as_str(), prev.max(*up_to))
                            .map_err(|e| self.err(e))?;
                    }
                    Op::Delete { region, seqs } => {
                        for seq in seqs {
                            entries
                                .remove((region.as_str(), *seq))
                                .map_err(|e| self.err(e))?;
                        }
                        let prev = deleted
                            .get(region.as_str())
                            .map_err(|e| self.err(e))?
                            .map_or(0, |v| v.value());
                        let top = seqs.iter().copied().max().unwrap_or(0);
                        deleted
                            .insert(region.as_str(), prev.max(top))
                            .map_err(|e| self.err(e))?;
                    }
                    Op::Received {
                        stream,
                        region,
                        seq,
                    } => {
                        let prev = inbox
                            .get(stream.as_str())
                            .map_err(|e| self.err(e))?
                            .map_or(0, |v| v.value().1);
                        inbox
                            .insert(stream.as_str(), (region.as_str(), prev.max(*seq)))
                            .map_err(|e| self.err(e))?;
                    }
                    Op::Accepted { id, at_ms } => {
                        accepted
                            .insert((*at_ms, id.as_slice()), ())
                            .map_err(|e| self.err(e))?;
                    }
                    Op::ForgetAccepted { before_ms } => {
                        accepted
                            .retain_in(
                                (i64::MIN, [].as_slice())..(*before_ms, [].as_slice()),
                                |_, _| false,
                            )
                            .map_err(|e| self.err(e))?;
                    }
                    Op::Interest { region, patterns } => {
                        interest
                            .insert(region.as_str(), patterns.join("\n").as_str())
                            .map_err(|e| self.err(e))?;
                    }
                    Op::ReplicaHold {
                        stream,
                        origin,
                        destination,
                        floor,
                        entries,
                    } => {
                        let (s, d) = (stream.as_str(), destination.as_str());
                        rep_origin
                            .insert(s, origin.as_str())
                            .map_err(|e| self.err(e))?;
                        let prev = rep_floor
                            .get((s, d))
                            .map_err(|e| self.err(e))?
                            .map_or(0, |v| v.value());
                        let floor = prev.max(*floor);
                        rep_floor.insert((s, d), floor).map_err(|e| self.err(e))?;
                        rep_entries
                            .retain_in((s, d, 0)..=(s, d, floor), |_, _| false)
                            .map_err(|e| self.err(e))?;
                        for e in entries.iter().filter(|e| e.seq > floor) {
                            buf.clear();
                            Spooled {
                                stream: String::new(),
                                prev_seq: 0,
                                ..e.clone()
                            }
                            .encode(&mut buf)
                            .map_err(|e| self.err(e))?;
                            rep_entries
                                .insert((s, d, e.seq), buf.as_slice())
                                .map_err(|e| self.err(e))?;
                        }
                    }
                    Op::ReplicaRelease { stream } => {
                        let s = stream.as_str();
                        rep_origin.remove(s).map_err(|e| self.err(e))?;
                        rep_floor
                            .retain(|(k, _), _| k != s)
                            .map_err(|e| self.err(e))?;
                        rep_entries
                            .retain(|(k, _, _), _| k != s)
                            .map_err(|e| self.err(e))?;
                    }
                }
            }
        }
        w.commit().map_err(|e| self.err(e))
    }

    pub fn load(&self) -> Result<Loaded, StoreError> {
        let r = self.db.begin_read().map_err(|e| self.err(e))?;
        let mut out = Loaded {
            stream: self.stream.clone(),
            queues: HashMap::new(),
            inbox: Vec::new(),
            interest: HashMap::new(),
            accepted: Vec::new(),
            held: Vec::new(),
        };
        let acked = r.open_table(ACKED).map_err(|e| self.err(e))?;
        for row in acked.iter().map_err(|e| self.err(e))? {
            let (k, v) = row.map_err(|e| self.err(e))?;
            out.queues.entry(k.value().to_owned()).or_default().acked = v.value();
        }
        let deleted = r.open_table(DELETED).map_err(|e| self.err(e))?;
        for row in deleted.iter().map_err(|e| self.err(e))? {
            let (k, v) = row.map_err(|e| self.err(e))?;
            out.queues
                .entry(k.value().to_owned())
                .or_default()
                .deleted_through = v.value();
        }
        let entries = r.open_table(ENTRIES).map_err(|e| self.err(e))?;
        for row in entries.iter().map_err(|e| self.err(e))? {
            let (k, v) = row.map_err(|e| self.err(e))?;
            let (region, seq) = k.value();
            let rec = SpoolRecord::decode(v.value()).map_err(|e| {
                self.err(format!("message {seq} for region {region} is corrupt: {e}"))
            })?;
            out.queues
                .entry(region.to_owned())
                .or_default()
                .entries
                .push(Spooled {
                    seq,
                    route: rec.route,
                    forward: rec.forward,
                    spooled_at_ms: rec.spooled_at_ms,
                    relay_of: rec.relay_of,
                    ..Default::default()
                });
        }
        let inbox = r.open_table(INBOX).map_err(|e| self.err(e))?;
        for row in inbox.iter().map_err(|e| self.err(e))? {
            let (k, v) = row.map_err(|e| self.err(e))?;
            let (region, seq) = v.value();
            out.inbox
                .push((StreamId::from(k.value()), region.to_owned(), seq));
        }
        let accepted = r.open_table(ACCEPTED).map_err(|e| self.err(e))?;
        for row in accepted.iter().map_err(|e| self.err(e))? {
            let (k, _) = row.map_err(|e| self.err(e))?;
            let (at, id) = k.value();
            if let Ok(id) = MessageId::try_from(id) {
                out.accepted.push((id, at));
            }
        }
        let interest = r.open_table(INTEREST).map_err(|e| self.err(e))?;
        for row in interest.iter().map_err(|e| self.err(e))? {
            let (k, v) = row.map_err(|e| self.err(e))?;
            let patterns = v
                .value()
                .split('\n')
                .filter(|p| !p.is_empty())
                .map(str::to_owned)
                .collect();
            out.interest.insert(k.value().to_owned(), patterns);
        }
        let mut held: std::collections::BTreeMap<String, HeldSpool> = Default::default();
        let origins = r.open_table(REPLICA_ORIGIN).map_err(|e| self.err(e))?;
        for row in origins.iter().map_err(|e| self.err(e))? {
            let (k, v) = row.map_err(|e| self.err(e))?;
            held.insert(
                k.value().to_owned(),
                HeldSpool {
                    stream: StreamId::from(k.value()),
                    origin: v.value().to_owned(),
                    queues: HashMap::new(),
                },
            );
        }
        let floors = r.open_table(REPLICA_FLOOR).map_err(|e| self.err(e))?;
        for row in floors.iter().map_err(|e| self.err(e))? {
            let (k, v) = row.map_err(|e| self.err(e))?;
            let (s, d) = k.value();
            if let Some(h) = held.get_mut(s) {
                h.queues.entry(d.to_owned()).or_default().0 = v.value();
            }
        }
        let copies = r.open_table(REPLICA_ENTRIES).map_err(|e| self.err(e))?;
        for row in copies.iter().map_err(|e| self.err(e))? {
            let (k, v) = row.map_err(|e| self.err(e))?;
            let (s, d, seq) = k.value();
            let Some(h) = held.get_mut(s) else { continue };
            let mut e = Spooled::decode(v.value()).map_err(|e| {
                self.err(format!("replica copy {seq} of {s} for {d} is corrupt: {e}"))
            })?;
            e.seq = seq;
            e.stream = s.to_owned();
            h.queues.entry(d.to_owned()).or_default().1.push(e);
        }
        out.held = held.into_values().collect();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nexus_proto::v1::Forward;
    use std::sync::Arc;

    fn spooled(seq: u64) -> Arc<Spooled> {
        Arc::new(Spooled {
            seq,
            route: "orders".into(),
            forward: Some(Forward {
                subject: "orders.new".into(),
                payload: vec![seq as u8; 8].into(),
                ..Default::default()
            }),
            spooled_at_ms: 42,
            ..Default::default()
        })
    }

    #[test]
    fn survives_reopen() {
        let dir = std::env::temp_dir().join(format!("nexus-spool-test-{}", std::process::id()));
        let path = dir.join("spool.redb");
        let _ = std::fs::remove_dir_all(&dir);
        {
            let s = SpoolStore::open(&path, "gw-a").unwrap();
            assert!(s.stream().as_str().starts_with("gw-a."));
            let mut ops: Vec<Op> = (1..=5)
                .map(|seq| Op::Append {
                    region: "c".into(),
                    spooled: spooled(seq),
                })
                .collect();
            ops.push(Op::Received {
                stream: StreamId::from("gw-b.1"),
                region: "b".into(),
                seq: 17,
            });
            ops.push(Op::Accepted {
                id: [1; 16],
                at_ms: 10,
            });
            ops.push(Op::Accepted {
                id: [2; 16],
                at_ms: 20,
            });
            ops.push(Op::Interest {
                region: "c".into(),
                patterns: vec!["orders.>".into(), "x".into()],
            });
            s.apply(&ops).unwrap();
            s.apply(&[
                Op::Ack {
                    region: "c".into(),
                    up_to: 2,
                },
                Op::Delete {
                    region: "c".into(),
                    seqs: vec![4],
                },
                Op::ForgetAccepted { before_ms: 15 },
            ])
            .unwrap();
        }
        let stream = {
            let s = SpoolStore::open(&path, "gw-other").unwrap();
            s.stream().clone()
        };
        assert!(stream.as_str().starts_with("gw-a."), "kept: {stream}");
        let s = SpoolStore::open(&path, "gw-a").unwrap();
        let l = s.load().unwrap();
        let q = &l.queues["c"];
        let (acked, entries) = (q.acked, &q.entries);
        assert_eq!(acked, 2);
        assert_eq!(q.deleted_through, 4);
        assert_eq!(
            entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![3, 5]
        );
        assert_eq!(entries[0].forward.as_ref().unwrap().subject, "orders.new");
        assert_eq!(l.stream, stream);
        assert_eq!(
            l.inbox,
            vec![(StreamId::from("gw-b.1"), "b".to_owned(), 17)]
        );
        assert_eq!(l.accepted, vec![([2; 16], 20)]);
        assert_eq!(l.interest["c"], vec!["orders.>", "x"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
