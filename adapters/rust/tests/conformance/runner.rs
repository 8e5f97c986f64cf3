//! The step interpreter: runs one case's steps (connect, publish, subscribe, request, kill a
//! gateway, ...) against its environment; `measure_failover` is in failover.rs.

use super::*;

pub(crate) fn payload_of(s: &Json) -> Bytes {
    match s.num("payload_size") {
        Some(n) => Bytes::from(vec![b'x'; n as usize]),
        None => Bytes::from(s.str("payload").unwrap_or("").to_owned()),
    }
}

pub(crate) fn headers_of(s: &Json) -> Headers {
    let mut h = Headers::new();
    for (k, v) in s.get("headers").map(Json::fields).unwrap_or_default() {
        if let Json::Str(v) = v {
            h.insert(k.clone(), v.clone());
        }
    }
    h
}

pub(crate) async fn handler(spec: String, m: Message) -> Result<Bytes, nexus_client::ServiceError> {
    if spec == "echo" {
        Ok(m.payload)
    } else if let Some(p) = spec.strip_prefix("prefix:") {
        let mut out = p.as_bytes().to_vec();
        out.extend_from_slice(&m.payload);
        Ok(out.into())
    } else if let Some(e) = spec.strip_prefix("error:") {
        Err(nexus_client::ServiceError::new(e))
    } else if let Some(ms) = spec.strip_prefix("delay:") {
        let ms = ms
            .parse::<u64>()
            .map_err(|e| nexus_client::ServiceError::new(format!("bad handler {spec:?}: {e}")))?;
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok(m.payload)
    } else if spec == "silent" {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        Ok(Bytes::new())
    } else if spec == "traceparent" {
        Ok(Bytes::from(m.traceparent().unwrap_or("").to_owned()))
    } else {
        Err(nexus_client::ServiceError::new(format!(
            "unknown handler {spec}"
        )))
    }
}

/// An operation started with `pending`: a request's answer, or `None` for a publish.
pub(crate) type PendingOp = tokio::task::JoinHandle<Result<Option<Bytes>, Error>>;

pub(crate) struct Runner {
    pub(crate) env: Environment,
    pub(crate) clients: HashMap<String, Client>,
    pub(crate) subs: HashMap<String, Subscription>,
    pub(crate) services: Vec<nexus_client::Service>,
    pub(crate) tasks: Vec<tokio::task::JoinHandle<()>>,
    /// The gateway id `kill_connected_gateway` killed.
    pub(crate) killed: String,
    /// Operations started with `pending` and not awaited yet: the task (a request's answer,
    /// `None` for a publish) and the reply payload the request step expects.
    pub(crate) pending: HashMap<String, (PendingOp, Option<String>)>,
    /// The gateway `terminate_connected_gateway` sent SIGTERM to.
    pub(crate) terminated: Option<usize>,
    /// Batches and publishes received by the first gateway at `mark_metrics`.
    pub(crate) marks: (f64, f64),
}

impl Runner {
    pub(crate) async fn next(&mut self, sub: &str, ms: u64) -> Result<Message, String> {
        let s = self
            .subs
            .get_mut(sub)
            .ok_or(format!("no subscription {sub}"))?;
        match tokio::time::timeout(Duration::from_millis(ms), s.next_message()).await {
            Ok(Some(m)) => Ok(m),
            Ok(None) => Err(format!("{sub}: subscription ended")),
            Err(_) => Err(format!("{sub}: no message within {ms} ms")),
        }
    }

    /// The index and id of the gateway the step's client is connected to.
    pub(crate) fn connected_gateway(&self, s: &Json) -> Result<(usize, String), String> {
        let info = self
            .client(s)?
            .server_info()
            .ok_or("the client is not connected")?;
        let i = (0..self.env.gateways.len())
            .find(|i| format!("conformance-gw-{i}") == info.gateway_id)
            .ok_or(format!("no gateway {} here", info.gateway_id))?;
        Ok((i, info.gateway_id))
    }

    pub(crate) fn client(&self, s: &Json) -> Result<Client, String> {
        let name = s.str("client").unwrap_or_default();
        self.clients
            .get(name)
            .cloned()
            .ok_or(format!("no client {name}"))
    }

