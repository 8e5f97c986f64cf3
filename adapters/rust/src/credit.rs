//! Credit-based flow control accounting for streams.
//!
//! Each side of a stream may send a `StreamData` frame only while it holds credit granted by
//! its peer. [`SendCredit`] tracks what we may send (and lets a sender wait for more);
//! [`RecvWindow`] tracks what we granted and decides when to grant more: after the application
//! consumed half the window, the consumed amount is granted again, so at most `window` frames
//! are ever buffered locally.

use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::error::Fail;

/// Receive-side accounting: how much the peer may still send, and when to re-grant.
#[derive(Debug, Clone)]
pub(crate) struct RecvWindow {
    window: u32,
    /// Credits the peer still holds (granted, not yet used).
    outstanding: u32,
    /// Frames the application consumed since the last grant.
    consumed: u32,
}

impl RecvWindow {
    /// A window of `window` frames; the initial grant of `window` is assumed sent.
    pub(crate) fn new(window: u32) -> Self {
        let window = window.max(1);
        RecvWindow {
            window,
            outstanding: window,
            consumed: 0,
        }
    }

    #[cfg(test)]
    pub(crate) fn window(&self) -> u32 {
        self.window
    }

    /// A frame arrived. Returns false if the peer exceeded its credit.
    pub(crate) fn on_receive(&mut self) -> bool {
        if self.outstanding == 0 {
            return false;
        }
        self.outstanding -= 1;
        true
    }

    /// The application consumed a frame. Returns the credit to grant now, if any.
    pub(crate) fn on_consume(&mut self) -> Option<u32> {
        self.consumed += 1;
        let threshold = (self.window / 2).max(1);
        if self.consumed >= threshold {
            let grant = self.consumed;
            self.consumed = 0;
            self.outstanding += grant;
            Some(grant)
        } else {
            None
        }
    }
}

#[derive(Debug, Default)]
struct SendState {
    available: u64,
    closed: Option<Fail>,
}

/// Send-side credit: granted by the peer, consumed one per `StreamData`.
#[derive(Debug, Default)]
pub(crate) struct SendCredit {
    state: Mutex<SendState>,
    notify: Notify,
}

impl SendCredit {
    pub(crate) fn new(initial: u32) -> Self {
        SendCredit {
            state: Mutex::new(SendState {
                available: initial.into(),
                closed: None,
            }),
            notify: Notify::new(),
        }
    }

    /// Adds credit granted by the peer.
    pub(crate) fn grant(&self, n: u32) {
        self.state.lock().available += u64::from(n);
        self.notify.notify_waiters();
    }

    /// No more sending: wakes waiters, who get `why`. The first reason wins.
    pub(crate) fn close(&self, why: Fail) {
        let mut s = self.state.lock();
        if s.closed.is_none() {
            s.closed = Some(why);
        }
        drop(s);
        self.notify.notify_waiters();
    }

    /// Takes one credit without waiting.
    pub(crate) fn try_take(&self) -> Option<Result<(), Fail>> {
        let mut s = self.state.lock();
        if let Some(f) = &s.closed {
            return Some(Err(f.clone()));
        }
        if s.available > 0 {
            s.available -= 1;
            return Some(Ok(()));
        }
        None
    }

    /// Waits for and takes one credit.
    pub(crate) async fn take(&self) -> Result<(), Fail> {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(r) = self.try_take() {
                return r;
            }
            notified.await;
        }
    }

    /// Credit currently available.
    pub(crate) fn available(&self) -> u64 {
        self.state.lock().available
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn recv_window_regrants_half() {
        let mut w = RecvWindow::new(8);
        for _ in 0..8 {
            assert!(w.on_receive());
        }
        assert!(!w.on_receive(), "peer exceeded credit");
        assert_eq!(w.on_consume(), None);
        assert_eq!(w.on_consume(), None);
        assert_eq!(w.on_consume(), None);
        assert_eq!(w.on_consume(), Some(4));
        // The peer may send exactly 4 more.
        for _ in 0..4 {
            assert!(w.on_receive());
        }
        assert!(!w.on_receive());
    }

    #[test]
    fn recv_window_never_exceeds_window() {
        let mut w = RecvWindow::new(5);
        let mut buffered = 0u32;
        let mut granted_total = 5u32;
        let mut received_total = 0u32;
        for _ in 0..1000 {
            if w.on_receive() {
                buffered += 1;
                received_total += 1;
            }
            assert!(buffered <= w.window());
            assert!(granted_total - received_total <= w.window());
            if buffered > 0 {
                buffered -= 1;
                if let Some(g) = w.on_consume() {
                    granted_total += g;
                }
            }
        }
        assert!(received_total > 900);
        assert_eq!(RecvWindow::new(1).on_consume(), Some(1));
    }

    #[tokio::test]
    async fn send_credit_waits_for_grant() {
        let c = Arc::new(SendCredit::new(1));
        c.take().await.unwrap();
        assert!(c.try_take().is_none());
        let c2 = c.clone();
        let t = tokio::spawn(async move { c2.take().await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!t.is_finished());
        c.grant(2);
        t.await.unwrap().unwrap();
        assert_eq!(c.available(), 1);
    }

    #[tokio::test]
    async fn send_credit_close_wakes() {
        let c = Arc::new(SendCredit::new(0));
        let c2 = c.clone();
        let t = tokio::spawn(async move { c2.take().await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        c.close(Fail::Disconnected);
        assert!(matches!(t.await.unwrap(), Err(Fail::Disconnected)));
        c.grant(5);
        assert!(matches!(c.try_take(), Some(Err(Fail::Disconnected))));
    }
}
