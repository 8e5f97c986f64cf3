//! Bidirectional streams: opening one towards a subject's listener, and listening for the
//! streams others open.

use nexus_proto::v1 as pb;
use nexus_proto::v1::frame::Kind;
use tokio::sync::{mpsc, oneshot};

use super::Client;
use crate::batch::Outbound;
use crate::connection::SubKind;
use crate::error::{Error, Result};
use crate::headers::Headers;
use crate::stream::{BiStream, StreamListener};
use crate::subject::{validate_publish_subject, validate_queue_group};

impl Client {
    /// Opens a bidirectional stream to one responder listening on `subject`. Returns once the
    /// responder accepted (first credit, data or close), or fails with
    /// [`Error::NoResponders`] / [`Error::Timeout`].
    ///
    /// ```no_run
    /// # async fn demo(client: nexus_client::Client) -> nexus_client::Result<()> {
    /// let (mut tx, mut rx) = client.open_stream("upper").await?.split();
    /// tx.send("hello").await?;
    /// tx.finish().await?;
    /// while let Some(frame) = rx.recv().await {
    ///     println!("{:?}", frame?.payload);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn open_stream(&self, subject: &str) -> Result<BiStream> {
        self.open_stream_with(subject, Headers::new()).await
    }

    /// [`open_stream`](Self::open_stream) with headers (delivered to the acceptor).
    pub async fn open_stream_with(&self, subject: &str, headers: Headers) -> Result<BiStream> {
        validate_publish_subject(subject)?;
        self.check_open()?;
        let mut headers = headers;
        headers.ensure_traceparent();
        let id = self.shared().next_id();
        let window = self.shared().config.stream_window;
        let (opened_tx, opened_rx) = oneshot::channel();
        let (stream, epoch) = self
            .register(|st| {
                let epoch = st.epoch;
                let (stream, entry) = BiStream::new_parts(
                    self.clone(),
                    id,
                    subject.to_owned(),
                    headers.clone(),
                    0,
                    window,
                    epoch,
                    Some(opened_tx),
                );
                st.streams.insert(id, entry);
                stream
            })
            .await;
        let frame = Kind::StreamOpen(pb::StreamOpen {
            stream_id: id,
            subject: subject.to_owned(),
            headers: headers.into_inner(),
            credits: window,
            sid: 0,
        });
        self.enqueue(Outbound::in_epoch(frame, epoch)).await?;
        let t = self.request_timeout();
        match tokio::time::timeout(t, opened_rx).await {
            Ok(Ok(Ok(()))) => Ok(stream),
            Ok(Ok(Err(f))) => Err(f.into_error(subject, t)),
            Ok(Err(_)) => Err(Error::Closed),
            Err(_) => Err(Error::Timeout {
                subject: subject.to_owned(),
                after: t,
                detail: None,
            }),
        }
    }

    /// Accepts streams opened on `subject` (optionally balanced within a queue group).
    ///
    /// ```no_run
    /// # async fn demo(client: nexus_client::Client) -> nexus_client::Result<()> {
    /// let mut listener = client.listen_streams("upper", None).await?;
    /// while let Some(mut stream) = listener.accept().await {
    ///     tokio::spawn(async move {
    ///         while let Some(Ok(frame)) = stream.recv().await {
    ///             let _ = stream.send(frame.payload.to_ascii_uppercase()).await;
    ///         }
    ///         let _ = stream.finish().await;
    ///     });
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn listen_streams(
        &self,
        subject: &str,
        queue_group: Option<&str>,
    ) -> Result<StreamListener> {
        let group = queue_group.unwrap_or("");
        if queue_group.is_some() {
            validate_queue_group(group)?;
        }
        let (tx, rx) = mpsc::channel(self.shared().config.listener_backlog);
        let (sid, _) = self.add_sub(subject, group, SubKind::Streams(tx)).await?;
        Ok(StreamListener::new(
            self.clone(),
            sid,
            subject.to_owned(),
            rx,
        ))
    }
}
