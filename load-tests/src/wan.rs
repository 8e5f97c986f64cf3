//! WAN emulator: a UDP proxy that adds one-way delay, jitter and loss between regions, caps
//! each direction's bandwidth, and cuts the link on command, so federation tests and demos can shape the network between
//! gateways on one machine (QUIC runs over it unchanged).
//!
//! [`Impairment`] is the sans-I/O core: given the current time and a random source it
//! decides when a datagram arrives, or that it never does. [`WanProxy`] is the shell: it
//! relays datagrams between clients and one target, each direction through its own delay
//! queue, and can be reconfigured while running (in process, or over the small HTTP control
//! API served by `nexus-wan`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rand::Rng;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How one direction of a link misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Impairment {
    /// One-way delay added to every datagram.
    pub delay: Duration,
    /// Each datagram's delay varies uniformly by up to this much either way.
    pub jitter: Duration,
    /// Probability (0..=1) that a datagram is dropped.
    pub loss: f64,
    /// Everything is dropped while cut.
    pub cut: bool,
    /// Bandwidth of each direction in kilobits per second (1000 bits); 0 = unlimited. A
    /// datagram leaves once the ones before it in its direction have been sent at this rate
    /// (then the delay applies); one that would wait more than [`MAX_QUEUE`] is dropped, as
    /// by a router's full buffer.
    #[serde(default)]
    pub rate_kbps: u64,
}

/// Most queueing a bandwidth-limited direction holds before it drops (its buffer).
pub const MAX_QUEUE: Duration = Duration::from_millis(100);

/// When datagrams leave a bandwidth-limited direction (sans-I/O).
#[derive(Debug, Clone, Copy, Default)]
pub struct Pacer {
    busy_until: Option<Instant>,
}

impl Pacer {
    /// When a datagram of `len` bytes offered at `now` finishes sending at `rate_kbps`, or
    /// `None` when the queue ahead of it is longer than [`MAX_QUEUE`] (dropped).
    pub fn depart(&mut self, now: Instant, len: usize, rate_kbps: u64) -> Option<Instant> {
        if rate_kbps == 0 {
            return Some(now);
        }
        let start = self.busy_until.filter(|b| *b > now).unwrap_or(now);
        if start - now > MAX_QUEUE {
            return None;
        }
        let done = start + Duration::from_secs_f64(len as f64 * 8.0 / (rate_kbps as f64 * 1000.0));
        self.busy_until = Some(done);
        Some(done)
    }
}

impl Default for Impairment {
    fn default() -> Self {
        Self {
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            loss: 0.0,
            cut: false,
            rate_kbps: 0,
        }
    }
}

impl Impairment {
    /// When a datagram sent at `now` arrives, or `None` if it is lost.
    pub fn schedule(&self, now: Instant, rng: &mut impl Rng) -> Option<Instant> {
        if self.cut || (self.loss > 0.0 && rng.random::<f64>() < self.loss) {
            return None;
        }
        let jitter = self.jitter.as_secs_f64();
        let offset = if jitter > 0.0 {
            rng.random_range(-jitter..=jitter)
        } else {
            0.0
        };
        let delay = (self.delay.as_secs_f64() + offset).max(0.0);
        Some(now + Duration::from_secs_f64(delay))
    }
}

/// Counters of what the proxy did, for tests and the control API.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct WanStats {
    pub forwarded: u64,
    pub dropped: u64,
    /// Bytes forwarded towards the target and back towards the clients.
    pub bytes_to_target: u64,
    pub bytes_to_clients: u64,
}

struct Shared {
    impairment: Mutex<Impairment>,
    stats: Mutex<WanStats>,
    /// Bandwidth pacing per direction: towards the target, towards the clients.
    pacers: Mutex<[Pacer; 2]>,
}

/// A running proxy: clients send to `listen_addr`, datagrams reach `target` and back.
pub struct WanProxy {
    pub listen_addr: SocketAddr,
    pub target: SocketAddr,
    shared: Arc<Shared>,
    stop: CancellationToken,
}

struct Delayed {
    at: Instant,
    data: Vec<u8>,
    to: SocketAddr,
    via: Arc<UdpSocket>,
}

