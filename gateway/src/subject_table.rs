//! `SubjectTable`: a persistent trie from subscription patterns to values (sans-I/O).
//!
//! Publishing reads the table far more often than subscribing changes it, so the table is an
//! immutable value: a change builds a new root by copying only the nodes on the changed path
//! (the rest is shared through `Arc`) and the router swaps the new root in atomically. Readers
//! never take a lock and never see a half-applied change.
//!
//! A node with many literal children keeps them in a persistent hash map (`imbl`'s hash array
//! mapped trie), so copying the node on the changed path is O(1) and changing one child copies
//! O(log n) of the map. With a plain hash map each copy cloned every sibling: a level with
//! 40 000 children (`sensors.<id>.>` for 40 000 ids) made each subscribe cost ~1 ms and
//! 40 000 of them 51 s (docs/benchmarks.md, "Scale"). A node with few children (most of
//! them) keeps a plain FxHash map, the cheapest to look up, and cheap to copy at that size.
//!
//! Matching walks the subject's tokens once, following the literal child, the `*` child and
//! the `>` child at each level; it does not allocate. The wildcard children are kept outside
//! the map, so a level costs one hash lookup (none when the node has no literal children),
//! and the map uses FxHash rather than SipHash: it runs for every token of every published
//! message, and the keys come from validated subscriptions, so HashDoS resistance buys
//! little here.

use std::sync::Arc;

use imbl::GenericHashMap;
use imbl::shared_ptr::DefaultSharedPtr;
use rustc_hash::{FxBuildHasher, FxHashMap};

/// Literal children by token: a plain map while small, a persistent one once large. Keys are
/// `Arc<str>` so that copying either (`imbl` clones the entries of the nodes it copies) takes
/// no allocation per key.
enum Children<V> {
    Small(FxHashMap<Arc<str>, Arc<Node<V>>>),
    Large(GenericHashMap<Arc<str>, Arc<Node<V>>, FxBuildHasher, DefaultSharedPtr>),
}

/// A small map grows into a persistent one past this many children...
const LARGE_FROM: usize = 64;
/// ...and goes back at this many (apart, so one pattern coming and going at the boundary does
/// not convert the map each time).
const SMALL_AT: usize = 32;

impl<V> Default for Children<V> {
    fn default() -> Self {
        Children::Small(FxHashMap::default())
    }
}

impl<V> Clone for Children<V> {
    fn clone(&self) -> Self {
        match self {
            Children::Small(m) => Children::Small(m.clone()),
            Children::Large(m) => Children::Large(m.clone()),
        }
    }
}

impl<V> Children<V> {
    fn get(&self, token: &str) -> Option<&Arc<Node<V>>> {
        match self {
            Children::Small(m) => m.get(token),
            Children::Large(m) => m.get(token),
        }
    }

    fn is_empty(&self) -> bool {
        match self {
            Children::Small(m) => m.is_empty(),
            Children::Large(m) => m.is_empty(),
        }
    }

    fn insert(&mut self, token: &str, child: Arc<Node<V>>) {
        match self {
            Children::Small(m) => {
                m.insert(token.into(), child);
                if m.len() > LARGE_FROM {
                    *self = Children::Large(m.drain().collect());
                }
            }
            Children::Large(m) => {
                m.insert(token.into(), child);
            }
        }
    }

    fn remove(&mut self, token: &str) {
        match self {
            Children::Small(m) => {
                m.remove(token);
            }
            Children::Large(m) => {
                m.remove(token);
                if m.len() <= SMALL_AT {
                    *self =
                        Children::Small(m.iter().map(|(k, v)| (k.clone(), v.clone())).collect());
                }
            }
        }
    }
}

/// An immutable trie of patterns; cheap to clone (one `Arc`).
pub struct SubjectTable<V> {
    root: Arc<Node<V>>,
    len: usize,
}

struct Node<V> {
    /// Literal tokens.
    children: Children<V>,
    /// The `*` child.
    star: Option<Arc<Node<V>>>,
    /// The `>` child.
    full: Option<Arc<Node<V>>>,
    /// Values whose pattern ends at this node.
    values: Vec<V>,
}

impl<V> Default for Node<V> {
    fn default() -> Self {
        Self {
            children: Children::default(),
            star: None,
            full: None,
            values: Vec::new(),
        }
    }
}

