//! Error type of the adapter and the mapping from gateway error codes.

use std::time::Duration;

use nexus_proto::v1 as pb;

/// Result alias used throughout the crate.
pub type Result<T> = std::result::Result<T, Error>;

/// Everything that can go wrong talking to a Nexus gateway.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The subject (or subscription pattern) is malformed or reserved. Checked locally before
    /// anything is sent; the gateway applies the same rules (and is authoritative).
    #[error("invalid subject {subject:?}: {reason}")]
    InvalidSubject {
        /// The offending subject.
        subject: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// No subscription matched a request or stream open.
    #[error("no responders for {subject:?}")]
    NoResponders {
        /// The request subject.
        subject: String,
    },
    /// A request (or stream open) got no answer in time.
    #[error("request to {subject:?} timed out after {after:?}{}", .detail.as_deref().map(|d| format!(": {d}")).unwrap_or_default())]
    Timeout {
        /// The request subject.
        subject: String,
        /// The timeout that elapsed.
        after: Duration,
        /// The gateway's explanation, when the timeout was its verdict (for example a
        /// `sync` route whose regions did not confirm in time).
        detail: Option<String>,
    },
    /// The responder refused the request (`ServiceError`) or vanished before answering.
    #[error("service error: {message}")]
    Service {
        /// The responder's (or gateway's) message.
        message: String,
    },
    /// A configured limit was hit (payload size, subscriptions, credit...).
    #[error("limit exceeded: {message}")]
    Limit {
        /// Which limit, as reported by the gateway.
        message: String,
    },
    /// The gateway considered a frame or field malformed.
    #[error("invalid: {message}")]
    Invalid {
        /// The gateway's explanation.
        message: String,
    },
    /// Authentication or authorization failure.
    #[error("denied: {message}")]
    Denied {
        /// The gateway's explanation.
        message: String,
    },
    /// The gateway is shutting down.
    #[error("gateway unavailable: {message}")]
    Unavailable {
        /// The gateway's explanation.
        message: String,
    },
    /// Any other error code the gateway sent.
    #[error("gateway error {code}: {message}")]
    Gateway {
        /// Raw `nexus.v1.ErrorCode` value.
        code: i32,
        /// The gateway's explanation.
        message: String,
    },
    /// The gateway did not follow the protocol (e.g. no Welcome after Hello).
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The session to the gateway broke while the operation was in flight. The client
    /// reconnects on its own; the operation may be retried.
    #[error("disconnected from the gateway")]
    Disconnected,
    /// A confirmed publish was sent, the session was lost before the gateway answered, and
    /// retrying it (with the same message id) on new sessions did not get an answer within
    /// [`publish_retry_timeout`](crate::ClientBuilder::publish_retry_timeout), or retrying
    /// is off. The message may or may not have been delivered.
    #[error("publish to {subject:?} not confirmed: the session was lost before the gateway's answer and {}; message id {id} may or may not have been delivered", if .retry_timeout.is_zero() { "retrying is off (publish_retry_timeout = 0)".to_owned() } else { format!("gave up after {attempts} attempt(s) in {elapsed:.1?} (publish_retry_timeout {retry_timeout:?})") })]
    NotConfirmed {
        /// The publish subject.
        subject: String,
        /// The message id (a ULID) every attempt carried.
        id: String,
        /// How many times the publish was sent.
        attempts: u32,
        /// Time from the first attempt to giving up.
        elapsed: Duration,
        /// The retry budget in force.
        retry_timeout: Duration,
    },
    /// The client (or this handle, e.g. a finished stream) was closed.
    #[error("client closed")]
    Closed,
    /// A gRPC status from the transport.
    #[error("transport: {0}")]
    Transport(#[from] tonic::Status),
    /// Connecting to the gateway failed.
    #[error("connect: {0}")]
    Connect(#[from] tonic::transport::Error),
    /// The address given to [`Client::connect`](crate::Client::connect) or
    /// [`Client::builder`](crate::Client::builder) (or the `NEXUS_DNS_SERVER` value) is
    /// malformed.
    #[error("invalid gateway address {addr:?}: {reason}")]
    InvalidAddress {
        /// The address as given.
        addr: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Gateway discovery through DNS failed: the SRV name does not exist (NXDOMAIN: unknown
    /// region or zone, or no live gateway in it), has no records, or the DNS server did
    /// not answer. The message names the SRV name and the DNS server asked.
    #[error("gateway discovery: {0}")]
    Discovery(String),
    /// Every gateway discovered for a `nexus+srv://` name was tried and none accepted a
    /// session.
    #[error("no gateway for {target} accepted a session: {}", format_attempts(.attempts))]
    NoGateway {
        /// The discovery address (`nexus+srv://...`).
        target: String,
        /// Each gateway tried, in order, and why it failed.
        attempts: Vec<GatewayAttempt>,
    },
}

/// One gateway tried while connecting through discovery (see [`Error::NoGateway`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayAttempt {
    /// The gateway's name from DNS (its id, the first label of the SRV target).
    pub gateway: String,
    /// The address tried, if the target resolved to one.
    pub addr: Option<std::net::SocketAddr>,
    /// Why it failed.
    pub error: String,
}

impl std::fmt::Display for GatewayAttempt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.addr {
            Some(a) => write!(f, "{} ({a}): {}", self.gateway, self.error),
            None => write!(f, "{}: {}", self.gateway, self.error),
        }
    }
}

fn format_attempts(attempts: &[GatewayAttempt]) -> String {
    if attempts.is_empty() {
        return "no gateway to try".into();
    }
    attempts
        .iter()
        .map(GatewayAttempt::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// `e` followed by its sources, e.g. "connect: transport error: tcp connect error:
/// Connection refused (os error 111)", skipping sources whose text is already included.
pub(crate) fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

impl Error {
    /// Maps a gateway `Error` frame to an [`Error`]. `subject` and `after` give context for
    /// `NO_RESPONDERS` and `TIMEOUT`.
    pub(crate) fn from_gateway(e: pb::Error, subject: &str, after: Duration) -> Error {
        from_code(e.code, e.message, subject, after)
    }

    /// True for errors after which retrying the same operation may succeed
    /// (`Disconnected`, `NotConfirmed`, `Timeout`, `NoResponders`, `Unavailable`, transport errors, and
    /// discovery failures: a region without live gateways is NXDOMAIN until one starts).
    ///
    /// ```
    /// assert!(nexus_client::Error::Disconnected.is_transient());
    /// let refused = nexus_client::Error::Denied { message: "no such key".into() };
    /// assert!(!refused.is_transient());
    /// ```
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Error::Disconnected
                | Error::NotConfirmed { .. }
                | Error::Timeout { .. }
                | Error::NoResponders { .. }
                | Error::Unavailable { .. }
                | Error::Transport(_)
                | Error::Connect(_)
                | Error::Discovery(_)
                | Error::NoGateway { .. }
        )
    }
}

pub(crate) fn from_code(code: i32, message: String, subject: &str, after: Duration) -> Error {
    use pb::ErrorCode as C;
    match C::try_from(code) {
        Ok(C::Invalid) => Error::Invalid { message },
        Ok(C::Limit) => Error::Limit { message },
        Ok(C::NoResponders) => Error::NoResponders {
            subject: subject.to_owned(),
        },
        Ok(C::Timeout) => Error::Timeout {
            subject: subject.to_owned(),
            after,
            detail: (!message.is_empty()).then_some(message),
        },
        Ok(C::ServiceError) => Error::Service { message },
        Ok(C::Denied) => Error::Denied { message },
        Ok(C::Unavailable) => Error::Unavailable { message },
        _ => Error::Gateway { code, message },
    }
}

/// Why an in-flight operation failed, recorded by the connection task and turned into an
/// [`Error`] by the waiting caller (which knows the subject and timeout).
#[derive(Debug, Clone)]
pub(crate) enum Fail {
    Gateway { code: i32, message: String },
    Disconnected,
    Closed,
}

impl Fail {
    pub(crate) fn from_pb(e: Option<pb::Error>) -> Fail {
        match e {
            Some(e) => Fail::Gateway {
                code: e.code,
                message: e.message,
            },
            None => Fail::Gateway {
                code: pb::ErrorCode::Unspecified as i32,
                message: "unspecified error".into(),
            },
        }
    }

    pub(crate) fn into_error(self, subject: &str, after: Duration) -> Error {
        match self {
            Fail::Gateway { code, message } => from_code(code, message, subject, after),
            Fail::Disconnected => Error::Disconnected,
            Fail::Closed => Error::Closed,
        }
    }
}

/// The error a [`serve`](crate::Client::serve) handler returns to refuse a request. The
/// requester receives [`Error::Service`] carrying `message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceError {
    /// Sent to the requester.
    pub message: String,
}

