//! `Tail`: a live tail of messages on a subject pattern, across every live gateway
//! (docs/trace.md §7). Each gateway taps the messages its clients hand it
//! (`GET /v1/tail` on its operator endpoint: sampled, rate-limited and dropped rather than
//! ever slowing publishers, `nexus_gateway::tap`); this module opens one tap per live
//! gateway (and on gateways that register later), redacts each event's payload preview by
//! its subject's `tail_preview` setting (SchemaConfig) before it leaves the control plane,
//! and sends the caller a stats event every second.
//!
//! Redaction ([`preview`]) is sans-I/O: the gateway sends at most the largest preview any
//! subject's setting allows (none when no setting allows one); the control plane cuts each
//! event to its own subject's length and masks the values of the listed JSON fields.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use nexus_proto::v1::{
    GatewayInfo, SchemaConfig, TailEvent, TailPreview, TailRequest, TailStats, TraceGatewayError,
};
use parking_lot::Mutex;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

use crate::error::AdminError;
use crate::store::Store;

/// How often the list of live gateways is read again (new gateways get a tap).
const REFRESH: Duration = Duration::from_secs(2);
/// How long a subject's redaction setting is cached within one tail.
const SETTING_TTL: Duration = Duration::from_secs(5);
/// Events queued for the caller before the control plane drops (the caller is slow).
const QUEUE: usize = 1024;

/// What the caller asked, checked.
#[derive(Clone, Debug)]
pub struct TailSpec {
    pub subject: String,
    pub sample_rate: f64,
    pub max_per_second: u32,
}

impl TailSpec {
    pub fn new(req: &TailRequest) -> Result<Self, AdminError> {
        nexus_proto::subject::validate_pattern(&req.subject)
            .map_err(|e| AdminError::invalid("subject", format!("{:?}: {e}", req.subject)))?;
        let sample_rate = if req.sample_rate == 0.0 {
            1.0
        } else {
            req.sample_rate
        };
        if !(sample_rate > 0.0 && sample_rate <= 1.0) {
            return Err(AdminError::invalid(
                "sample_rate",
                format!("{} must be above 0 and at most 1", req.sample_rate),
            ));
        }
        let max_per_second = if req.max_per_second == 0 {
            20
        } else {
            req.max_per_second
        };
        if max_per_second > 1000 {
            return Err(AdminError::invalid(
                "max_per_second",
                format!("{max_per_second} is above the limit of 1000"),
            ));
        }
        Ok(Self {
            subject: req.subject.clone(),
            sample_rate,
            max_per_second,
        })
    }
}

/// Renders payload bytes as text: UTF-8 as is, other bytes and control characters escaped.
fn render(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

fn ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// The index just after the JSON string starting at `start` (or the end, when cut).
fn string_end(b: &[u8], start: usize) -> usize {
    let mut i = start + 1;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'"' => return i + 1,
            _ => i += 1,
        }
    }
    b.len()
}

/// The index just after the JSON value starting at `start` (or the end, when cut).
fn value_end(b: &[u8], start: usize) -> usize {
    if start >= b.len() {
        return b.len();
    }
    match b[start] {
        b'"' => string_end(b, start),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut i = start;
            while i < b.len() {
                match b[i] {
                    b'"' => i = string_end(b, i),
                    b'{' | b'[' => {
                        depth += 1;
                        i += 1;
                    }
                    b'}' | b']' => {
                        depth = depth.saturating_sub(1);
                        i += 1;
                        if depth == 0 {
                            return i;
                        }
                    }
                    _ => i += 1,
                }
            }
            b.len()
        }
        _ => {
            let mut i = start;
            while i < b.len() && !matches!(b[i], b',' | b'}' | b']') && !ws(b[i]) {
                i += 1;
            }
            i
        }
    }
}

