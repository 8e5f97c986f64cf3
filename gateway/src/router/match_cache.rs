//! A session's cache of which subscription groups a subject matches, so that a publisher
//! sending to the same subjects again and again (the common case) skips the subject-table
//! walk: one hash lookup instead of a trie descent per token, as nats-server keeps a cache
//! in front of its sublist.
//!
//! Sans-I/O: the caller passes the table's generation (the router bumps it whenever it
//! stores a new table) and a function that walks the table on a miss. An entry of another
//! generation is never used. The cache is per session (no lock) and bounded: when it holds
//! `MAX_ENTRIES` subjects it is cleared, and a session whose subjects rarely repeat (an id
//! in every subject, say) stops caching for a while, so it does not pay for a cache it
//! cannot use.

use std::collections::HashMap;

use nexus_proto::ByteString;

/// Most subjects remembered per session.
pub const MAX_ENTRIES: usize = 1024;
/// After a cache filled up with fewer hits than entries, this many lookups go straight to
/// the table before caching is tried again.
pub const BYPASS_LOOKUPS: u32 = 64 * 1024;

/// See the module docs.
#[derive(Debug)]
pub struct MatchCache<V> {
    generation: u64,
    entries: HashMap<ByteString, Box<[V]>, rustc_hash::FxBuildHasher>,
    /// Hits since the cache was last cleared.
    hits: usize,
    /// Lookups left to bypass the cache.
    bypass: u32,
}

impl<V> Default for MatchCache<V> {
    fn default() -> Self {
        MatchCache {
            generation: 0,
            entries: HashMap::default(),
            hits: 0,
            bypass: 0,
        }
    }
}

/// Where [`MatchCache::lookup`] found the values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    Hit,
    Miss,
    Bypassed,
}

impl<V: Clone> MatchCache<V> {
    /// Calls `each` for the values matching `subject` in the table of `generation`, from the
    /// cache or, on a miss, from `walk` (which calls its argument for every match, as
    /// `SubjectTable::for_each_match` does).
    pub fn lookup(
        &mut self,
        generation: u64,
        subject: &str,
        walk: impl FnOnce(&mut dyn FnMut(&V)),
        mut each: impl FnMut(&V),
    ) -> Lookup {
        if generation != self.generation {
            self.entries.clear();
            self.hits = 0;
            self.generation = generation;
        }
        if self.bypass > 0 {
            self.bypass -= 1;
            walk(&mut each);
            return Lookup::Bypassed;
        }
        if let Some(values) = self.entries.get(subject) {
            self.hits += 1;
            values.iter().for_each(each);
            return Lookup::Hit;
        }
        if self.entries.len() >= MAX_ENTRIES {
            if self.hits < self.entries.len() {
                self.bypass = BYPASS_LOOKUPS;
            }
            self.entries = HashMap::default();
            self.hits = 0;
        }
        let mut found = Vec::new();
        walk(&mut |v: &V| {
            found.push(v.clone());
            each(v);
        });
        // A copy: the subject usually shares the buffer its batch arrived in, which a key
        // would keep alive for as long as the entry lives.
        let key = ByteString::from(subject);
        self.entries.insert(key, found.into_boxed_slice());
        Lookup::Miss
    }

    /// Subjects cached now.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A "table" matching `a.*` to 1 and `a.b` to 2.
    fn walk(subject: &str) -> impl FnOnce(&mut dyn FnMut(&u32)) + '_ {
        move |f| {
            if subject.starts_with("a.") {
                f(&1);
            }
            if subject == "a.b" {
                f(&2);
            }
        }
    }

    fn lookup(c: &mut MatchCache<u32>, generation: u64, subject: &str) -> (Lookup, Vec<u32>) {
        let mut got = Vec::new();
        let subject = ByteString::from(subject);
        let how = c.lookup(generation, &subject, walk(&subject), |v| got.push(*v));
        (how, got)
    }

    #[test]
    fn hits_give_what_the_table_gave() {
        let mut c = MatchCache::default();
        assert_eq!(lookup(&mut c, 1, "a.b"), (Lookup::Miss, vec![1, 2]));
        assert_eq!(lookup(&mut c, 1, "a.b"), (Lookup::Hit, vec![1, 2]));
        assert_eq!(lookup(&mut c, 1, "a.c"), (Lookup::Miss, vec![1]));
        assert_eq!(lookup(&mut c, 1, "x"), (Lookup::Miss, vec![]));
        assert_eq!(lookup(&mut c, 1, "x"), (Lookup::Hit, vec![]));
        assert_eq!(c.len(), 3);
    }

    #[test]
    fn another_generation_is_never_used() {
        let mut c = MatchCache::default();
        lookup(&mut c, 1, "a.b");
        assert_eq!(lookup(&mut c, 2, "a.b").0, Lookup::Miss);
        assert_eq!(c.len(), 1);
        assert_eq!(lookup(&mut c, 2, "a.b").0, Lookup::Hit);
    }

    #[test]
    fn it_stays_bounded_and_steps_aside_when_subjects_do_not_repeat() {
        let mut c = MatchCache::default();
        for i in 0..MAX_ENTRIES {
            assert_eq!(lookup(&mut c, 1, &format!("u.{i}")).0, Lookup::Miss);
        }
        assert_eq!(c.len(), MAX_ENTRIES);
        // Full, with no hits at all: cleared, and the next lookups go to the table.
        assert_eq!(lookup(&mut c, 1, "u.new").0, Lookup::Miss);
        assert_eq!(c.len(), 1);
        for _ in 0..BYPASS_LOOKUPS {
            assert_eq!(lookup(&mut c, 1, "u.new").0, Lookup::Bypassed);
        }
        assert_eq!(lookup(&mut c, 1, "u.new").0, Lookup::Hit);
    }

    #[test]
    fn a_full_cache_with_reuse_keeps_caching() {
        let mut c = MatchCache::default();
        for i in 0..MAX_ENTRIES {
            lookup(&mut c, 1, &format!("s.{i}"));
            lookup(&mut c, 1, &format!("s.{i}"));
        }
        assert_eq!(lookup(&mut c, 1, "s.new").0, Lookup::Miss);
        assert_eq!(lookup(&mut c, 1, "s.new").0, Lookup::Hit);
    }
}
