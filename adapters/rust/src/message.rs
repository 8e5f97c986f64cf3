//! Messages received ([`Message`]) and messages to publish ([`OutgoingMessage`]).

use std::time::Duration;

use bytes::Bytes;
use nexus_proto::ByteString;
use nexus_proto::v1 as pb;

use crate::headers::Headers;

/// A message delivered to a subscription, a reply to a request, or a frame of a stream.
///
/// Conversion from the wire form moves strings and payload (`Bytes`), nothing is copied.
#[derive(Debug, Clone)]
pub struct Message {
    /// The subject it was published on. For stream frames this is empty (see
    /// [`BiStream::subject`](crate::BiStream::subject)); for replies it is the request subject.
    pub subject: ByteString,
    /// Where to send the answer if this is a request.
    pub reply_to: Option<ByteString>,
    /// Headers (including `traceparent`).
    pub headers: Headers,
    /// The payload.
    pub payload: Bytes,
    /// Message id (a ULID) if the gateway provided one.
    pub id: Option<ulid::Ulid>,
    /// For requests: how long the requester still waits, as of delivery.
    pub deadline: Option<Duration>,
}

impl Message {
    /// The W3C `traceparent` header, if present.
    pub fn traceparent(&self) -> Option<&str> {
        self.headers.traceparent()
    }

    /// True if the sender expects an answer.
    pub fn is_request(&self) -> bool {
        self.reply_to.is_some()
    }

    pub(crate) fn from_msg(m: pb::Msg) -> Message {
        Message {
            subject: m.subject,
            reply_to: non_empty(m.reply_to),
            headers: Headers(m.headers),
            payload: m.payload,
            id: ulid_from(&m.id),
            deadline: (m.deadline_ms > 0).then(|| Duration::from_millis(m.deadline_ms.into())),
        }
    }

    pub(crate) fn from_parts(
        subject: impl Into<ByteString>,
        headers: Vec<pb::Header>,
        payload: Bytes,
    ) -> Message {
        Message {
            subject: subject.into(),
            reply_to: None,
            headers: Headers(headers),
            payload,
            id: None,
            deadline: None,
        }
    }
}

fn non_empty(s: ByteString) -> Option<ByteString> {
    (!s.is_empty()).then_some(s)
}

pub(crate) fn ulid_from(b: &[u8]) -> Option<ulid::Ulid> {
    <[u8; 16]>::try_from(b).ok().map(ulid::Ulid::from_bytes)
}

/// A message to publish with [`Client::publish_message`](crate::Client::publish_message).
#[derive(Debug, Clone, Default)]
pub struct OutgoingMessage {
    /// Subject to publish on (no wildcards).
    pub subject: String,
    /// Optional reply subject for the receivers.
    pub reply_to: Option<String>,
    /// Headers; a `traceparent` is added when missing.
    pub headers: Headers,
    /// The payload.
    pub payload: Bytes,
}

impl OutgoingMessage {
    /// A message with no headers and no reply subject.
    ///
    /// ```
    /// let msg = nexus_client::OutgoingMessage::new("orders.created", "order #1")
    ///     .with_header("x-tenant", "acme");
    /// assert_eq!(msg.subject, "orders.created");
    /// ```
    pub fn new(subject: impl Into<String>, payload: impl Into<Bytes>) -> Self {
        OutgoingMessage {
            subject: subject.into(),
            reply_to: None,
            headers: Headers::new(),
            payload: payload.into(),
        }
    }

    /// Adds (replaces) a header.
    pub fn with_header(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(key, value);
        self
    }

    /// Replaces all headers.
    pub fn with_headers(mut self, headers: Headers) -> Self {
        self.headers = headers;
        self
    }

    /// Sets the reply subject.
    pub fn with_reply_to(mut self, reply_to: impl Into<String>) -> Self {
        self.reply_to = Some(reply_to.into());
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_wire() {
        let id = ulid::Ulid::new();
        let m = Message::from_msg(pb::Msg {
            sid: 1,
            subject: "a.b".into(),
            reply_to: Default::default(),
            headers: vec![pb::Header {
                key: "traceparent".into(),
                value: "t".into(),
            }],
            payload: Bytes::from_static(b"hi"),
            id: Bytes::copy_from_slice(&id.to_bytes()),
            deadline_ms: 0,
        });
        assert_eq!(m.subject, "a.b");
        assert_eq!(m.reply_to, None);
        assert_eq!(m.id, Some(id));
        assert_eq!(m.traceparent(), Some("t"));
        assert_eq!(m.deadline, None);
        assert!(ulid_from(b"short").is_none());
    }
}
