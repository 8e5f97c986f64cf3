//! [`ClientBuilder`]: a client's settings, and connecting with them (the gateway address
//! or discovery name, the transport, TLS, batching and queue sizes, timeouts).

use super::*;
use crate::queue::OutboundQueue;

/// Configures and connects a [`Client`]; see [`Client::builder`].
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    addr: String,
    dns_server: Option<SocketAddr>,
    name: String,
    api_key: String,
    request_timeout: Duration,
    connect_timeout: Duration,
    backoff: (Duration, Duration),
    max_batch_frames: usize,
    max_batch_bytes: usize,
    outbound_capacity: usize,
    outbound_max_bytes: usize,
    subscription_capacity: usize,
    stream_window: u32,
    listener_backlog: usize,
    max_concurrent_handlers: usize,
    publish_retry_timeout: Duration,
    local_payload_check: bool,
    compression: nexus_proto::encoding::Policy,
    tls: TlsSettings,
    transport: Transport,
}

impl ClientBuilder {
    pub(super) fn new(addr: &str) -> Self {
        ClientBuilder {
            addr: addr.to_owned(),
            dns_server: None,
            name: "nexus-rust".into(),
            api_key: String::new(),
            request_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            backoff: (Duration::from_millis(100), Duration::from_secs(5)),
            max_batch_frames: 256,
            max_batch_bytes: 256 * 1024,
            outbound_capacity: 8192,
            outbound_max_bytes: 32 << 20,
            subscription_capacity: 8192,
            stream_window: 256,
            listener_backlog: 256,
            max_concurrent_handlers: 1024,
            publish_retry_timeout: DEFAULT_PUBLISH_RETRY_TIMEOUT,
            local_payload_check: true,
            compression: nexus_proto::encoding::Policy::default(),
            tls: TlsSettings::default(),
            transport: Transport::default(),
        }
    }

    /// The DNS server that resolves a `nexus+srv://` address (e.g. `127.0.0.1:5353`). Takes
    /// precedence over the address's `?dns=` and the `NEXUS_DNS_SERVER` environment
    /// variable; without any of them the name servers of `/etc/resolv.conf` are used.
    /// Ignored for `http://` addresses.
    pub fn dns_server(mut self, addr: SocketAddr) -> Self {
        self.dns_server = Some(addr);
        self
    }

