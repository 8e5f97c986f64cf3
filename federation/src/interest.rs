//! Interest exchange (sans-I/O): which subject patterns each region has subscribers for.
//!
//! [`LocalInterest`] counts this region's subscriptions per pattern and says when the set
//! of advertised patterns changes (a pattern's first subscriber appears or its last one
//! leaves), so only those edges cross the WAN. [`RemoteInterest`] holds what every other
//! region advertised and answers "which regions want this subject?" — a region is sent a
//! subject only if it asked for it (interest-only propagation, as NATS does since 2.9).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use nexus_gateway::subject_table::SubjectTable;
use nexus_proto::v1::InterestUpdate;

/// This region's subscriptions, by pattern.
#[derive(Default, Debug)]
pub struct LocalInterest {
    counts: BTreeMap<String, u32>,
}

impl LocalInterest {
    /// One more subscriber on `pattern`; returns the delta to advertise, if any.
    pub fn add(&mut self, pattern: &str) -> Option<InterestUpdate> {
        let n = self.counts.entry(pattern.to_owned()).or_insert(0);
        *n += 1;
        (*n == 1).then(|| InterestUpdate {
            full: false,
            add: vec![pattern.to_owned()],
            remove: Vec::new(),
        })
    }

    /// One fewer subscriber on `pattern`; returns the delta to advertise, if any.
    pub fn remove(&mut self, pattern: &str) -> Option<InterestUpdate> {
        let n = self.counts.get_mut(pattern)?;
        *n -= 1;
        if *n > 0 {
            return None;
        }
        self.counts.remove(pattern);
        Some(InterestUpdate {
            full: false,
            add: Vec::new(),
            remove: vec![pattern.to_owned()],
        })
    }

    /// Everything, for a link that just came up (or back).
    pub fn full(&self) -> InterestUpdate {
        InterestUpdate {
            full: true,
            add: self.counts.keys().cloned().collect(),
            remove: Vec::new(),
        }
    }

    pub fn patterns(&self) -> impl Iterator<Item = &str> {
        self.counts.keys().map(String::as_str)
    }
}

/// The interest key of a subscription group: the pattern, or "pattern queue_group".
pub fn interest_key(pattern: &str, queue: Option<&str>) -> String {
    match queue {
        Some(q) if !q.is_empty() => format!("{pattern} {q}"),
        _ => pattern.to_owned(),
    }
}

/// Splits an interest key into its pattern and queue group; `None` if the pattern is
/// invalid or the key has more than one space.
fn parse_key(key: &str) -> Option<(&str, Option<&str>)> {
    let (pattern, queue) = match key.split_once(' ') {
        Some((p, q)) if !q.is_empty() && !q.contains(char::is_whitespace) => (p, Some(q)),
        Some(_) => return None,
        None => (key, None),
    };
    nexus_proto::subject::validate_pattern(pattern).ok()?;
    Some((pattern, queue))
}

/// One region's interest in a subject: its plain subscriptions, or one of its queue groups.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Interested {
    pub region: String,
    /// `None` for plain subscriptions.
    pub queue: Option<String>,
}

/// What each remote region advertised.
#[derive(Default, Clone)]
pub struct RemoteInterest {
    by_region: HashMap<String, BTreeSet<String>>,
    /// Pattern -> (region, queue group), for matching subjects; rebuilt on change (changes
    /// are rare compared with lookups).
    table: SubjectTable<Interested>,
}

impl RemoteInterest {
    /// Applies an update from `region`. Invalid patterns are skipped and returned, so a
    /// peer's bad input cannot poison the table.
    pub fn apply(&mut self, region: &str, update: &InterestUpdate) -> Vec<String> {
        let mut rejected = Vec::new();
        let set = self.by_region.entry(region.to_owned()).or_default();
        if update.full {
            set.clear();
        }
        for p in &update.remove {
            set.remove(p);
        }
        for p in &update.add {
            if parse_key(p).is_some() {
                set.insert(p.clone());
            } else {
                rejected.push(p.clone());
            }
        }
        self.rebuild();
        rejected
    }

    /// Forgets a region (its link went down for good).
    pub fn forget(&mut self, region: &str) {
        if self.by_region.remove(region).is_some() {
            self.rebuild();
        }
    }

