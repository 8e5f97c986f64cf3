//! `SubjectTable`: a persistent trie from subscription patterns to values (sans-I/O).
//!
//! Publishing reads the table far more often than subscribing changes it, so the table is an
//! immutable value: a change builds a new root by copying only the nodes on the changed path
//! (the rest is shared through `Arc`) and the router swaps the new root in atomically. Readers
//! never take a lock and never see a half-applied change.
//!
//! Matching walks the subject's tokens once, following the literal child, the `*` child and
//! the `>` child at each level; it does not allocate.

use std::collections::HashMap;
use std::sync::Arc;

/// An immutable trie of patterns; cheap to clone (one `Arc`).
pub struct SubjectTable<V> {
    root: Arc<Node<V>>,
    len: usize,
}

struct Node<V> {
    children: HashMap<Box<str>, Arc<Node<V>>>,
    /// Values whose pattern ends at this node.
    values: Vec<V>,
}

impl<V> Default for Node<V> {
    fn default() -> Self {
        Self {
            children: HashMap::new(),
            values: Vec::new(),
        }
    }
}

impl<V: Clone> Clone for Node<V> {
    fn clone(&self) -> Self {
        Self {
            children: self.children.clone(),
            values: self.values.clone(),
        }
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
            let child = match node.children.get(token) {
                Some(child) => insert_at(child, tokens, value),
                None => insert_at(&Node::default(), tokens, value),
            };
            copy.children.insert(token.into(), Arc::new(child));
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
            if let Some(child) = node.children.get(token) {
                match remove_at(child, tokens, remove, removed) {
                    Some(child) => {
                        copy.children.insert(token.into(), Arc::new(child));
                    }
                    None => {
                        copy.children.remove(token);
                    }
                }
            }
        }
    }
    if copy.values.is_empty() && copy.children.is_empty() {
        None
    } else {
        Some(copy)
    }
}

fn match_at<V>(node: &Node<V>, subject: &str, f: &mut impl FnMut(&V)) {
    let (token, rest) = match subject.split_once('.') {
        Some((token, rest)) => (token, Some(rest)),
        None => (subject, None),
    };
    // `>` matches this token and everything after it.
    if let Some(full) = node.children.get(">") {
        full.values.iter().for_each(&mut *f);
    }
    for child in [node.children.get(token), node.children.get("*")]
        .into_iter()
        .flatten()
    {
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
        assert!(t.root.children.is_empty());
        let (t, removed) = t.remove("nothing.here", |_| true);
        assert_eq!(removed, 0);
        assert!(t.is_empty());
    }
}
