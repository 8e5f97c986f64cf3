//! A TCP relay on a free loopback port in front of a gateway, for the cases that lose a
//! gateway's answers. It forwards both ways until told to [`hold`](Relay::hold): from then
//! on, what the gateway sends on the connections open at that moment is swallowed (an answer
//! lost in the network) while the client's bytes still reach the gateway; [`cut`](Relay::cut)
//! then breaks those connections. New connections pass, unless [`block`](Relay::block)ed (then
//! they are closed at once, as by a gateway that is not there).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

struct Conn {
    held: Arc<AtomicBool>,
    cut: watch::Sender<bool>,
}

pub struct Relay {
    pub addr: SocketAddr,
    conns: Arc<Mutex<Vec<Conn>>>,
    blocked: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    pub async fn start(upstream: String) -> std::io::Result<Relay> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let conns: Arc<Mutex<Vec<Conn>>> = Arc::default();
        let list = conns.clone();
        let blocked = Arc::new(AtomicBool::new(false));
        let refuse = blocked.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if refuse.load(Ordering::Acquire) {
                    continue; // dropping `client` closes it
                }
                let Ok(gateway) = TcpStream::connect(&upstream).await else {
                    continue; // dropping `client` closes it: the gateway is down
                };
                let held = Arc::new(AtomicBool::new(false));
                let (cut, cut_rx) = watch::channel(false);
                list.lock().retain(|c: &Conn| !c.cut.is_closed());
                list.lock().push(Conn {
                    held: held.clone(),
                    cut,
                });
                tokio::spawn(relay(client, gateway, held, cut_rx));
            }
        });
        Ok(Relay {
            addr,
            conns,
            blocked,
            task,
        })
    }

    pub fn url(&self) -> String {
        format!("{}://{}", crate::scheme(false), self.addr)
    }

    pub fn block(&self, on: bool) {
        self.blocked.store(on, Ordering::Release);
    }

    pub fn hold(&self) {
        for c in self.conns.lock().iter() {
            c.held.store(true, Ordering::Release);
        }
    }

    pub fn cut(&self) {
        for c in self.conns.lock().iter() {
            if c.held.load(Ordering::Acquire) {
                c.cut.send_replace(true);
            }
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
        for c in self.conns.lock().iter() {
            c.cut.send_replace(true);
        }
    }
}

async fn relay(
    client: TcpStream,
    gateway: TcpStream,
    held: Arc<AtomicBool>,
    mut cut: watch::Receiver<bool>,
) {
    let _ = client.set_nodelay(true);
    let _ = gateway.set_nodelay(true);
    let (mut cr, mut cw) = client.into_split();
    let (mut gr, mut gw) = gateway.into_split();
    let up = async {
        let mut buf = vec![0u8; 65536];
        while let Ok(n) = cr.read(&mut buf).await {
            if n == 0 || gw.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    };
    let down = async {
        let mut buf = vec![0u8; 65536];
        while let Ok(n) = gr.read(&mut buf).await {
            if n == 0 {
                break;
            }
            if held.load(Ordering::Acquire) {
                continue;
            }
            if cw.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    };
    // Whichever side ends (or a cut) ends both: dropping the halves closes the sockets.
    tokio::select! {
        _ = up => {}
        _ = down => {}
        _ = cut.wait_for(|c| *c) => {}
    }
}