    fn rebuild(&mut self) {
        let mut table = SubjectTable::default();
        for (region, keys) in &self.by_region {
            for key in keys {
                if let Some((pattern, queue)) = parse_key(key) {
                    table = table.insert(
                        pattern,
                        Interested {
                            region: region.clone(),
                            queue: queue.map(str::to_owned),
                        },
                    );
                }
            }
        }
        self.table = table;
    }

    /// Regions with at least one pattern matching `subject`, sorted, without duplicates.
    /// Regions with any interest (plain or a queue group) in `subject`.
    pub fn regions_for(&self, subject: &str) -> Vec<String> {
        let mut out = BTreeSet::new();
        self.table.for_each_match(subject, |r| {
            out.insert(r.region.clone());
        });
        out.into_iter().collect()
    }

    /// Every (region, plain or queue group) interested in `subject`, sorted, no repeats.
    pub fn matches(&self, subject: &str) -> Vec<Interested> {
        let mut out = BTreeSet::new();
        self.table.for_each_match(subject, |r| {
            out.insert(r.clone());
        });
        out.into_iter().collect()
    }

    /// Regions that advertised anything (or whose advertisement is remembered).
    pub fn regions(&self) -> Vec<String> {
        self.by_region.keys().cloned().collect()
    }

    pub fn patterns(&self, region: &str) -> Vec<String> {
        self.by_region
            .get(region)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_interest_advertises_edges_only() {
        let mut l = LocalInterest::default();
        assert_eq!(l.add("orders.>").unwrap().add, vec!["orders.>"]);
        assert!(l.add("orders.>").is_none(), "second subscriber: no change");
        assert!(l.remove("orders.>").is_none(), "one left: no change");
        assert_eq!(l.remove("orders.>").unwrap().remove, vec!["orders.>"]);
        assert!(l.remove("orders.>").is_none(), "unknown pattern is ignored");
        l.add("a.*");
        l.add("b");
        let full = l.full();
        assert!(full.full);
        assert_eq!(full.add, vec!["a.*", "b"]);
    }

    #[test]
    fn queue_groups_are_told_apart_from_plain_interest() {
        let mut r = RemoteInterest::default();
        let update = InterestUpdate {
            full: true,
            add: vec![
                interest_key("jobs.*", Some("workers")),
                interest_key("jobs.>", None),
                "bad key here".into(),
            ],
            remove: Vec::new(),
        };
        assert_eq!(r.apply("eu-west", &update), vec!["bad key here"]);
        assert_eq!(
            r.matches("jobs.resize"),
            vec![
                Interested {
                    region: "eu-west".into(),
                    queue: None
                },
                Interested {
                    region: "eu-west".into(),
                    queue: Some("workers".into())
                },
            ]
        );
        assert_eq!(r.regions_for("jobs.resize"), vec!["eu-west"]);
    }

    #[test]
    fn remote_interest_routes_only_to_interested_regions() {
        let mut r = RemoteInterest::default();
        r.apply(
            "eu-west",
            &InterestUpdate {
                full: true,
                add: vec!["orders.>".into(), "prices.eur".into()],
                remove: vec![],
            },
        );
        r.apply(
            "ap-south",
            &InterestUpdate {
                full: true,
                add: vec!["orders.*.created".into()],
                remove: vec![],
            },
        );
        assert_eq!(
            r.regions_for("orders.x.created"),
            vec!["ap-south", "eu-west"]
        );
        assert_eq!(r.regions_for("orders.x.paid"), vec!["eu-west"]);
        assert_eq!(r.regions_for("prices.usd"), Vec::<String>::new());
        // Deltas.
        r.apply(
            "eu-west",
            &InterestUpdate {
                full: false,
                add: vec![],
                remove: vec!["orders.>".into()],
            },
        );
        assert_eq!(r.regions_for("orders.x.paid"), Vec::<String>::new());
        // A full update replaces; bad patterns are refused, not stored.
        let rejected = r.apply(
            "ap-south",
            &InterestUpdate {
                full: true,
                add: vec!["a..b".into(), "ok.>".into()],
                remove: vec![],
            },
        );
        assert_eq!(rejected, vec!["a..b"]);
        assert_eq!(r.regions_for("orders.x.created"), Vec::<String>::new());
        assert_eq!(r.regions_for("ok.go"), vec!["ap-south"]);
        r.forget("ap-south");
        assert!(r.regions_for("ok.go").is_empty());
    }
}
