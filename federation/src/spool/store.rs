//! The spool on disk (redb): unconfirmed messages per receiving region, the last `seq` each
//! region confirmed, the last `seq` recorded from each sending region (receiver-side
//! deduplication), and the interest other regions advertised (so messages published while a
//! region is unreachable, even right after a restart, are still spooled for it).
//!
//! Every batch of operations is one transaction, committed durably before the caller is told;
//! a crash leaves either all of a batch or none of it.

use std::collections::HashMap;
use std::path::Path;

use nexus_proto::v1::{SpoolRecord, Spooled};
use prost::Message;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

const ENTRIES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("entries");
const ACKED: TableDefinition<&str, u64> = TableDefinition::new("acked");
const RECEIVED: TableDefinition<&str, u64> = TableDefinition::new("received");
const INTEREST: TableDefinition<&str, &str> = TableDefinition::new("interest");

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
    /// Everything from `origin` up to `seq` was delivered here.
    Received { origin: String, seq: u64 },
    /// `region`'s advertised interest, replacing what was stored.
    Interest {
        region: String,
        patterns: Vec<String>,
    },
}

/// What a gateway finds in its spool when it starts.
#[derive(Debug, Default)]
pub struct Loaded {
    /// region -> (last confirmed seq, unconfirmed messages)
    pub queues: HashMap<String, (u64, Vec<Spooled>)>,
    pub received: HashMap<String, u64>,
    pub interest: HashMap<String, Vec<String>>,
}

pub struct SpoolStore {
    db: Database,
    path: String,
}

impl SpoolStore {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let err = |message: String| StoreError {
            path: path.display().to_string(),
            message,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| err(format!("cannot create {}: {e}", dir.display())))?;
        }
        let db = Database::create(path).map_err(|e| err(e.to_string()))?;
        let store = SpoolStore {
            db,
            path: path.display().to_string(),
        };
        // Create the tables so reads of a fresh spool find them.
        store.apply(&[])?;
        Ok(store)
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
            let mut received = w.open_table(RECEIVED).map_err(|e| self.err(e))?;
            let mut interest = w.open_table(INTEREST).map_err(|e| self.err(e))?;
            let mut buf = Vec::new();
            for op in ops {
                match op {
                    Op::Append { region, spooled } => {
                        buf.clear();
                        SpoolRecord {
                            route: spooled.route.clone(),
                            forward: spooled.forward.clone(),
                            spooled_at_ms: spooled.spooled_at_ms,
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
                    }
                    Op::Received { origin, seq } => {
                        let prev = received
                            .get(origin.as_str())
                            .map_err(|e| self.err(e))?
                            .map_or(0, |v| v.value());
                        received
                            .insert(origin.as_str(), prev.max(*seq))
                            .map_err(|e| self.err(e))?;
                    }
                    Op::Interest { region, patterns } => {
                        interest
                            .insert(region.as_str(), patterns.join("\n").as_str())
                            .map_err(|e| self.err(e))?;
                    }
                }
            }
        }
        w.commit().map_err(|e| self.err(e))
    }

    pub fn load(&self) -> Result<Loaded, StoreError> {
        let r = self.db.begin_read().map_err(|e| self.err(e))?;
        let mut out = Loaded::default();
        let acked = r.open_table(ACKED).map_err(|e| self.err(e))?;
        for row in acked.iter().map_err(|e| self.err(e))? {
            let (k, v) = row.map_err(|e| self.err(e))?;
            out.queues.entry(k.value().to_owned()).or_default().0 = v.value();
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
                .1
                .push(Spooled {
                    seq,
                    route: rec.route,
                    forward: rec.forward,
                    spooled_at_ms: rec.spooled_at_ms,
                });
        }
        let received = r.open_table(RECEIVED).map_err(|e| self.err(e))?;
        for row in received.iter().map_err(|e| self.err(e))? {
            let (k, v) = row.map_err(|e| self.err(e))?;
            out.received.insert(k.value().to_owned(), v.value());
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
        })
    }

    #[test]
    fn survives_reopen() {
        let dir = std::env::temp_dir().join(format!("nexus-spool-test-{}", std::process::id()));
        let path = dir.join("spool.redb");
        let _ = std::fs::remove_dir_all(&dir);
        {
            let s = SpoolStore::open(&path).unwrap();
            let mut ops: Vec<Op> = (1..=5)
                .map(|seq| Op::Append {
                    region: "c".into(),
                    spooled: spooled(seq),
                })
                .collect();
            ops.push(Op::Received {
                origin: "b".into(),
                seq: 17,
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
            ])
            .unwrap();
        }
        let s = SpoolStore::open(&path).unwrap();
        let l = s.load().unwrap();
        let (acked, entries) = &l.queues["c"];
        assert_eq!(*acked, 2);
        assert_eq!(
            entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![3, 5]
        );
        assert_eq!(entries[0].forward.as_ref().unwrap().subject, "orders.new");
        assert_eq!(l.received["b"], 17);
        assert_eq!(l.interest["c"], vec!["orders.>", "x"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