impl ServiceError {
    /// A service error with the given message.
    pub fn new(message: impl Into<String>) -> Self {
        ServiceError {
            message: message.into(),
        }
    }

    /// Wraps any displayable error.
    pub fn from_error(e: impl std::fmt::Display) -> Self {
        ServiceError {
            message: e.to_string(),
        }
    }
}

impl std::fmt::Display for ServiceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ServiceError {}

impl From<&str> for ServiceError {
    fn from(s: &str) -> Self {
        ServiceError::new(s)
    }
}

impl From<String> for ServiceError {
    fn from(s: String) -> Self {
        ServiceError::new(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_to_variants() {
        let d = Duration::from_secs(1);
        let e = |c: pb::ErrorCode| from_code(c as i32, "m".into(), "a.b", d);
        assert!(
            matches!(e(pb::ErrorCode::NoResponders), Error::NoResponders { subject } if subject == "a.b")
        );
        assert!(matches!(e(pb::ErrorCode::Timeout), Error::Timeout { after, .. } if after == d));
        assert!(matches!(
            e(pb::ErrorCode::ServiceError),
            Error::Service { .. }
        ));
        assert!(matches!(e(pb::ErrorCode::Limit), Error::Limit { .. }));
        assert!(matches!(e(pb::ErrorCode::Invalid), Error::Invalid { .. }));
        assert!(matches!(e(pb::ErrorCode::Denied), Error::Denied { .. }));
        assert!(matches!(
            e(pb::ErrorCode::Unavailable),
            Error::Unavailable { .. }
        ));
        assert!(matches!(
            from_code(99, "x".into(), "s", d),
            Error::Gateway { code: 99, .. }
        ));
    }
}