impl WanProxy {
    pub async fn start(
        listen: SocketAddr,
        target: SocketAddr,
        impairment: Impairment,
    ) -> std::io::Result<Self> {
        let front = Arc::new(UdpSocket::bind(listen).await?);
        enlarge_buffers(&front);
        let listen_addr = front.local_addr()?;
        let shared = Arc::new(Shared {
            impairment: Mutex::new(impairment),
            stats: Mutex::new(WanStats::default()),
            pacers: Mutex::new([Pacer::default(); 2]),
        });
        let stop = CancellationToken::new();
        let (tx, rx) = mpsc::unbounded_channel::<Delayed>();
        tokio::spawn(deliver(rx, stop.clone()));
        tokio::spawn(relay(front, target, shared.clone(), tx, stop.clone()));
        Ok(Self {
            listen_addr,
            target,
            shared,
            stop,
        })
    }

    pub fn set(&self, impairment: Impairment) {
        *self.shared.impairment.lock() = impairment;
    }

    pub fn impairment(&self) -> Impairment {
        *self.shared.impairment.lock()
    }

    pub fn cut(&self) {
        self.shared.impairment.lock().cut = true;
    }

    pub fn heal(&self) {
        self.shared.impairment.lock().cut = false;
    }

    pub fn stats(&self) -> WanStats {
        *self.shared.stats.lock()
    }

    pub fn stop(&self) {
        self.stop.cancel();
    }
}

impl Drop for WanProxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Socket buffers asked for the proxy's sockets (capped by the kernel at
/// `net.core.rmem_max` / `wmem_max`). The proxy must not add loss of its own: with the usual
/// 208 KiB default, a proxy that is off the CPU for ~15 ms while a link sends 13 MB/s
/// overflows its socket, and QUIC takes the dropped datagrams for congestion.
const SOCKET_BUFFER: usize = 8 << 20;

/// Enlarges a socket's receive and send buffers to [`SOCKET_BUFFER`] (best effort: a
/// refusal leaves the default size, which only matters under heavy load).
fn enlarge_buffers(socket: &UdpSocket) {
    let socket = socket2::SockRef::from(socket);
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
}

/// Schedules a datagram through the bandwidth limit and the impairment (or counts it
/// dropped). `direction`: 0 towards the target, 1 towards the clients.
fn submit(
    shared: &Shared,
    tx: &mpsc::UnboundedSender<Delayed>,
    data: &[u8],
    to: SocketAddr,
    via: &Arc<UdpSocket>,
    direction: usize,
) {
    let impairment = *shared.impairment.lock();
    let now = Instant::now();
    let at = shared.pacers.lock()[direction]
        .depart(now, data.len(), impairment.rate_kbps)
        .and_then(|left| impairment.schedule(left, &mut rand::rng()));
    let mut stats = shared.stats.lock();
    match at {
        Some(at) => {
            stats.forwarded += 1;
            if direction == 0 {
                stats.bytes_to_target += data.len() as u64;
            } else {
                stats.bytes_to_clients += data.len() as u64;
            }
            let _ = tx.send(Delayed {
                at,
                data: data.to_vec(),
                to,
                via: via.clone(),
            });
        }
        None => stats.dropped += 1,
    }
}

/// Client -> target: one upstream socket per client, so replies find their way back.
async fn relay(
    front: Arc<UdpSocket>,
    target: SocketAddr,
    shared: Arc<Shared>,
    tx: mpsc::UnboundedSender<Delayed>,
    stop: CancellationToken,
) {
    let mut upstreams: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
    let mut buf = vec![0u8; 65_536];
    loop {
        let (n, client) = tokio::select! {
            _ = stop.cancelled() => return,
            r = front.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(_) => continue,
            },
        };
        let upstream = match upstreams.get(&client) {
            Some(u) => u.clone(),
            None => {
                let bind: SocketAddr = if target.is_ipv4() {
                    "127.0.0.1:0".parse().expect("static address")
                } else {
                    "[::1]:0".parse().expect("static address")
                };
                let Ok(u) = UdpSocket::bind(bind).await else {
                    continue;
                };
                enlarge_buffers(&u);
                let u = Arc::new(u);
                upstreams.insert(client, u.clone());
                // Target -> this client, through the front socket.
                let (u2, front2, shared2, tx2, stop2) = (
                    u.clone(),
                    front.clone(),
                    shared.clone(),
                    tx.clone(),
                    stop.clone(),
                );
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 65_536];
                    loop {
                        let n = tokio::select! {
                            _ = stop2.cancelled() => return,
                            r = u2.recv(&mut buf) => match r {
                                Ok(n) => n,
                                Err(_) => continue,
                            },
                        };
                        submit(&shared2, &tx2, &buf[..n], client, &front2, 1);
                    }
                });
                u
            }
        };
        submit(&shared, &tx, &buf[..n], target, &upstream, 0);
    }
}

