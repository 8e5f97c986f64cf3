//! Message headers and W3C trace context (`traceparent`) generation.
//!
//! [`Headers`] is an ordered multi-map of string pairs stored directly in the wire
//! representation, so sending and receiving headers needs no conversion. Key lookups are
//! ASCII case-insensitive.

use nexus_proto::ByteString;
use nexus_proto::v1 as pb;

/// Header key of the W3C trace context.
pub const TRACEPARENT: &str = "traceparent";

/// Ordered message headers (keys may repeat).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Headers(pub(crate) Vec<pb::Header>);

impl Headers {
    /// No headers (does not allocate).
    pub const fn new() -> Self {
        Headers(Vec::new())
    }

    /// Empty headers with room for `n` entries.
    pub fn with_capacity(n: usize) -> Self {
        Headers(Vec::with_capacity(n))
    }

    /// Sets `key` to `value`, replacing every existing value of `key`.
    ///
    /// ```
    /// let mut h = nexus_client::Headers::new();
    /// h.insert("x-tenant", "acme").insert("X-Tenant", "globex");
    /// assert_eq!(h.get("x-tenant"), Some("globex"));
    /// assert_eq!(h.len(), 1);
    /// ```
    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<String>) -> &mut Self {
        let key = key.into();
        self.0.retain(|h| !h.key.eq_ignore_ascii_case(&key));
        self.0.push(pb::Header {
            key: key.into(),
            value: value.into().into(),
        });
        self
    }

    /// Adds `key: value`, keeping existing values of `key`.
    pub fn append(&mut self, key: impl Into<String>, value: impl Into<String>) -> &mut Self {
        self.0.push(pb::Header {
            key: key.into().into(),
            value: value.into().into(),
        });
        self
    }

    /// Builder-style [`insert`](Self::insert).
    pub fn with(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.insert(key, value);
        self
    }

    /// The first value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|h| h.key.eq_ignore_ascii_case(key))
            .map(|h| &*h.value)
    }

    /// Every value of `key`, in order.
    pub fn get_all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |h| h.key.eq_ignore_ascii_case(key))
            .map(|h| &*h.value)
    }

    /// True if `key` is present.
    pub fn contains_key(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Removes every value of `key`; returns whether any was present.
    pub fn remove(&mut self, key: &str) -> bool {
        let before = self.0.len();
        self.0.retain(|h| !h.key.eq_ignore_ascii_case(key));
        before != self.0.len()
    }

    /// `(key, value)` pairs in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|h| (&*h.key, &*h.value))
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True if there are no headers.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The `traceparent` header, if any.
    pub fn traceparent(&self) -> Option<&str> {
        self.get(TRACEPARENT)
    }

    /// Adds a `traceparent` unless one is present: a child of the current trace context
    /// ([`crate::trace`]), else a fresh one. The key is normalised to lowercase, as the
    /// gateway's presence check is case-sensitive.
    pub(crate) fn ensure_traceparent(&mut self) {
        let mut found = false;
        for h in &mut self.0 {
            if h.key.eq_ignore_ascii_case(TRACEPARENT) {
                if h.key != TRACEPARENT {
                    h.key = ByteString::from_static(TRACEPARENT);
                }
                found = true;
            }
        }
        if !found {
            self.0.push(pb::Header {
                key: ByteString::from_static(TRACEPARENT),
                value: crate::trace::outgoing(),
            });
        }
    }

    pub(crate) fn into_inner(self) -> Vec<pb::Header> {
        self.0
    }
}

impl std::fmt::Debug for Headers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Headers(
            iter.into_iter()
                .map(|(k, v)| pb::Header {
                    key: k.into().into(),
                    value: v.into().into(),
                })
                .collect(),
        )
    }
}

impl From<Vec<pb::Header>> for Headers {
    fn from(v: Vec<pb::Header>) -> Self {
        Headers(v)
    }
}

/// A new W3C `traceparent` (`00-<32 hex trace id>-<16 hex span id>-01`) with random, non-zero
/// ids.
pub fn new_traceparent() -> String {
    let mut b = [0u8; TRACEPARENT_LEN];
    format_traceparent(&mut b);
    // Every byte is ASCII.
    String::from_utf8(b.to_vec()).unwrap_or_default()
}

const TRACEPARENT_LEN: usize = 55;