    pub(crate) async fn step(&mut self, s: &Json) -> Result<(), String> {
        let op = s.str("op").unwrap_or_default();
        let started = Instant::now();
        let retry = Duration::from_millis(s.num("retry_ms").unwrap_or(0));
        match op {
            "connect" => {
                let key = s
                    .str("key")
                    .and_then(|k| self.env.keys.get(k))
                    .cloned()
                    .unwrap_or_default();
                let url = match (s.str("via"), s.str("gateway")) {
                    (Some("srv"), _) => self.env.srv_url(s.str("region")),
                    (Some("relay"), _) => self.env.relay.as_ref().ok_or("no relay")?.url(),
                    (_, Some("remote")) => self.env.remote.as_ref().ok_or("no remote")?.url(),
                    _ => self.env.gateways[0].url(),
                };
                let local_check = s.get("local_payload_check") != Some(&Json::Bool(false));
                let retry_ms = s.num("publish_retry_ms");
                let name = s.str("client").unwrap_or_default().to_owned();
                let window = s.num("stream_window");
                let codec = match s.str("compression") {
                    None | Some("zstd") => Some(nexus_client::Codec::Zstd),
                    Some("lz4") => Some(nexus_client::Codec::Lz4),
                    Some("off") => None,
                    Some(other) => return Err(format!("unknown compression {other:?}")),
                };
                let tls = TlsOptions {
                    ca: s
                        .str("tls_ca")
                        .map(|w| self.env.pki.get(w).map(|d| d.join("ca.pem")))
                        .map(|p| p.ok_or("tls_ca names no PKI of this environment"))
                        .transpose()?,
                    client: s
                        .str("tls_client_cert")
                        .map(|w| {
                            self.env.pki.get(w).map(|d| {
                                (
                                    d.join("clients/conformance.pem"),
                                    d.join("clients/conformance-key.pem"),
                                )
                            })
                        })
                        .map(|p| p.ok_or("tls_client_cert names no PKI of this environment"))
                        .transpose()?,
                    server_name: s.str("tls_server_name").map(str::to_owned),
                    srv: s.get("tls") == Some(&Json::Bool(true)),
                };
                let connect = || {
                    let mut b = Client::builder(&url)
                        .transport(transport())
                        .api_key(key.clone())
                        .name(format!("conformance-{name}"))
                        .connect_timeout(Duration::from_secs(3))
                        .reconnect_backoff(Duration::from_millis(50), Duration::from_millis(500))
                        .compression(codec);
                    if let Some(w) = window {
                        b = b.stream_window(w as u32);
                    }
                    if let Some(ms) = retry_ms {
                        b = b.publish_retry_timeout(Duration::from_millis(ms));
                    }
                    let tls = tls.clone();
                    async move {
                        #[cfg(feature = "tls")]
                        {
                            if let Some(ca) = tls.ca {
                                b = b.tls_ca_file(ca)?;
                            }
                            if let Some((cert, key)) = tls.client {
                                b = b.tls_client_cert_files(cert, key)?;
                            }
                            if let Some(name) = tls.server_name {
                                b = b.tls_domain(name);
                            }
                            b = b.tls(tls.srv);
                        }
                        #[cfg(not(feature = "tls"))]
                        let _ = tls;
                        b.local_payload_check(local_check).connect().await
                    }
                };
                if s.get("expect_error").is_some() {
                    let r = connect().await;
                    // TLS 1.3 completes the client's side of the handshake before the gateway
                    // checks the client certificate, so this adapter sees that refusal as the
                    // first call's failure (`Error::Transport`), not `Error::Connect`: for a
                    // `connect` step both mean the connection was refused.
                    if s.str("expect_error") == Some("connect")
                        && let Err(e @ Error::Transport(_)) = &r
                    {
                        return match s.str("error_contains") {
                            Some(want) if !full_message(e).contains(want) => Err(format!(
                                "error {} does not contain {want:?}",
                                full_message(e)
                            )),
                            _ => Ok(()),
                        };
                    }
                    return check_error(s, r, started);
                }
                let c = loop {
                    match connect().await {
                        Ok(c) => break c,
                        Err(_) if started.elapsed() < retry => {
                            tokio::time::sleep(Duration::from_millis(100)).await
                        }
                        Err(e) => return Err(e.to_string()),
                    }
                };
                self.clients.insert(name, c);
            }
            "close" => {
                if let Some(c) = self.clients.remove(s.str("client").unwrap_or_default()) {
                    c.close().await;
                }
            }
            "subscribe" => {
                let c = self.client(s)?;
                let subject = s.str("subject").unwrap_or_default();
                let r = match s.str("queue") {
                    Some(q) => c.queue_subscribe(subject, q).await,
                    None => c.subscribe(subject).await,
                };
                if s.get("expect_error").is_some() {
                    return check_error(s, r, started);
                }
                self.subs.insert(
                    s.str("sub").unwrap_or_default().to_owned(),
                    r.map_err(|e| e.to_string())?,
                );
            }
            "publish" => {
                let c = self.client(s)?;
                let msg = OutgoingMessage::new(s.str("subject").unwrap_or_default(), payload_of(s))
                    .with_headers(headers_of(s));
                let r = if s.flag("ack") {
                    if let Some(name) = s.str("pending") {
                        let task = tokio::spawn(async move {
                            c.publish_message_acked(msg).await.map(|_| None)
                        });
                        self.pending.insert(name.to_owned(), (task, None));
                        tokio::task::yield_now().await;
                        return Ok(());
                    }
                    c.publish_message_acked(msg).await.map(|_| ())
                } else {
                    c.publish_message(msg).await
                };
                if s.get("expect_error").is_some() {
                    return check_error(s, r, started);
                }
                r.map_err(|e| e.to_string())?;
            }
            "await" => {
                let (task, want) = self
                    .pending
                    .remove(s.str("pending").unwrap_or_default())
                    .ok_or("no such pending operation")?;
                let r = task.await.map_err(|e| e.to_string())?;
                if s.get("expect_error").is_some() {
                    return check_error(s, r, started);
                }
                let got = r.map_err(|e| e.to_string())?;
                if let (Some(want), Some(got)) = (want, got)
                    && got != want.as_bytes()
                {
                    return Err(format!("expected reply {want:?}, got {got:?}"));
                }
            }
            "relay_hold" => self.env.relay.as_ref().ok_or("no relay")?.hold(),
            "relay_cut" => self.env.relay.as_ref().ok_or("no relay")?.cut(),
            "relay_block" => self.env.relay.as_ref().ok_or("no relay")?.block(true),
            "relay_pass" => self.env.relay.as_ref().ok_or("no relay")?.block(false),
            "await_route" => {
                let (name, subject) = (
                    s.str("name").unwrap_or_default().to_owned(),
                    s.str("subject").unwrap_or_default().to_owned(),
                );
                tokio::task::block_in_place(|| self.env.await_route(&name, &subject))?;
            }
            "kill_gateway" => self.env.gateways[0].proc = None,
            "start_gateway" => {
                let mut g = std::mem::replace(
                    &mut self.env.gateways[0],
                    Gateway {
                        args: Vec::new(),
                        log: PathBuf::new(),
                        proc: None,
                        grpc: String::new(),
                        metrics: String::new(),
                        federation: String::new(),
                        tls: false,
                    },
                );
                let (g, r) = tokio::task::spawn_blocking(move || {
                    let r = g.start();
                    (g, r)
                })
                .await
                .map_err(|e| e.to_string())?;
                self.env.gateways[0] = g;
                r?;
            }
            "expect_disconnected" => {
                let c = self.client(s)?;
                let deadline =
                    Instant::now() + Duration::from_millis(s.num("timeout_ms").unwrap_or(5000));
                while c.is_connected() {
                    if Instant::now() > deadline {
                        return Err("still connected".into());
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            "await_replicated" => tokio::task::block_in_place(|| self.env.await_replicated())?,
            "await_interest" => {
                let subject = s.str("subject").unwrap_or_default().to_owned();
                tokio::task::block_in_place(|| self.env.await_interest(&subject))?;
            }
            "mark_metrics" => {
                self.marks = (
                    self.env
                        .metric("nexus_session_batches_received_total", &[])?,
                    self.env.metric(
                        "nexus_messages_total",
                        &["pattern=\"pub\"", "direction=\"in\""],
                    )?,
                );
            }
            "expect_batched" => {
                let batches = self
                    .env
                    .metric("nexus_session_batches_received_total", &[])?
                    - self.marks.0;
                let pubs = self.env.metric(
                    "nexus_messages_total",
                    &["pattern=\"pub\"", "direction=\"in\""],
                )? - self.marks.1;
                let (want, max) = (
                    s.num("messages").unwrap_or(0) as f64,
                    s.num("max_batches").unwrap_or(0) as f64,
                );
                if pubs < want || batches > max || batches < 1.0 {
                    return Err(format!(
                        "{pubs} publishes arrived in {batches} batches; expected at least {want} in at most {max}"
                    ));
                }
                println!("  batched: {pubs} publishes in {batches} gRPC messages (at most {max})");
            }
            "expect_metric" => {
                let name = s.str("metric").unwrap_or_default();
                let labels: Vec<String> = match s.get("labels") {
                    Some(Json::Obj(fields)) => fields
                        .iter()
                        .map(|(k, v)| match v {
                            Json::Str(v) => format!("{k}=\"{v}\""),
                            _ => format!("{k}=?"),
                        })
                        .collect(),
                    _ => Vec::new(),
                };
                let refs: Vec<&str> = labels.iter().map(String::as_str).collect();
                let value = self.env.metric(name, &refs)?;
                let want = s.num("value").unwrap_or(0) as f64;
                if value != want {
                    return Err(format!("{name}{labels:?} is {value}, expected {want}"));
                }
            }
            "drain" => self.client(s)?.drain().await,
            "expect_end" => {
                let sub = s.str("sub").unwrap_or_default();
                let ms = s.num("timeout_ms").unwrap_or(5000);
                let sub_ref = self.subs.get_mut(sub).ok_or("no such subscription")?;
                match tokio::time::timeout(Duration::from_millis(ms), sub_ref.next_message()).await
                {
                    Ok(None) => {}
                    Ok(Some(m)) => {
                        return Err(format!("{sub}: expected the end, got {:?}", m.payload));
                    }
                    Err(_) => return Err(format!("{sub} did not end")),
                }
            }
            "publish_many" => {
                let c = self.client(s)?;
                let prefix = s.str("prefix").unwrap_or_default();
                for i in 0..s.num("count").unwrap_or(0) {
                    c.publish(
                        s.str("subject").unwrap_or_default(),
                        format!("{prefix}-{i}"),
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                }
            }
            "flush" => self.client(s)?.flush().await.map_err(|e| e.to_string())?,
            "expect_message" => {
                let m = self
                    .next(
                        s.str("sub").unwrap_or_default(),
                        s.num("timeout_ms").unwrap_or(5000),
                    )
                    .await?;
                if let Some(subject) = s.str("subject")
                    && m.subject != subject
                {
                    return Err(format!("expected subject {subject}, got {}", m.subject));
                }
                if (s.get("payload").is_some() || s.get("payload_size").is_some())
                    && m.payload != payload_of(s)
                {
                    return Err(format!("unexpected payload {:?}", m.payload));
                }
                for (k, v) in s.get("headers").map(Json::fields).unwrap_or_default() {
                    if let Json::Str(v) = v
                        && m.headers.get(k) != Some(v.as_str())
                    {
                        return Err(format!(
                            "header {k}: expected {v}, got {:?}",
                            m.headers.get(k)
                        ));
                    }
                }
                if s.flag("has_traceparent")
                    && !nexus_client::is_valid_traceparent(m.traceparent().unwrap_or(""))
                {
                    return Err("no valid traceparent".into());
                }
            }
            "expect_no_message" => {
                let sub = s.str("sub").unwrap_or_default();
                let within = s.num("within_ms").unwrap_or(100);
                let sub_ref = self.subs.get_mut(sub).ok_or("no such subscription")?;
                if let Ok(Some(m)) =
                    tokio::time::timeout(Duration::from_millis(within), sub_ref.next_message())
                        .await
                {
                    return Err(format!("{sub}: unexpected message on {}", m.subject));
                }
            }
            "expect_all" => {
                let prefix = s.str("prefix").unwrap_or_default();
                for i in 0..s.num("count").unwrap_or(0) {
                    let m = self
                        .next(
                            s.str("sub").unwrap_or_default(),
                            s.num("timeout_ms").unwrap_or(10_000),
                        )
                        .await?;
                    let want = format!("{prefix}-{i}");
                    if m.payload != want.as_bytes() {
                        return Err(format!("expected {want} (in order), got {:?}", m.payload));
                    }
                }
            }
            "expect_exclusive" => {
                let count = s.num("count").unwrap_or(0) as usize;
                let names: Vec<String> = s
                    .get("subs")
                    .map(Json::items)
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|j| match j {
                        Json::Str(x) => Some(x.clone()),
                        _ => None,
                    })
                    .collect();
                let mut seen: HashMap<Bytes, String> = HashMap::new();
                let deadline =
                    Instant::now() + Duration::from_millis(s.num("timeout_ms").unwrap_or(10_000));
                while seen.len() < count {
                    if Instant::now() > deadline {
                        return Err(format!(
                            "only {} of {count} messages reached the group",
                            seen.len()
                        ));
                    }
                    for n in &names {
                        if let Ok(m) = self.next(n, 20).await
                            && let Some(prev) = seen.insert(m.payload.clone(), n.clone())
                        {
                            return Err(format!("{:?} delivered to {prev} and {n}", m.payload));
                        }
                    }
                }
                for n in &names {
                    if let Ok(m) = self.next(n, 100).await {
                        return Err(format!("extra delivery {:?} to {n}", m.payload));
                    }
                }
                let prefix = s.str("prefix").unwrap_or_default();
                for i in 0..count {
                    if !seen.contains_key(format!("{prefix}-{i}").as_bytes()) {
                        return Err(format!("{prefix}-{i} never reached the group"));
                    }
                }
            }
            "serve" => {
                let c = self.client(s)?;
                let spec = s.str("handler").unwrap_or_default().to_owned();
                let svc = c
                    .serve(
                        s.str("subject").unwrap_or_default(),
                        s.str("queue"),
                        move |m| handler(spec.clone(), m),
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                self.services.push(svc);
            }
            "request" => {
                let c = self.client(s)?;
                let timeout = Duration::from_millis(s.num("timeout_ms").unwrap_or(0));
                let subject = s.str("subject").unwrap_or_default();
                if let Some(name) = s.str("pending") {
                    let (subject, headers, payload) =
                        (subject.to_owned(), headers_of(s), payload_of(s));
                    let task = tokio::spawn(async move {
                        c.request_with(&subject, headers, payload, timeout)
                            .await
                            .map(|m| Some(m.payload))
                    });
                    let want = s.str("expect_payload").map(str::to_owned);
                    self.pending.insert(name.to_owned(), (task, want));
                    // Let the request reach the gateway before the next step.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    return Ok(());
                }
                let r = loop {
                    let r = c
                        .request_with(subject, headers_of(s), payload_of(s), timeout)
                        .await;
                    match r {
                        Err(_) if s.get("expect_error").is_none() && started.elapsed() < retry => {
                            tokio::time::sleep(Duration::from_millis(100)).await
                        }
                        r => break r,
                    }
                };
                if s.get("expect_error").is_some() {
                    return check_error(s, r, started);
                }
                let m = r.map_err(|e| e.to_string())?;
                if let Some(want) = s.str("expect_payload")
                    && m.payload != want.as_bytes()
                {
                    return Err(format!("expected reply {want:?}, got {:?}", m.payload));
                }
                if let Some(n) = s.num("expect_payload_size")
                    && m.payload.len() as u64 != n
                {
                    return Err(format!("reply of {} bytes", m.payload.len()));
                }
            }
            "listen_streams" => {
                let c = self.client(s)?;
                let mut listener = c
                    .listen_streams(s.str("subject").unwrap_or_default(), s.str("queue"))
                    .await
                    .map_err(|e| e.to_string())?;
                let hold = s.str("handler") == Some("hold");
                self.tasks.push(tokio::spawn(async move {
                    let mut held = Vec::new();
                    while let Some(mut st) = listener.accept().await {
                        if hold {
                            held.push(st); // accepted, kept open, never read
                            continue;
                        }
                        tokio::spawn(async move {
                            while let Some(Ok(m)) = st.recv().await {
                                if st.send(m.payload).await.is_err() {
                                    return;
                                }
                            }
                            let _ = st.finish().await;
                        });
                    }
                }));
            }
            "stream" => {
                let c = self.client(s)?;
                let subject = s.str("subject").unwrap_or_default();
                if s.get("expect_error").is_some() {
                    return check_error(s, c.open_stream(subject).await, started);
                }
                let st = c.open_stream(subject).await.map_err(|e| e.to_string())?;
                let (mut tx, mut rx) = st.split();
                let count = s.num("count").unwrap_or(0);
                let prefix = s.str("prefix").unwrap_or_default().to_owned();
                let p = prefix.clone();
                let sender = tokio::spawn(async move {
                    for i in 0..count {
                        tx.send(format!("{p}-{i}")).await?;
                    }
                    tx.finish().await?;
                    Ok::<_, Error>(tx)
                });
                let mut got = 0;
                while let Some(m) = rx.recv().await {
                    let m = m.map_err(|e| e.to_string())?;
                    if m.payload != format!("{prefix}-{got}").as_bytes() {
                        return Err(format!(
                            "stream: expected {prefix}-{got}, got {:?}",
                            m.payload
                        ));
                    }
                    got += 1;
                }
                let _tx = sender
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| e.to_string())?;
                if got != count {
                    return Err(format!("stream: {got} of {count} frames came back"));
                }
            }
            "stream_blocks" => {
                let c = self.client(s)?;
                let mut st = c
                    .open_stream(s.str("subject").unwrap_or_default())
                    .await
                    .map_err(|e| e.to_string())?;
                let expect = s.num("expect_sent").unwrap_or(0);
                let block = Duration::from_millis(s.num("block_ms").unwrap_or(300));
                let mut sent = 0;
                while sent <= expect {
                    match tokio::time::timeout(block, st.send(format!("frame-{sent}"))).await {
                        Ok(r) => r.map_err(|e| e.to_string())?,
                        Err(_) => break,
                    }
                    sent += 1;
                }
                st.abort("conformance: done");
                if sent != expect {
                    return Err(format!(
                        "{sent} sends completed before one waited, expected {expect}"
                    ));
                }
            }
            "restart_gateway" => {
                self.env.gateways[0].proc = None;
                tokio::task::block_in_place(|| self.env.gateways[0].start())?;
            }
            "kill_connected_gateway" => {
                let (i, gateway_id) = self.connected_gateway(s)?;
                self.env.gateways[i].proc = None;
                self.killed = gateway_id;
            }
            "terminate_connected_gateway" => {
                let (i, gateway_id) = self.connected_gateway(s)?;
                let pid = self.env.gateways[i]
                    .proc
                    .as_ref()
                    .ok_or("that gateway is not running")?
                    .0
                    .id();
                let status = std::process::Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status()
                    .map_err(|e| format!("kill -TERM {pid}: {e}"))?;
                if !status.success() {
                    return Err(format!("kill -TERM {pid} failed: {status}"));
                }
                self.killed = gateway_id;
                self.terminated = Some(i);
            }
            "expect_gateway_exited" => {
                let i = self.terminated.ok_or("no gateway was terminated")?;
                let deadline =
                    Instant::now() + Duration::from_millis(s.num("timeout_ms").unwrap_or(5000));
                let proc = self.env.gateways[i].proc.as_mut().ok_or("not running")?;
                let status = loop {
                    if let Some(status) = proc.0.try_wait().map_err(|e| e.to_string())? {
                        break status;
                    }
                    if Instant::now() > deadline {
                        return Err(format!("gateway {} still running", self.killed));
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                };
                self.env.gateways[i].proc = None;
                if !status.success() {
                    return Err(format!("gateway {} exited with {status}", self.killed));
                }
            }
            "expect_other_gateway" => {
                let c = self.client(s)?;
                let deadline =
                    Instant::now() + Duration::from_millis(s.num("timeout_ms").unwrap_or(5000));
                loop {
                    let info = c.server_info();
                    if c.is_connected()
                        && info.as_ref().is_some_and(|i| i.gateway_id != self.killed)
                    {
                        break;
                    }
                    if Instant::now() > deadline {
                        return Err(format!(
                            "expected a gateway other than {}, got {:?}",
                            self.killed,
                            info.map(|i| i.gateway_id)
                        ));
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            "expect_eventually" => {
                let c = self.client(s)?;
                let payload = s.str("payload").unwrap_or_default().to_owned();
                let deadline =
                    Instant::now() + Duration::from_millis(s.num("timeout_ms").unwrap_or(10_000));
                loop {
                    let _ = c
                        .publish(s.str("subject").unwrap_or_default(), payload.clone())
                        .await;
                    if let Ok(m) = self.next(s.str("sub").unwrap_or_default(), 100).await
                        && m.payload == payload.as_bytes()
                    {
                        break;
                    }
                    if Instant::now() > deadline {
                        return Err(format!("never received {payload}"));
                    }
                }
            }
            "measure_failover" => self.measure_failover(s).await?,
            other => return Err(format!("unknown op {other}")),
        }
        Ok(())
    }
}

/// 60 s a step; a failover measurement gets 30 s a round on top.
pub(crate) fn step_timeout(s: &Json) -> Duration {
    let extra = if s.str("op") == Some("measure_failover") {
        30 * failover_rounds(s)
    } else {
        0
    };
    Duration::from_secs(60 + extra)
}