/// Replaces the values of the JSON object fields named in `fields`, at any depth, with
/// `"***"`. Lexical, so it works on a payload cut anywhere: a value cut by the preview's end
/// is masked to the end. Returns the masked bytes and how many values it masked.
pub fn mask(input: &[u8], fields: &[String]) -> (Vec<u8>, usize) {
    let mut out = Vec::with_capacity(input.len());
    let mut masked = 0;
    let mut i = 0;
    while i < input.len() {
        if input[i] != b'"' {
            out.push(input[i]);
            i += 1;
            continue;
        }
        let end = string_end(input, i);
        let token = &input[i..end];
        out.extend_from_slice(token);
        i = end;
        let mut j = i;
        while j < input.len() && ws(input[j]) {
            j += 1;
        }
        if j >= input.len() || input[j] != b':' || token.len() < 2 {
            continue;
        }
        let key = &token[1..token.len() - 1];
        if !fields.iter().any(|f| f.as_bytes() == key) {
            continue;
        }
        let mut k = j + 1;
        while k < input.len() && ws(input[k]) {
            k += 1;
        }
        out.extend_from_slice(&input[i..k]);
        out.extend_from_slice(b"\"***\"");
        masked += 1;
        i = value_end(input, k);
    }
    (out, masked)
}

/// The preview of a payload of `total` bytes whose first bytes are `head`, under `setting`
/// (none: no preview): the text and a note saying what was done.
pub fn preview(head: &[u8], total: usize, setting: Option<&TailPreview>) -> (String, String) {
    let Some(setting) = setting.filter(|s| s.max_bytes > 0) else {
        return (
            String::new(),
            "preview off for this subject (schema config tail_preview)".into(),
        );
    };
    let cut = &head[..head.len().min(setting.max_bytes as usize)];
    let mut note = if cut.len() < total {
        format!("first {} of {total} bytes", cut.len())
    } else {
        format!("{total} bytes")
    };
    if setting.redact_fields.is_empty() {
        return (render(cut), note);
    }
    let first = cut.iter().copied().find(|b| !ws(*b));
    if !matches!(first, Some(b'{') | Some(b'[')) {
        return (
            String::new(),
            "hidden: not JSON, and this subject has fields to redact".into(),
        );
    }
    let (masked, n) = mask(cut, &setting.redact_fields);
    note.push_str(&format!(", {n} field(s) redacted"));
    (render(&masked), note)
}

/// The effective `tail_preview` of subjects, read from the store and cached a few seconds.
struct Settings {
    store: Arc<dyn Store>,
    cache: Mutex<HashMap<String, (tokio::time::Instant, Option<TailPreview>)>>,
}

impl Settings {
    async fn of(&self, subject: &str) -> Option<TailPreview> {
        let now = tokio::time::Instant::now();
        if let Some((at, s)) = self.cache.lock().get(subject)
            && now.duration_since(*at) < SETTING_TTL
        {
            return s.clone();
        }
        // A store error hides the preview: redaction fails closed.
        let setting = crate::schemas::get_config(&*self.store, subject)
            .await
            .ok()
            .and_then(|c| c.tail_preview);
        let mut cache = self.cache.lock();
        if cache.len() > 10_000 {
            cache.clear();
        }
        cache.insert(subject.to_owned(), (now, setting.clone()));
        setting
    }
}

/// The largest preview any subject's setting allows: what the gateways are asked for.
async fn largest_preview(store: &dyn Store) -> Result<u32, AdminError> {
    let (configs, _) =
        crate::records::list::<SchemaConfig>(store, crate::names::SCHEMA_CONFIG).await?;
    let global = crate::schemas::get_config(store, "").await?;
    Ok(configs
        .iter()
        .map(|(c, _)| c)
        .chain(std::iter::once(&global))
        .filter_map(|c| c.tail_preview.as_ref())
        .map(|t| t.max_bytes.min(crate::schemas::MAX_TAIL_PREVIEW))
        .max()
        .unwrap_or(0))
}

/// One gateway's tap counters, as its last stats line said.
#[derive(Default, Clone, Copy)]
struct Counts {
    matched: u64,
    sent: u64,
    rate: u64,
    slow: u64,
}

