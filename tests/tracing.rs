//! OpenTelemetry export: a gateway started with `OTEL_EXPORTER_OTLP_ENDPOINT` exports a span
//! per hop to an OTLP collector, linked to the trace in the message's `traceparent`, and
//! rewrites the header so the subscriber continues the trace from the gateway's span.
//!
//! The collector is this test's own implementation of the OTLP `TraceService` gRPC API (the
//! real protocol, from the `opentelemetry-proto` crate), since no OpenTelemetry collector
//! package is installable here.

mod common;

use std::time::Duration;

use common::Gateway;
use nexus_client::{Client, OutgoingMessage};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
    trace_service_server::{TraceService, TraceServiceServer},
};
use opentelemetry_proto::tonic::trace::v1::Span;
use tokio::sync::mpsc;

struct Collector(mpsc::UnboundedSender<Span>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        for rs in request.into_inner().resource_spans {
            for ss in rs.scope_spans {
                for span in ss.spans {
                    let _ = self.0.send(span);
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn hops_are_exported_over_otlp_and_linked_through_traceparent() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector_addr = listener.local_addr().unwrap();
    let (tx, mut spans) = mpsc::unbounded_channel();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Collector(tx)))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );

    let mut gw = Gateway::start_with_env(&[
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            &format!("http://{collector_addr}"),
        ),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ]);
    let client = Client::connect(&gw.url()).await.unwrap();
    let mut sub = client.subscribe("traced.>").await.unwrap();
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent_span = "00f067aa0ba902b7";
    client
        .publish_message(
            OutgoingMessage::new("traced.order", "x")
                .with_header("traceparent", format!("00-{trace_id}-{parent_span}-01")),
        )
        .await
        .unwrap();
    let msg = tokio::time::timeout(Duration::from_secs(5), sub.next_message())
        .await
        .unwrap()
        .unwrap();
    let delivered = msg.traceparent().unwrap().to_string();
    let parts: Vec<&str> = delivered.split('-').collect();
    assert_eq!(parts[1], trace_id, "same trace");
    assert_ne!(
        parts[2], parent_span,
        "the subscriber's parent is the gateway's span"
    );

    let span = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            let s = spans.recv().await.expect("collector running");
            if s.name == "nexus.publish" {
                break s;
            }
        }
    })
    .await
    .expect("a nexus.publish span reached the collector");
    assert_eq!(hex(&span.trace_id), trace_id);
    assert_eq!(hex(&span.parent_span_id), parent_span);
    assert_eq!(hex(&span.span_id), parts[2]);
    gw.kill();
}