/// Sends each datagram at its scheduled time (earliest first).
async fn deliver(mut rx: mpsc::UnboundedReceiver<Delayed>, stop: CancellationToken) {
    let mut queue: std::collections::BinaryHeap<std::cmp::Reverse<(Instant, u64)>> =
        std::collections::BinaryHeap::new();
    let mut items: HashMap<u64, Delayed> = HashMap::new();
    let mut seq = 0u64;
    loop {
        let next = queue.peek().map(|r| r.0.0);
        tokio::select! {
            _ = stop.cancelled() => return,
            d = rx.recv() => match d {
                Some(d) => {
                    seq += 1;
                    queue.push(std::cmp::Reverse((d.at, seq)));
                    items.insert(seq, d);
                }
                None => return,
            },
            _ = async {
                match next {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending::<()>().await,
                }
            } => {
                let now = Instant::now();
                while let Some(std::cmp::Reverse((at, id))) = queue.peek().copied() {
                    if at > now {
                        break;
                    }
                    queue.pop();
                    if let Some(d) = items.remove(&id) {
                        let _ = d.via.send_to(&d.data, d.to).await;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn the_pacer_caps_bandwidth_and_drops_past_its_buffer() {
        let now = Instant::now();
        let mut p = Pacer::default();
        assert_eq!(p.depart(now, 1000, 0), Some(now), "unlimited");
        // 8000 kbit/s = 1 MB/s: 1000 bytes take 1 ms, back to back.
        assert_eq!(
            p.depart(now, 1000, 8000),
            Some(now + Duration::from_millis(1))
        );
        assert_eq!(
            p.depart(now, 1000, 8000),
            Some(now + Duration::from_millis(2))
        );
        // 100 ms of backlog fill the buffer; the next is dropped.
        for _ in 0..98 {
            p.depart(now, 1000, 8000).unwrap();
        }
        assert!(p.depart(now, 1000, 8000).is_some());
        assert_eq!(p.depart(now, 1000, 8000), None);
        // Once sent, the link is idle again.
        let later = now + Duration::from_secs(1);
        assert_eq!(
            p.depart(later, 1000, 8000),
            Some(later + Duration::from_millis(1))
        );
    }

    #[test]
    fn impairment_schedules_delay_jitter_loss_and_cuts() {
        let now = Instant::now();
        let mut rng = StdRng::seed_from_u64(1);
        let clean = Impairment::default();
        assert_eq!(clean.schedule(now, &mut rng), Some(now));
        let slow = Impairment {
            delay: Duration::from_millis(40),
            jitter: Duration::from_millis(5),
            ..Default::default()
        };
        for _ in 0..1000 {
            let at = slow.schedule(now, &mut rng).unwrap();
            let d = at - now;
            assert!(
                d >= Duration::from_millis(35) && d <= Duration::from_millis(45),
                "{d:?}"
            );
        }
        let lossy = Impairment {
            loss: 0.25,
            ..Default::default()
        };
        let lost = (0..10_000)
            .filter(|_| lossy.schedule(now, &mut rng).is_none())
            .count();
        assert!((2_200..2_800).contains(&lost), "{lost}");
        let cut = Impairment {
            cut: true,
            ..Default::default()
        };
        assert_eq!(cut.schedule(now, &mut rng), None);
    }
}