struct Shared {
    spec: TailSpec,
    preview_bytes: u32,
    settings: Settings,
    tx: tokio::sync::mpsc::Sender<Result<TailEvent, tonic::Status>>,
    /// Per gateway (region/id): its counters, or why it could not be tapped.
    counts: Mutex<HashMap<(String, String), Counts>>,
    errors: Mutex<HashMap<(String, String), String>>,
    /// Events dropped here because the caller was slow.
    dropped_here: AtomicU64,
}

/// Starts a tail; its events arrive on the returned stream until the caller drops it.
pub async fn start(
    store: Arc<dyn Store>,
    req: TailRequest,
) -> Result<tokio_stream::wrappers::ReceiverStream<Result<TailEvent, tonic::Status>>, AdminError> {
    let spec = TailSpec::new(&req)?;
    let preview_bytes = largest_preview(&*store).await?;
    let (tx, rx) = tokio::sync::mpsc::channel(QUEUE);
    let shared = Arc::new(Shared {
        spec,
        preview_bytes,
        settings: Settings {
            store: store.clone(),
            cache: Mutex::new(HashMap::new()),
        },
        tx,
        counts: Mutex::new(HashMap::new()),
        errors: Mutex::new(HashMap::new()),
        dropped_here: AtomicU64::new(0),
    });
    tokio::spawn(supervise(store, shared));
    Ok(tokio_stream::wrappers::ReceiverStream::new(rx))
}