impl<V: Clone> Clone for Node<V> {
    fn clone(&self) -> Self {
        Self {
            children: self.children.clone(),
            star: self.star.clone(),
            full: self.full.clone(),
            values: self.values.clone(),
        }
    }
}

impl<V> Node<V> {
    fn child(&self, token: &str) -> Option<&Arc<Node<V>>> {
        match token {
            "*" => self.star.as_ref(),
            ">" => self.full.as_ref(),
            _ => self.children.get(token),
        }
    }

    fn set_child(&mut self, token: &str, child: Option<Arc<Node<V>>>) {
        match (token, child) {
            ("*", child) => self.star = child,
            (">", child) => self.full = child,
            (_, Some(child)) => self.children.insert(token, child),
            (_, None) => self.children.remove(token),
        }
    }

    fn is_empty(&self) -> bool {
        self.values.is_empty()
            && self.children.is_empty()
            && self.star.is_none()
            && self.full.is_none()
    }
}

impl<V> Clone for SubjectTable<V> {
    fn clone(&self) -> Self {
        Self {
            root: self.root.clone(),
            len: self.len,
        }
    }
}

impl<V> Default for SubjectTable<V> {
    fn default() -> Self {
        Self {
            root: Arc::new(Node::default()),
            len: 0,
        }
    }
}

impl<V: Clone> SubjectTable<V> {
    /// Number of values stored.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Returns a new table with `value` added under `pattern` (already validated).
    pub fn insert(&self, pattern: &str, value: V) -> Self {
        let root = insert_at(&self.root, pattern.split('.'), value);
        Self {
            root: Arc::new(root),
            len: self.len + 1,
        }
    }

    /// Returns a new table without the values under `pattern` for which `remove` is true, and
    /// how many were removed. Nodes left empty are pruned.
    pub fn remove(&self, pattern: &str, remove: impl Fn(&V) -> bool) -> (Self, usize) {
        let mut removed = 0;
        let root =
            remove_at(&self.root, pattern.split('.'), &remove, &mut removed).unwrap_or_default();
        (
            Self {
                root: Arc::new(root),
                len: self.len - removed,
            },
            removed,
        )
    }

    /// Calls `f` for every value whose pattern matches `subject` (a literal subject).
    pub fn for_each_match(&self, subject: &str, mut f: impl FnMut(&V)) {
        match_at(&self.root, subject, &mut f);
    }
}

fn insert_at<'a, V: Clone>(
    node: &Node<V>,
    mut tokens: impl Iterator<Item = &'a str>,
    value: V,
) -> Node<V> {
    let mut copy = node.clone();
    match tokens.next() {
        None => copy.values.push(value),
        Some(token) => {
            let child = match node.child(token) {
                Some(child) => insert_at(child, tokens, value),
                None => insert_at(&Node::default(), tokens, value),
            };
            copy.set_child(token, Some(Arc::new(child)));
        }
    }
    copy
}

/// Returns the rebuilt node, or `None` when it ended up empty.
fn remove_at<'a, V: Clone>(
    node: &Node<V>,
    mut tokens: impl Iterator<Item = &'a str>,
    remove: &impl Fn(&V) -> bool,
    removed: &mut usize,
) -> Option<Node<V>> {
    let mut copy = node.clone();
    match tokens.next() {
        None => {
            let before = copy.values.len();
            copy.values.retain(|v| !remove(v));
            *removed += before - copy.values.len();
        }
        Some(token) => {
            if let Some(child) = node.child(token) {
                let child = remove_at(child, tokens, remove, removed).map(Arc::new);
                copy.set_child(token, child);
            }
        }
    }
    if copy.is_empty() { None } else { Some(copy) }
}