    /// Client name reported in Hello (default `nexus-rust`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// API key sent in Hello.
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = key.into();
        self
    }

    /// Default timeout of [`Client::request`], subscribe/ack round trips and stream opens
    /// (default 5 s).
    pub fn request_timeout(mut self, t: Duration) -> Self {
        self.request_timeout = t;
        self
    }

    /// Timeout of the TCP connect and the Hello/Welcome handshake (default 5 s).
    pub fn connect_timeout(mut self, t: Duration) -> Self {
        self.connect_timeout = t;
        self
    }

    /// Reconnect delays: starting at `min`, doubling up to `max`, with jitter (default
    /// 100 ms to 5 s).
    pub fn reconnect_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.backoff = (min, max);
        self
    }

    /// Most frames per outbound batch (default 256).
    pub fn max_batch_frames(mut self, n: usize) -> Self {
        self.max_batch_frames = n.max(1);
        self
    }

    /// Approximate most encoded bytes per outbound batch (default 256 KiB).
    pub fn max_batch_bytes(mut self, n: usize) -> Self {
        self.max_batch_bytes = n.max(1);
        self
    }

    /// Capacity of the outbound queue in frames (default 8192). When full, `publish()` waits.
    pub fn outbound_capacity(mut self, n: usize) -> Self {
        self.outbound_capacity = n.max(1);
        self
    }

    /// Capacity of the outbound queue in bytes, as encoded before compression (default 32
    /// MiB). When that much is queued, `publish()` waits, as when `outbound_capacity` frames
    /// are; a single message larger than this still goes, alone.
    pub fn outbound_max_bytes(mut self, n: usize) -> Self {
        self.outbound_max_bytes = n.max(1);
        self
    }

    /// Buffered deliveries per subscription (default 8192). When full, the client stops
    /// reading from the gateway until the application catches up.
    pub fn subscription_capacity(mut self, n: usize) -> Self {
        self.subscription_capacity = n.max(1);
        self
    }

    /// Receive window of each stream in frames (default 256).
    pub fn stream_window(mut self, n: u32) -> Self {
        self.stream_window = n.max(1);
        self
    }

    /// Incoming streams buffered per [`StreamListener`](crate::StreamListener) before new ones are refused
    /// (default 256).
    pub fn listener_backlog(mut self, n: usize) -> Self {
        self.listener_backlog = n.max(1);
        self
    }

    /// Most handler invocations running at once per [`Service`](crate::Service) (default 1024).
    pub fn max_concurrent_handlers(mut self, n: usize) -> Self {
        self.max_concurrent_handlers = n.max(1);
        self
    }

    /// How long a confirmed publish ([`Client::publish_acked`]) keeps retrying after the
    /// session was lost before the gateway's answer came (default 30 s). Each retry goes out
    /// on the next session with the **same** message id, so the gateway answers it with the
    /// original outcome instead of delivering it twice (it remembers ids on `async` and
    /// `sync` routes for 120 s by default). When the time runs out the publish fails with
    /// [`Error::NotConfirmed`]. `Duration::ZERO` turns retrying off. Fire-and-forget
    /// publishes are never retried.
    ///
    /// ```
    /// # use std::time::Duration;
    /// let builder = nexus_client::Client::builder("http://127.0.0.1:7422")
    ///     .publish_retry_timeout(Duration::from_secs(10));
    /// ```
    pub fn publish_retry_timeout(mut self, t: Duration) -> Self {
        self.publish_retry_timeout = t;
        self
    }

    /// The codec outgoing payloads are compressed with (docs/protocol.md §9.2): `Some(Codec::Zstd)`
    /// by default, `Some(Codec::Lz4)` for less CPU, `None` to send every payload plain. Only
    /// used when the gateway accepts it; incoming compressed payloads are always decoded, and
    /// applications only ever see plain payloads.
    pub fn compression(mut self, codec: Option<crate::Codec>) -> Self {
        self.compression.codec = codec;
        self
    }

    /// Payloads of at least this many bytes are compressed (default 1024).
    pub fn compression_threshold(mut self, bytes: usize) -> Self {
        self.compression.threshold = bytes;
        self
    }

    /// Whether payloads are checked against the gateway's `max_payload` before sending
    /// (default true: an oversized payload fails at once with [`Error::Limit`]). With
    /// `false` the gateway's own check answers, with the same error.
    pub fn local_payload_check(mut self, on: bool) -> Self {
        self.local_payload_check = on;
        self
    }

    /// The transport for discovered gateways (`nexus+srv://`): gRPC (the default) or the
    /// native transport ([`Transport::Native`], docs/protocol.md §1.1). A direct address names
    /// its own (`nexus+tcp://`/`nexus+tls://` for the native one) and ignores this.
    pub fn transport(mut self, transport: Transport) -> Self {
        self.transport = transport;
        self
    }

    /// Connects to discovered gateways (`nexus+srv://`) over TLS too. (A `https://` address
    /// always uses TLS.) See the crate docs, [TLS](crate#tls), for what is verified.
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub fn tls(mut self, on: bool) -> Self {
        self.tls.srv = on;
        self
    }

    /// Trusts these PEM CA certificates (one or more) for the gateway's certificate, instead
    /// of the system's trust store.
    ///
    /// ```no_run
    /// # async fn demo() -> nexus_client::Result<()> {
    /// let ca = std::fs::read("ca.pem").expect("the CA certificate");
    /// let client = nexus_client::Client::builder("https://gateway.example:7422")
    ///     .tls_ca_pem(ca)
    ///     .connect()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub fn tls_ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls.ca_pem = Some(pem.into());
        self
    }

    /// [`tls_ca_pem`](Self::tls_ca_pem) from a file; fails with [`Error::InvalidAddress`]
    /// naming the file when it cannot be read.
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub fn tls_ca_file(self, path: impl AsRef<std::path::Path>) -> Result<Self> {
        let path = path.as_ref();
        let pem = std::fs::read(path).map_err(|e| Error::InvalidAddress {
            addr: self.addr.clone(),
            reason: format!("reading the CA file {}: {e}", path.display()),
        })?;
        Ok(self.tls_ca_pem(pem))
    }

    /// Presents this client certificate (PEM chain and key) to a gateway that requires one
    /// (`nexus gateway --tls-client-ca`).
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub fn tls_client_cert_pem(
        mut self,
        cert_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> Self {
        self.tls.identity = Some((cert_pem.into(), key_pem.into()));
        self
    }

    /// [`tls_client_cert_pem`](Self::tls_client_cert_pem) from files; fails with
    /// [`Error::InvalidAddress`] naming the file when one cannot be read.
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub fn tls_client_cert_files(
        self,
        cert: impl AsRef<std::path::Path>,
        key: impl AsRef<std::path::Path>,
    ) -> Result<Self> {
        let read = |path: &std::path::Path| {
            std::fs::read(path).map_err(|e| Error::InvalidAddress {
                addr: self.addr.clone(),
                reason: format!(
                    "reading the client certificate file {}: {e}",
                    path.display()
                ),
            })
        };
        let (cert, key) = (read(cert.as_ref())?, read(key.as_ref())?);
        Ok(self.tls_client_cert_pem(cert, key))
    }

    /// The name the gateway's certificate must carry, instead of the host of the address
    /// (useful when connecting by IP address or through discovery).
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub fn tls_domain(mut self, name: impl Into<String>) -> Self {
        self.tls.domain = Some(name.into());
        self
    }

    /// Connects and performs the Hello/Welcome handshake. Fails if the gateway cannot be
    /// reached or refuses the session (e.g. [`Error::Denied`]); later disconnects are
    /// handled by reconnecting.
    ///
    /// With a `nexus+srv://` address the gateways are discovered first and tried in
    /// RFC 2782 order until one accepts; the errors are then [`Error::InvalidAddress`],
    /// [`Error::Discovery`] (e.g. NXDOMAIN) or [`Error::NoGateway`] listing every gateway
    /// tried and why it failed.
    pub async fn connect(self) -> Result<Client> {
        let native = crate::native::parse(&self.addr).transpose()?;
        let gateways = match (native, parse_target(&self.addr)?) {
            (Some(native), _) => Gateways::Direct(connection::Dial::Native(Box::new(native))),
            (None, Target::Direct(url)) => Gateways::Direct(connection::Dial::Grpc(Box::new(
                connection::endpoint(url, self.connect_timeout, &self.tls)?,
            ))),
            (None, Target::Srv(target)) => {
                let env = std::env::var(DNS_SERVER_ENV).ok();
                let dns = choose_dns_server(self.dns_server, target.dns_server, env.as_deref())?;
                Gateways::Discovered(Arc::new(Discovery::new(target, dns)?))
            }
        };
        let config = Config {
            transport: self.transport,
            name: self.name,
            api_key: self.api_key,
            request_timeout: self.request_timeout,
            connect_timeout: self.connect_timeout,
            backoff_min: self.backoff.0,
            backoff_max: self.backoff.1,
            limits: BatchLimits {
                max_frames: self.max_batch_frames,
                max_bytes: self.max_batch_bytes,
            },
            subscription_capacity: self.subscription_capacity,
            stream_window: self.stream_window,
            listener_backlog: self.listener_backlog,
            max_concurrent_handlers: self.max_concurrent_handlers,
            publish_retry_timeout: self.publish_retry_timeout,
            local_payload_check: self.local_payload_check,
            compression: self.compression,
            tls: self.tls,
        };
        let outbound = OutboundQueue::new(
            self.outbound_capacity,
            self.outbound_max_bytes,
            config.limits,
        );
        let (ctl_tx, ctl_rx) = mpsc::unbounded_channel();
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let inner = Arc::new_cyclic(|weak| ClientInner {
            shared: Arc::new(Shared::new(
                config,
                gateways,
                outbound,
                ctl_tx,
                shutdown_tx,
                weak.clone(),
            )),
            task: Mutex::new(None),
        });
        let (first_tx, first_rx) = oneshot::channel();
        let task = tokio::spawn(connection::run(
            inner.shared.clone(),
            ctl_rx,
            shutdown_rx,
            first_tx,
        ));
        *inner.task.lock() = Some(task);
        match first_rx.await {
            Ok(Ok(())) => Ok(Client { inner }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Error::Closed),
        }
    }
}