/// Opens a tap on every live gateway (again on one whose tap ended), sends stats every
/// second, and stops everything once the caller is gone.
async fn supervise(store: Arc<dyn Store>, shared: Arc<Shared>) {
    let mut running: HashMap<(String, String), tokio::task::JoinHandle<()>> = HashMap::new();
    let mut stats = tokio::time::interval(Duration::from_secs(1));
    let mut refresh = tokio::time::interval(REFRESH);
    loop {
        tokio::select! {
            _ = shared.tx.closed() => break,
            _ = refresh.tick() => {
                let gateways = match crate::regions::gateways(&*store, "").await {
                    Ok(g) => g,
                    Err(e) => {
                        tracing::debug!(error = %e, "tail: cannot list gateways");
                        continue;
                    }
                };
                let live: HashSet<_> = gateways
                    .iter()
                    .map(|g| (g.region.clone(), g.id.clone()))
                    .collect();
                running.retain(|k, h| {
                    let keep = live.contains(k) && !h.is_finished();
                    if !keep {
                        h.abort();
                        shared.counts.lock().remove(k);
                    }
                    keep
                });
                shared.errors.lock().retain(|k, _| live.contains(k));
                for g in gateways {
                    let k = (g.region.clone(), g.id.clone());
                    if running.contains_key(&k) {
                        continue;
                    }
                    running.insert(k, tokio::spawn(tap_gateway(shared.clone(), g)));
                }
            }
            _ = stats.tick() => {
                let ev = stats_event(&shared);
                if shared.tx.try_send(Ok(ev)).is_err() {
                    shared.dropped_here.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
    for (_, h) in running {
        h.abort();
    }
}

fn stats_event(shared: &Shared) -> TailEvent {
    let counts = shared.counts.lock();
    let mut s = TailStats {
        // Gateways whose tap is open and reporting.
        gateways: counts.len() as u32,
        dropped_slow_viewer: shared.dropped_here.load(Ordering::Relaxed),
        ..Default::default()
    };
    for c in counts.values() {
        s.matched += c.matched;
        s.sent += c.sent;
        s.dropped_rate_limit += c.rate;
        s.dropped_slow_viewer += c.slow;
    }
    drop(counts);
    for ((region, gateway_id), error) in shared.errors.lock().iter() {
        s.unreachable.push(TraceGatewayError {
            region: region.clone(),
            gateway_id: gateway_id.clone(),
            error: error.clone(),
        });
    }
    s.unreachable
        .sort_by(|a, b| (&a.region, &a.gateway_id).cmp(&(&b.region, &b.gateway_id)));
    TailEvent {
        stats: Some(s),
        ..Default::default()
    }
}

/// Follows one gateway's tap until it ends (the gateway went away, or the caller did).
async fn tap_gateway(shared: Arc<Shared>, gw: GatewayInfo) {
    let key = (gw.region.clone(), gw.id.clone());
    match follow(&shared, &gw).await {
        Ok(()) => {}
        Err(error) => {
            tracing::debug!(gateway = %gw.id, %error, "tail: tap failed");
            shared.errors.lock().insert(key.clone(), error);
        }
    }
    // Keep its last counters only while it is tapped.
    shared.counts.lock().remove(&key);
}

async fn follow(shared: &Shared, gw: &GatewayInfo) -> Result<(), String> {
    if gw.metrics_addr.is_empty() {
        return Err("registered no HTTP (metrics) address".into());
    }
    let addr = &gw.metrics_addr;
    let spec = &shared.spec;
    let path = format!(
        "/v1/tail?subject={}&sample={}&rate={}&preview={}",
        crate::trace::escape(&spec.subject),
        spec.sample_rate,
        spec.max_per_second,
        shared.preview_bytes
    );
    let stream = tokio::time::timeout(Duration::from_secs(3), tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| format!("{addr} did not accept a connection within 3 s"))?
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    let mut stream = tokio::io::BufReader::new(stream);
    stream
        .get_mut()
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .map_err(|e| format!("writing to {addr}: {e}"))?;
    let mut line = String::new();
    async fn read(
        stream: &mut tokio::io::BufReader<tokio::net::TcpStream>,
        line: &mut String,
        addr: &str,
    ) -> Result<usize, String> {
        line.clear();
        // A tap sends a stats line every second: 5 s of silence is a dead gateway.
        match tokio::time::timeout(Duration::from_secs(5), stream.read_line(line)).await {
            Err(_) => Err(format!("{addr} sent nothing for 5 s")),
            Ok(Err(e)) => Err(format!("reading from {addr}: {e}")),
            Ok(Ok(n)) => Ok(n),
        }
    }
    read(&mut stream, &mut line, addr).await?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("malformed HTTP answer from {addr}: {:?}", line.trim()))?;
    // Headers.
    loop {
        if read(&mut stream, &mut line, addr).await? == 0 {
            return Err(format!("{addr} closed the connection"));
        }
        if line.trim().is_empty() {
            break;
        }
    }
    if status != 200 {
        let mut body = String::new();
        while read(&mut stream, &mut line, addr).await? > 0 && body.len() < 1000 {
            body.push_str(&line);
        }
        return Err(format!("answered HTTP {status}: {}", body.trim()));
    }
    shared
        .errors
        .lock()
        .remove(&(gw.region.clone(), gw.id.clone()));
    loop {
        if read(&mut stream, &mut line, addr).await? == 0 {
            return Err(format!("{addr} ended the tap"));
        }
        let Ok(v) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        match v["type"].as_str() {
            Some("message") => {
                let ev = event(shared, gw, &v).await;
                if shared.tx.try_send(Ok(ev)).is_err() {
                    if shared.tx.is_closed() {
                        return Ok(());
                    }
                    shared.dropped_here.fetch_add(1, Ordering::Relaxed);
                }
            }
            Some("stats") => {
                let n = |k: &str| v[k].as_u64().unwrap_or_default();
                shared.counts.lock().insert(
                    (gw.region.clone(), gw.id.clone()),
                    Counts {
                        matched: n("matched"),
                        sent: n("sent"),
                        rate: n("dropped_rate_limit"),
                        slow: n("dropped_slow_viewer"),
                    },
                );
            }
            _ => {}
        }
    }
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .filter_map(|i| u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok())
        .collect()
}

/// A tapped message as the caller sees it: its preview redacted by its subject's setting.
async fn event(shared: &Shared, gw: &GatewayInfo, v: &Value) -> TailEvent {
    let s = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
    let subject = s("subject");
    let total = v["payload_bytes"].as_u64().unwrap_or_default() as usize;
    let setting = shared.settings.of(&subject).await;
    let head = unhex(v["preview_hex"].as_str().unwrap_or_default());
    let (preview, preview_note) = preview(&head, total, setting.as_ref());
    TailEvent {
        message_id: s("message_id"),
        subject,
        at_us: v["at_us"].as_i64().unwrap_or_default(),
        region: gw.region.clone(),
        gateway_id: gw.id.clone(),
        kind: s("kind"),
        payload_bytes: total as u32,
        header_keys: v["header_keys"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|k| k.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default(),
        trace_id: s("trace_id"),
        preview,
        preview_note,
        stats: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setting(max: u32, fields: &[&str]) -> TailPreview {
        TailPreview {
            max_bytes: max,
            redact_fields: fields.iter().map(|f| f.to_string()).collect(),
        }
    }

    #[test]
    fn no_setting_no_preview() {
        let (p, note) = preview(b"{\"a\":1}", 7, None);
        assert_eq!(p, "");
        assert!(note.contains("off"), "{note}");
        assert_eq!(preview(b"x", 1, Some(&setting(0, &[]))).0, "");
    }

    #[test]
    fn previews_are_cut_and_rendered() {
        let (p, note) = preview(b"hello world", 11, Some(&setting(5, &[])));
        assert_eq!(p, "hello");
        assert_eq!(note, "first 5 of 11 bytes");
        let (p, _) = preview(b"a\nb\xff", 4, Some(&setting(64, &[])));
        assert_eq!(p, "a\\nb\\xff");
    }

    #[test]
    fn listed_fields_are_masked_at_any_depth_even_when_cut() {
        let body = br#"{"user":{"name":"ann","card":"4111 1111"},"n":1,"card" : [1,{"x":"]"}],"pin":1234}"#;
        let fields = vec!["card".to_string(), "pin".to_string()];
        let (m, n) = mask(body, &fields);
        assert_eq!(
            String::from_utf8(m).unwrap(),
            r#"{"user":{"name":"ann","card":"***"},"n":1,"card" : "***","pin":"***"}"#
        );
        assert_eq!(n, 3);
        // Cut in the middle of a secret: masked to the end.
        let (p, note) = preview(br#"{"card":"4111 11"#, 200, Some(&setting(64, &["card"])));
        assert_eq!(p, r#"{"card":"***""#);
        assert_eq!(note, "first 16 of 200 bytes, 1 field(s) redacted");
        // A value that merely equals a field name is not a key.
        let (m, n) = mask(br#"{"a":"card","b":2}"#, &fields);
        assert_eq!(
            (String::from_utf8(m).unwrap().as_str(), n),
            (r#"{"a":"card","b":2}"#, 0)
        );
    }

    #[test]
    fn non_json_is_hidden_when_fields_are_listed() {
        let (p, note) = preview(b"card=4111", 9, Some(&setting(64, &["card"])));
        assert_eq!(p, "");
        assert!(note.contains("not JSON"), "{note}");
    }

    #[test]
    fn requests_are_checked() {
        let bad = |r: TailRequest| TailSpec::new(&r).is_err();
        assert!(bad(TailRequest {
            subject: "a..b".into(),
            ..Default::default()
        }));
        assert!(bad(TailRequest {
            subject: "a".into(),
            sample_rate: 2.0,
            ..Default::default()
        }));
        assert!(bad(TailRequest {
            subject: "a".into(),
            max_per_second: 5000,
            ..Default::default()
        }));
        let ok = TailSpec::new(&TailRequest {
            subject: "orders.>".into(),
            ..Default::default()
        })
        .unwrap();
        assert_eq!((ok.sample_rate, ok.max_per_second), (1.0, 20));
    }
}