fn match_at<V>(node: &Node<V>, subject: &str, f: &mut impl FnMut(&V)) {
    // A byte search: subjects are short, and `split_once(char)` sets up a `memchr` per token.
    let (token, rest) = match subject.bytes().position(|b| b == b'.') {
        Some(dot) => (&subject[..dot], Some(&subject[dot + 1..])),
        None => (subject, None),
    };
    // `>` matches this token and everything after it.
    if let Some(full) = &node.full {
        full.values.iter().for_each(&mut *f);
    }
    // Subjects are literal (validated), so `token` is never `*` or `>`.
    let literal = if node.children.is_empty() {
        None
    } else {
        node.children.get(token)
    };
    for child in [literal, node.star.as_ref()].into_iter().flatten() {
        match rest {
            None => child.values.iter().for_each(&mut *f),
            Some(rest) => match_at(child, rest, f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(table: &SubjectTable<u32>, subject: &str) -> Vec<u32> {
        let mut out = Vec::new();
        table.for_each_match(subject, |v| out.push(*v));
        out.sort();
        out
    }

    #[test]
    fn literal_and_wildcards() {
        let t = SubjectTable::default()
            .insert("a.b.c", 1)
            .insert("a.*.c", 2)
            .insert("a.>", 3)
            .insert(">", 4)
            .insert("a.b", 5)
            .insert("*.b.*", 6)
            .insert("x.y", 7);
        assert_eq!(matches(&t, "a.b.c"), vec![1, 2, 3, 4, 6]);
        assert_eq!(matches(&t, "a.b"), vec![3, 4, 5]);
        assert_eq!(matches(&t, "a"), vec![4]);
        assert_eq!(matches(&t, "a.z.c"), vec![2, 3, 4]);
        assert_eq!(matches(&t, "a.b.c.d"), vec![3, 4]);
        assert_eq!(matches(&t, "x.y"), vec![4, 7]);
        assert_eq!(matches(&t, "q"), vec![4]);
        assert_eq!(t.len(), 7);
    }

    #[test]
    fn star_does_not_match_across_tokens_and_gt_needs_one() {
        let t = SubjectTable::default().insert("a.*", 1).insert("a.>", 2);
        assert_eq!(matches(&t, "a"), Vec::<u32>::new());
        assert_eq!(matches(&t, "a.b"), vec![1, 2]);
        assert_eq!(matches(&t, "a.b.c"), vec![2]);
    }

    #[test]
    fn a_level_with_many_children_grows_into_a_persistent_map_and_back() {
        let mut t = SubjectTable::default().insert("s.*", 0);
        let mut snapshots = Vec::new();
        for i in 1..=200u32 {
            t = t.insert(&format!("s.{i}"), i);
            if i % 50 == 0 {
                snapshots.push((i, t.clone()));
            }
        }
        assert!(matches!(
            t.root.children.get("s").unwrap().children,
            Children::Large(_)
        ));
        assert_eq!(matches(&t, "s.150"), vec![0, 150]);
        for i in 1..=190u32 {
            t = t.remove(&format!("s.{i}"), |v| *v == i).0;
        }
        assert!(matches!(
            t.root.children.get("s").unwrap().children,
            Children::Small(_)
        ));
        assert_eq!(matches(&t, "s.150"), vec![0]);
        assert_eq!(matches(&t, "s.195"), vec![0, 195]);
        assert_eq!(t.len(), 11);
        // Snapshots taken on the way are what they were.
        for (n, snap) in &snapshots {
            assert_eq!(snap.len(), *n as usize + 1);
            assert_eq!(matches(snap, &format!("s.{n}")), vec![0, *n]);
            assert_eq!(matches(snap, &format!("s.{}", n + 1)), vec![0]);
        }
    }

    #[test]
    fn old_snapshots_are_unchanged_by_updates() {
        let t1 = SubjectTable::default().insert("a.b", 1);
        let t2 = t1.insert("a.b", 2).insert("a.*", 3);
        let (t3, removed) = t2.remove("a.b", |v| *v == 1);
        assert_eq!(removed, 1);
        assert_eq!(matches(&t1, "a.b"), vec![1]);
        assert_eq!(matches(&t2, "a.b"), vec![1, 2, 3]);
        assert_eq!(matches(&t3, "a.b"), vec![2, 3]);
        assert_eq!(t3.len(), 2);
    }

    #[test]
    fn removing_everything_prunes_nodes() {
        let t = SubjectTable::default().insert("a.b.c", 1).insert("a.>", 2);
        let (t, _) = t.remove("a.b.c", |_| true);
        let (t, _) = t.remove("a.>", |_| true);
        assert!(t.is_empty());
        assert!(t.root.is_empty());
        let (t, removed) = t.remove("nothing.here", |_| true);
        assert_eq!(removed, 0);
        assert!(t.is_empty());
    }
}
