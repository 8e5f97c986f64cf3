//! Which API keys have sessions on which gateways of the region (sans-I/O): the input of the
//! per-key rate limits' split (docs/security.md §8).
//!
//! A key's limits hold for its region as a whole, and each gateway enforces a share of them.
//! Dividing by every live gateway of the region gave a key whose sessions all sit on one
//! gateway of three a third of its limit. So each gateway tells its cluster peers which keys
//! have authenticated sessions on it (`KeyActivity` link frames: the whole set when a link
//! comes up, changes after), and enforces `1 / (1 + peers where the key is active)` of a
//! key's limits: the whole limit for a key used only here, half for a key used here and on
//! one other gateway.
//!
//! Where nothing is known the split stays conservative: a gateway of the region that the
//! control plane lists but that has not told its keys (its link not up yet, or down past the
//! cluster grace) counts as having sessions of every key, as the even split by live gateways
//! did. A peer's keys are kept while its link is down within the grace (as its interest is).
//! So the region never admits more than the even split's bound, and a key used on one
//! gateway gets its whole limit once the cluster is linked. A change of share rebuilds the
//! key's limiter with a full burst of the new share (docs/security.md §8).

use std::collections::{BTreeSet, HashMap};

use nexus_proto::v1::KeyActivity as Frame;

/// Key activity of this gateway and of its cluster peers.
#[derive(Debug, Default)]
pub struct KeyActivity {
    /// Keys with at least one authenticated session here.
    local: BTreeSet<String>,
    /// Keys each cluster peer said it has sessions of (peers that said none are absent).
    peers: HashMap<String, BTreeSet<String>>,
    /// Cluster peers that told their keys (a full frame) and are not gone since.
    known: BTreeSet<String>,
}

/// A key whose number of peers with sessions of it changed, and that number now.
pub type ShareChange = (String, u32);

impl KeyActivity {
    /// `key` got its first session here (`present`) or lost its last: the frame for cluster
    /// peers, if anything changed.
    pub fn local_changed(&mut self, key: &str, present: bool) -> Option<Frame> {
        let changed = if present {
            self.local.insert(key.to_owned())
        } else {
            self.local.remove(key)
        };
        changed.then(|| Frame {
            full: false,
            add: if present {
                vec![key.to_owned()]
            } else {
                vec![]
            },
            remove: if present {
                vec![]
            } else {
                vec![key.to_owned()]
            },
        })
    }

    /// Everything active here, for a peer whose link just came up.
    pub fn local_full(&self) -> Frame {
        Frame {
            full: true,
            add: self.local.iter().cloned().collect(),
            remove: Vec::new(),
        }
    }

    /// Cluster peer `gateway` sent `frame`: the keys whose count of active peers changed.
    pub fn peer_update(&mut self, gateway: &str, frame: &Frame) -> Vec<ShareChange> {
        if frame.full {
            self.known.insert(gateway.to_owned());
        }
        let before = self.peers.get(gateway).cloned().unwrap_or_default();
        let mut now = if frame.full {
            BTreeSet::new()
        } else {
            before.clone()
        };
        for k in &frame.remove {
            now.remove(k);
        }
        for k in &frame.add {
            now.insert(k.clone());
        }
        self.replace(gateway, before, now)
    }

    /// Cluster peer `gateway` is gone: its keys no longer count.
    pub fn peer_gone(&mut self, gateway: &str) -> Vec<ShareChange> {
        self.known.remove(gateway);
        let before = self.peers.get(gateway).cloned().unwrap_or_default();
        self.replace(gateway, before, BTreeSet::new())
    }

    /// How many of `listed` (the region's other gateways the control plane lists) have not
    /// told their keys: each counts as having sessions of every key.
    pub fn unknown(&self, listed: &[&str]) -> u32 {
        listed.iter().filter(|g| !self.known.contains(**g)).count() as u32
    }

    /// How many cluster peers have sessions of `key`.
    pub fn peers_active(&self, key: &str) -> u32 {
        self.peers.values().filter(|s| s.contains(key)).count() as u32
    }

    fn replace(
        &mut self,
        gateway: &str,
        before: BTreeSet<String>,
        now: BTreeSet<String>,
    ) -> Vec<ShareChange> {
        let changed: Vec<String> = before.symmetric_difference(&now).cloned().collect();
        if now.is_empty() {
            self.peers.remove(gateway);
        } else {
            self.peers.insert(gateway.to_owned(), now);
        }
        changed
            .into_iter()
            .map(|k| {
                let n = self.peers_active(&k);
                (k, n)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(full: bool, add: &[&str], remove: &[&str]) -> Frame {
        Frame {
            full,
            add: add.iter().map(|s| s.to_string()).collect(),
            remove: remove.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn local_changes_are_told_once_and_a_new_peer_gets_them_all() {
        let mut k = KeyActivity::default();
        assert_eq!(k.local_changed("a", true), Some(frame(false, &["a"], &[])));
        assert_eq!(k.local_changed("a", true), None);
        k.local_changed("b", true);
        assert_eq!(k.local_full(), frame(true, &["a", "b"], &[]));
        assert_eq!(k.local_changed("a", false), Some(frame(false, &[], &["a"])));
        assert_eq!(k.local_changed("a", false), None);
        assert_eq!(k.local_full(), frame(true, &["b"], &[]));
    }

    #[test]
    fn peers_are_counted_per_key_and_forgotten_when_gone() {
        let mut k = KeyActivity::default();
        assert_eq!(
            k.peer_update("a2", &frame(true, &["x", "y"], &[])),
            vec![("x".to_string(), 1), ("y".to_string(), 1)]
        );
        assert_eq!(
            k.peer_update("a3", &frame(false, &["x"], &[])),
            vec![("x".to_string(), 2)]
        );
        assert_eq!(k.peers_active("x"), 2);
        assert_eq!(k.peers_active("z"), 0);
        // A full update replaces: y gone from a2, x kept (no change for x).
        assert_eq!(
            k.peer_update("a2", &frame(true, &["x"], &[])),
            vec![("y".to_string(), 0)]
        );
        assert_eq!(
            k.peer_update("a3", &frame(false, &[], &["x"])),
            vec![("x".to_string(), 1)]
        );
        assert_eq!(k.peer_gone("a2"), vec![("x".to_string(), 0)]);
        assert_eq!(k.peer_gone("a2"), vec![]);
        assert!(k.peers.is_empty());
    }

    #[test]
    fn a_listed_peer_that_has_not_told_its_keys_counts_as_unknown() {
        let mut k = KeyActivity::default();
        assert_eq!(k.unknown(&["a2", "a3"]), 2);
        // a3 told (nothing active there), a2 did not: one unknown.
        k.peer_update("a3", &frame(true, &[], &[]));
        assert_eq!(k.unknown(&["a2", "a3"]), 1);
        // A change alone does not make a peer known.
        k.peer_update("a2", &frame(false, &["x"], &[]));
        assert_eq!(k.unknown(&["a2", "a3"]), 1);
        k.peer_update("a2", &frame(true, &["x"], &[]));
        assert_eq!(k.unknown(&["a2", "a3"]), 0);
        k.peer_gone("a3");
        assert_eq!(k.unknown(&["a2", "a3"]), 1);
        assert_eq!(k.unknown(&[]), 0);
    }
}
