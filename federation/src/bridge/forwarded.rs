//! A message from another gateway (a federation `Forward`, also inside a spooled message)
//! turned into what the local router delivers. Shared by the receiving paths of
//! [`super::inbound`] and [`super::replication`], which both hand such messages to local
//! subscribers.

use nexus_gateway::router::Delivery;
use nexus_proto::v1::Forward;

/// A forwarded message as the local router delivers it; `None` (logged) when its subject is
/// not valid.
pub(super) fn delivery(region: &str, forward: Forward) -> Option<Delivery> {
    if nexus_proto::subject::validate_subject(&forward.subject).is_err() {
        tracing::warn!(%region, subject = %nexus_proto::text::Escaped(&forward.subject), "dropping a message with an invalid subject from another region");
        return None;
    }
    Some(Delivery {
        subject: forward.subject.into(),
        reply_to: forward.reply_to.into(),
        headers: forward.headers,
        payload: forward.payload,
        id: forward.id,
        // The local router decides (sampling, or the force header) when it delivers.
        traced: false,
    })
}
