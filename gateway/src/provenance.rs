//! Per-message provenance: the `nexus-publisher-key` header, which says which API key the
//! publisher's session (or unary call) authenticated with. The gateway that accepts a
//! message removes any header of that name the client sent (a client cannot claim another
//! key) and adds its own when the caller had a key; federation and cluster links carry it
//! unchanged between gateways, which trust each other (mutual TLS). So a subscriber or
//! responder can trust the header as far as it trusts its gateways: it is absent when the
//! gateway runs with `--auth off`, since there is no key to name.

use nexus_proto::ByteString;
use nexus_proto::v1::Header;

/// The reserved header key (lowercase; a client's header is removed whatever its case).
pub const PUBLISHER_KEY: &str = "nexus-publisher-key";

/// Removes client-supplied `nexus-publisher-key` headers and adds `key_id`, if any.
pub fn stamp(headers: &mut Vec<Header>, key_id: Option<&ByteString>) {
    // Almost always nothing to remove: look before rewriting the vector.
    if headers
        .iter()
        .any(|h| h.key.eq_ignore_ascii_case(PUBLISHER_KEY))
    {
        headers.retain(|h| !h.key.eq_ignore_ascii_case(PUBLISHER_KEY));
    }
    if let Some(id) = key_id {
        headers.push(Header {
            key: ByteString::from_static(PUBLISHER_KEY),
            value: id.clone(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(k: &str, v: &str) -> Header {
        Header {
            key: k.into(),
            value: v.into(),
        }
    }

    #[test]
    fn a_forged_header_is_replaced_by_the_sessions_key() {
        let mut headers = vec![
            h("traceparent", "t"),
            h("Nexus-Publisher-Key", "someone-else"),
        ];
        stamp(&mut headers, Some(&ByteString::from("3f9a1c2b4d5e6f70")));
        assert_eq!(
            headers,
            vec![h("traceparent", "t"), h(PUBLISHER_KEY, "3f9a1c2b4d5e6f70")]
        );
    }

    #[test]
    fn without_a_key_nothing_is_claimed() {
        let mut headers = vec![h(PUBLISHER_KEY, "forged")];
        stamp(&mut headers, None);
        assert!(headers.is_empty());
        let mut headers = vec![h("x", "y")];
        stamp(&mut headers, None);
        assert_eq!(headers, vec![h("x", "y")]);
    }
}
