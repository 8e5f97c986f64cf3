//! The current trace context, so that messages continue the trace of the work that sends them.
//!
//! Every publish, request and stream open carries a W3C `traceparent`. When the caller gives
//! none, the adapter takes the **current trace context**, the same rule as the Python
//! (`contextvars`), TypeScript (`AsyncLocalStorage`) and Java (thread-local) adapters:
//!
//! 1. inside [`with_traceparent`] (a [`serve`](crate::Client::serve) handler runs inside the
//!    request's traceparent): a child of it, with the same trace id and a new span id;
//! 2. with the `opentelemetry` feature, the current [`tracing`] span's OpenTelemetry context
//!    (through `tracing-opentelemetry`), so that the receiver's span becomes a child of it;
//! 3. otherwise a fresh trace.
//!
//! With the `opentelemetry` feature, a `serve` handler also runs inside a `nexus.serve`
//! tracing span whose OpenTelemetry parent is the request's traceparent, so spans the handler
//! opens join the requester's trace.
//!
//! ```
//! # async fn demo(client: nexus_client::Client) -> nexus_client::Result<()> {
//! let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
//! nexus_client::trace::with_traceparent(tp, async {
//!     // Carries traceparent 00-4bf92f3577b34da6a3ce929d0e0e4736-<new span id>-01.
//!     client.publish("orders.created", "order #1").await
//! })
//! .await?;
//! # Ok(()) }
//! ```

use std::future::Future;

use crate::headers::{fresh_traceparent, is_valid_traceparent, new_traceparent};
use nexus_proto::ByteString;

tokio::task_local! {
    static CURRENT: String;
}

/// Runs `fut` with `traceparent` as the current trace context: publishes, requests and stream
/// opens made inside it without a `traceparent` of their own continue that trace.
pub async fn with_traceparent<F: Future>(traceparent: impl Into<String>, fut: F) -> F::Output {
    CURRENT.scope(traceparent.into(), fut).await
}

/// The current trace context as a `traceparent`: the innermost [`with_traceparent`] scope,
/// else (feature `opentelemetry`) the current tracing span's OpenTelemetry context, else
/// `None`.
pub fn current_traceparent() -> Option<String> {
    CURRENT
        .try_with(|tp| tp.clone())
        .ok()
        .filter(|tp| is_valid_traceparent(tp))
        .or_else(otel::current)
}

/// The `traceparent` for an outgoing message that has none (see the module docs).
pub(crate) fn outgoing() -> ByteString {
    if let Ok(Some(child)) = CURRENT.try_with(|tp| child_of(tp)) {
        return child.into();
    }
    otel::current().map_or_else(fresh_traceparent, ByteString::from)
}

/// Same trace id and flags as `parent`, a new span id; `None` when `parent` is not valid.
fn child_of(parent: &str) -> Option<String> {
    if !is_valid_traceparent(parent) {
        return None;
    }
    let fresh = new_traceparent();
    Some(format!(
        "{}{}{}",
        &parent[..36],
        &fresh[36..52],
        &parent[52..]
    ))
}

/// Runs a `serve` handler inside the request's trace context.
pub(crate) async fn in_request<F: Future>(
    traceparent: Option<String>,
    subject: &str,
    fut: F,
) -> F::Output {
    let span = otel::serve_span(traceparent.as_deref(), subject);
    let fut = tracing::Instrument::instrument(fut, span);
    match traceparent {
        Some(tp) => with_traceparent(tp, fut).await,
        None => fut.await,
    }
}

