//! A published message as the router handles it: owned ([`Delivery`]), or borrowed
//! ([`MessageRef`]) from wherever it is, most often the batch it arrived in
//! (`nexus_proto::hot_frames::PubView`).
//!
//! Routing to this gateway's subscribers only reads a message: its fields are copied into
//! each subscriber's queue. So a publish is routed as a `MessageRef`, and owned slices of its
//! buffers (a reference-count increment each, no copy) are taken only where the message
//! outlives the publish: queued as a frame of its own (a large payload, a full subscriber),
//! held for the spool, sent to another gateway, shown to a tap.

use bytes::Bytes;
use nexus_proto::ByteString;
use nexus_proto::hot_frames::share;
use nexus_proto::v1::Header;

/// A message being published, owned: what is held, forwarded or delivered later.
pub struct Delivery {
    pub subject: ByteString,
    pub reply_to: ByteString,
    pub headers: Vec<Header>,
    pub payload: Bytes,
    pub id: Bytes,
    /// Whether its hops are recorded in the trace store (sampled, or forced by the
    /// `nexus-trace` header; [`crate::trace_store`]).
    pub traced: bool,
}

impl Delivery {
    /// The message, borrowed.
    pub fn as_ref(&self) -> MessageRef<'_> {
        MessageRef {
            subject: &self.subject,
            reply_to: &self.reply_to,
            headers: &self.headers,
            payload: &self.payload,
            id: &self.id,
            traced: self.traced,
            sources: sources(&self.subject, &self.reply_to, &self.payload, &self.id),
        }
    }
}

/// The buffers of a message whose fields each have their own (an owned `Delivery`, a decoded
/// `Pub`), as [`MessageRef::new`] takes them.
pub fn sources<'a>(
    subject: &'a ByteString,
    reply_to: &'a ByteString,
    payload: &'a Bytes,
    id: &'a Bytes,
) -> [&'a Bytes; 4] {
    [subject.as_bytes(), reply_to.as_bytes(), payload, id]
}

/// A message being published, borrowed: all a delivery to a local subscriber reads.
#[derive(Clone, Copy)]
pub struct MessageRef<'a> {
    pub subject: &'a str,
    pub reply_to: &'a str,
    pub headers: &'a [Header],
    pub payload: &'a [u8],
    /// 16 bytes (a ULID).
    pub id: &'a [u8],
    /// As [`Delivery::traced`].
    pub traced: bool,
    /// The buffers the fields above are slices of, for taking owned slices of them; a field
    /// in none of them (an id the gateway made) is copied.
    sources: [&'a Bytes; 4],
}

impl<'a> MessageRef<'a> {
    /// A message whose fields are slices of `sources` (the batch it arrived in, four times;
    /// or the buffers of a decoded `Pub`), but for `headers` and, when the gateway made it,
    /// `id`.
    pub fn new(
        sources: [&'a Bytes; 4],
        subject: &'a str,
        reply_to: &'a str,
        headers: &'a [Header],
        payload: &'a [u8],
        id: &'a [u8],
    ) -> Self {
        MessageRef {
            subject,
            reply_to,
            headers,
            payload,
            id,
            traced: false,
            sources,
        }
    }

    /// The same message with `traced` set as given.
    pub fn traced(self, traced: bool) -> Self {
        MessageRef { traced, ..self }
    }

    fn bytes(&self, part: &[u8]) -> Bytes {
        owned_slice(&self.sources, part)
    }

    fn string(&self, part: &str) -> ByteString {
        // `part` is UTF-8, so this cannot fail; a copy if it somehow did.
        ByteString::try_from(self.bytes(part.as_bytes())).unwrap_or_else(|_| part.into())
    }

    pub fn subject_owned(&self) -> ByteString {
        self.string(self.subject)
    }

    pub fn reply_to_owned(&self) -> ByteString {
        self.string(self.reply_to)
    }

    pub fn payload_owned(&self) -> Bytes {
        self.bytes(self.payload)
    }

    pub fn id_owned(&self) -> Bytes {
        self.bytes(self.id)
    }

    /// The message, owned: slices of its buffers, no payload copied.
    pub fn to_delivery(&self) -> Delivery {
        Delivery {
            subject: self.subject_owned(),
            reply_to: self.reply_to_owned(),
            headers: self.headers.to_vec(),
            payload: self.payload_owned(),
            id: self.id_owned(),
            traced: self.traced,
        }
    }
}

/// `part` as `Bytes`: a slice of the source it lies in (a reference-count increment), or a
/// copy when it lies in none.
pub fn owned_slice(sources: &[&Bytes], part: &[u8]) -> Bytes {
    let range = part.as_ptr_range();
    match sources.iter().find(|source| {
        let inside = source.as_ptr_range();
        inside.start <= range.start && range.end <= inside.end
    }) {
        Some(source) => share(source, part),
        None => Bytes::copy_from_slice(part),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owned_parts_are_slices_of_the_sources_or_copies() {
        let buffer = Bytes::from_static(b"orders.eu-payload-0123456789abcdef");
        let made = [9u8; 16];
        let headers = [Header {
            key: "k".into(),
            value: "v".into(),
        }];
        let msg = MessageRef::new(
            [&buffer; 4],
            std::str::from_utf8(&buffer[..9]).unwrap(),
            "",
            &headers,
            &buffer[10..17],
            &made,
        );
        let owned = msg.to_delivery();
        assert_eq!(owned.subject, "orders.eu");
        assert_eq!(
            owned.subject.as_ptr(),
            buffer.as_ptr(),
            "shared, not copied"
        );
        assert_eq!(owned.payload.as_ptr(), buffer[10..].as_ptr());
        assert_eq!(&owned.id[..], &made[..]);
        assert_ne!(
            owned.id.as_ptr(),
            made.as_ptr(),
            "an id not in the buffer is copied"
        );
        assert_eq!(owned.headers, headers);
        assert!(owned.reply_to.is_empty() && !owned.traced);

        // An owned message borrowed and owned again shares every buffer.
        let again = owned.as_ref().traced(true).to_delivery();
        assert_eq!(again.payload.as_ptr(), owned.payload.as_ptr());
        assert_eq!(again.id.as_ptr(), owned.id.as_ptr());
        assert_eq!(again.subject.as_ptr(), owned.subject.as_ptr());
        assert!(again.traced);
    }
}