/// [`new_traceparent`] for the publish path, which runs it for every message: the value is
/// cut from a per-thread buffer (a reference count instead of an allocation and a free).
pub(crate) fn fresh_traceparent() -> ByteString {
    const CHUNK: usize = TRACEPARENT_LEN * 64;
    thread_local! {
        static VALUES: std::cell::RefCell<bytes::BytesMut> =
            std::cell::RefCell::new(bytes::BytesMut::new());
    }
    let mut b = [0u8; TRACEPARENT_LEN];
    format_traceparent(&mut b);
    let value = VALUES.with(|values| {
        let mut values = values.borrow_mut();
        if values.capacity() < TRACEPARENT_LEN {
            *values = bytes::BytesMut::with_capacity(CHUNK);
        }
        values.extend_from_slice(&b);
        values.split_to(TRACEPARENT_LEN).freeze()
    });
    // Every byte is ASCII.
    ByteString::try_from(value).unwrap_or_default()
}

/// Writes a fresh `traceparent` into `b`. The ids come from a fast per-thread generator
/// (`fastrand`): they must not collide, they are not secrets, and `rand`'s ChaCha cost more
/// than the rest of a publish's headers.
fn format_traceparent(b: &mut [u8; TRACEPARENT_LEN]) {
    // All-zero ids are invalid per the spec. Drawn over the full range (a range starting
    // at 1 cost a 128-bit division per id) and the one zero value moved to 1.
    let trace = fastrand::u128(..).max(1);
    let span = fastrand::u64(..).max(1);
    // Formatted by hand: `format!` with `{:032x}` cost more than the rest of a publish's
    // header handling.
    b[..3].copy_from_slice(b"00-");
    put_hex(&mut b[3..35], trace);
    b[35] = b'-';
    put_hex(&mut b[36..52], span.into());
    b[52..].copy_from_slice(b"-01");
}

/// Writes the low `out.len() / 2` bytes of `v` as hex digits (lowercase, zero-padded) into
/// `out`, whose length is even: two digits per table lookup.
fn put_hex(out: &mut [u8], v: u128) {
    const PAIRS: [[u8; 2]; 256] = {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut pairs = [[0u8; 2]; 256];
        let mut i = 0;
        while i < 256 {
            pairs[i] = [DIGITS[i >> 4], DIGITS[i & 0xf]];
            i += 1;
        }
        pairs
    };
    for (i, pair) in out.chunks_exact_mut(2).rev().enumerate() {
        pair.copy_from_slice(&PAIRS[usize::from((v >> (8 * i)) as u8)]);
    }
}

/// True if `v` is a syntactically valid version-00 `traceparent`.
pub fn is_valid_traceparent(v: &str) -> bool {
    let b = v.as_bytes();
    if b.len() != 55 || b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
        return false;
    }
    let hex = |r: std::ops::Range<usize>| {
        b[r].iter()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
    };
    let nonzero = |r: std::ops::Range<usize>| b[r].iter().any(|&c| c != b'0');
    &v[0..2] == "00"
        && hex(3..35)
        && hex(36..52)
        && hex(53..55)
        && nonzero(3..35)
        && nonzero(36..52)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_format() {
        for _ in 0..100 {
            let t = new_traceparent();
            assert_eq!(t.len(), 55, "{t}");
            assert!(is_valid_traceparent(&t), "{t}");
            assert!(t.starts_with("00-") && t.ends_with("-01"));
        }
        assert_ne!(new_traceparent(), new_traceparent());
        let fresh: Vec<_> = (0..200).map(|_| fresh_traceparent()).collect();
        for t in &fresh {
            assert!(is_valid_traceparent(t), "{t}");
        }
        assert_ne!(fresh[0], fresh[1]);
        assert!(!is_valid_traceparent(
            "00-00000000000000000000000000000000-0000000000000001-01"
        ));
        assert!(!is_valid_traceparent(
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01"
        ));
        assert!(is_valid_traceparent(
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        ));
    }

    #[test]
    fn ensure_traceparent_keeps_existing() {
        let mut h = Headers::new().with("TraceParent", "keep");
        h.ensure_traceparent();
        assert_eq!(h.len(), 1);
        assert_eq!(h.iter().next(), Some(("traceparent", "keep")));
        let mut h = Headers::new();
        h.ensure_traceparent();
        assert!(is_valid_traceparent(h.traceparent().unwrap()));
    }

    #[test]
    fn header_ops() {
        let mut h = Headers::new();
        h.append("a", "1").append("A", "2").append("b", "3");
        assert_eq!(h.get("a"), Some("1"));
        assert_eq!(h.get_all("a").collect::<Vec<_>>(), ["1", "2"]);
        h.insert("a", "x");
        assert_eq!(h.iter().collect::<Vec<_>>(), [("b", "3"), ("a", "x")]);
        assert!(h.remove("B"));
        assert!(!h.contains_key("b"));
        let h: Headers = [("k", "v")].into_iter().collect();
        assert_eq!(format!("{h:?}"), r#"{"k": "v"}"#);
    }
}