#[cfg(feature = "opentelemetry")]
mod otel {
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
    };
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    /// The current tracing span's OpenTelemetry context, when it has a valid one.
    pub(super) fn current() -> Option<String> {
        let cx = tracing::Span::current().context();
        let span = cx.span();
        let sc = span.span_context();
        sc.is_valid().then(|| {
            format!(
                "00-{}-{}-{:02x}",
                sc.trace_id(),
                sc.span_id(),
                sc.trace_flags().to_u8()
            )
        })
    }

    /// A `nexus.serve` span whose OpenTelemetry parent is the request's traceparent.
    pub(super) fn serve_span(traceparent: Option<&str>, subject: &str) -> tracing::Span {
        let span = tracing::info_span!("nexus.serve", subject);
        if let Some(sc) = traceparent.and_then(parse) {
            let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(sc));
        }
        span
    }

    fn parse(tp: &str) -> Option<SpanContext> {
        if !crate::headers::is_valid_traceparent(tp) {
            return None;
        }
        let trace = TraceId::from_hex(&tp[3..35]).ok()?;
        let span = SpanId::from_hex(&tp[36..52]).ok()?;
        let flags = u8::from_str_radix(&tp[53..55], 16).ok()?;
        Some(SpanContext::new(
            trace,
            span,
            TraceFlags::new(flags),
            true,
            TraceState::default(),
        ))
    }
}

#[cfg(not(feature = "opentelemetry"))]
mod otel {
    pub(super) fn current() -> Option<String> {
        None
    }

    pub(super) fn serve_span(_traceparent: Option<&str>, subject: &str) -> tracing::Span {
        tracing::debug_span!("nexus.serve", subject)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[tokio::test]
    async fn inside_a_scope_messages_continue_its_trace() {
        let tp = with_traceparent(TP, async { outgoing() }).await;
        assert!(is_valid_traceparent(&tp));
        assert_eq!(&tp[..36], &TP[..36], "same trace id");
        assert_ne!(&tp[36..52], &TP[36..52], "a new span id");
        assert_eq!(
            with_traceparent(TP, async { current_traceparent() })
                .await
                .as_deref(),
            Some(TP)
        );
    }

    #[tokio::test]
    async fn outside_a_scope_a_fresh_trace() {
        assert_eq!(current_traceparent(), None);
        let a = outgoing();
        let b = outgoing();
        assert!(is_valid_traceparent(&a));
        assert_ne!(&a[3..35], &b[3..35]);
    }

    #[tokio::test]
    async fn an_invalid_scope_is_ignored() {
        let tp = with_traceparent("garbage", async { outgoing() }).await;
        assert!(is_valid_traceparent(&tp));
    }
}

/// The `opentelemetry` feature against a real OpenTelemetry SDK tracer behind
/// `tracing-opentelemetry`, as an application would install it.
#[cfg(all(test, feature = "opentelemetry"))]
mod otel_tests {
    use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    use tracing_subscriber::layer::SubscriberExt;

    fn subscriber() -> impl tracing::Subscriber + Send + Sync {
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("nexus-client-test")))
    }

    #[test]
    fn messages_sent_inside_a_span_carry_its_context() {
        tracing::subscriber::with_default(subscriber(), || {
            let span = tracing::info_span!("checkout");
            let _entered = span.enter();
            let otel = span.context().span().span_context().clone();
            assert!(otel.is_valid());
            let want = format!("00-{}-{}-01", otel.trace_id(), otel.span_id());
            assert_eq!(super::current_traceparent().as_deref(), Some(want.as_str()));
            assert_eq!(super::outgoing(), want);
        });
    }

    #[test]
    fn a_with_traceparent_scope_wins_over_the_span() {
        tracing::subscriber::with_default(subscriber(), || {
            let span = tracing::info_span!("checkout");
            let _entered = span.enter();
            let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            let out = rt.block_on(super::with_traceparent(tp, async { super::outgoing() }));
            assert!(
                out.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
                "{out}"
            );
        });
    }

    #[test]
    fn a_serve_span_continues_the_requesters_trace() {
        tracing::subscriber::with_default(subscriber(), || {
            let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
            let span = super::otel::serve_span(Some(tp), "math.double");
            let _entered = span.enter();
            let inside = super::current_traceparent().expect("the serve span has a context");
            assert!(
                inside.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
                "{inside}"
            );
            assert!(
                !inside.contains("00f067aa0ba902b7"),
                "a span of its own: {inside}"
            );
        });
    }

    #[test]
    fn without_a_span_a_fresh_trace() {
        tracing::subscriber::with_default(subscriber(), || {
            assert_eq!(super::current_traceparent(), None);
            let a = super::outgoing();
            assert!(crate::headers::is_valid_traceparent(&a), "{a}");
            assert_ne!(a[3..35], super::outgoing()[3..35]);
        });
    }
}
