//! A subscription's inbox: the bounded queue between the connection's reader, which routes
//! deliveries into it, and the [`Subscription`](crate::Subscription) the application reads.
//!
//! The reader pushes under a `parking_lot` mutex and wakes the subscription once per batch
//! it read from the gateway, not once per message ([`Wakes`]). The subscription takes
//! everything queued at once, into a buffer of its own, and reads from that without locking
//! until it is empty: under load, one lock and one wake per batch on each side. It replaced
//! a bounded `mpsc` channel, whose semaphore (a mutex on every release), list and wake per
//! message were ~5 % of a subscribing client's CPU (docs/benchmarks.md, round 7).
//!
//! **Capacity** (`ClientBuilder::subscription_capacity`) counts messages queued and those
//! taken but not yet read; the reader waits while it is reached ([`Inbox::push`] hands the
//! message back), which stops it reading from the gateway: backpressure, as before. Room
//! returns when the subscription has read what it took and comes back for more.

use std::collections::VecDeque;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use parking_lot::Mutex;

use crate::message::Message;

/// The reader's end, held by the subscription's entry; dropping it ends the subscription
/// (once what is queued is read).
pub(crate) struct Inbox {
    shared: Arc<Shared>,
    /// The entry's handle, whose drop ends the subscription; not a [`waiter`](Self::waiter).
    owner: bool,
}

/// The subscription's end.
pub(crate) struct InboxReceiver {
    shared: Arc<Shared>,
    /// Taken from the queue, not read yet.
    taken: VecDeque<Message>,
}

struct Shared {
    state: Mutex<State>,
    capacity: usize,
}

struct State {
    queue: VecDeque<Message>,
    /// Messages the receiver took and has not read (they count against the capacity until
    /// it comes back for more).
    taken: usize,
    receiver: Option<Waker>,
    /// The reader, waiting for room.
    sender: Option<Waker>,
    /// The entry was removed (unsubscribed, or the client closed).
    sender_gone: bool,
    receiver_gone: bool,
}

/// A push into a full inbox: the message, handed back.
pub(crate) struct Full(pub(crate) Message);

/// Wakes to do once the reader is done with a batch (or before it waits).
#[derive(Default)]
pub(crate) struct Wakes(Vec<Waker>);

impl Wakes {
    /// Wakes every subscription that was given messages.
    pub(crate) fn wake(&mut self) {
        for w in self.0.drain(..) {
            w.wake();
        }
    }
}

/// A new inbox of `capacity` messages.
pub(crate) fn inbox(capacity: usize) -> (Inbox, InboxReceiver) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            queue: VecDeque::new(),
            taken: 0,
            receiver: None,
            sender: None,
            sender_gone: false,
            receiver_gone: false,
        }),
        capacity: capacity.max(1),
    });
    (
        Inbox {
            shared: shared.clone(),
            owner: true,
        },
        InboxReceiver {
            shared,
            taken: VecDeque::new(),
        },
    )
}

impl Inbox {
    /// Queues `msg`; its wake (if the subscription waits) goes into `wakes`. Hands the
    /// message back when the inbox is full. A message for a subscription whose receiver is
    /// gone is dropped.
    // The message is handed back by value: boxing it would allocate on every full push.
    #[allow(clippy::result_large_err)]
    pub(crate) fn push(&self, msg: Message, wakes: &mut Wakes) -> Result<(), Full> {
        let mut st = self.shared.state.lock();
        if st.receiver_gone {
            return Ok(());
        }
        if st.queue.len() + st.taken >= self.shared.capacity {
            return Err(Full(msg));
        }
        st.queue.push_back(msg);
        if let Some(w) = st.receiver.take() {
            wakes.0.push(w);
        }
        Ok(())
    }

    /// Waits for room for `msg` and queues it (dropped if the subscription ended meanwhile).
    pub(crate) async fn push_waiting(&self, msg: Message) {
        let mut msg = Some(msg);
        std::future::poll_fn(|cx| {
            let mut st = self.shared.state.lock();
            if st.receiver_gone || st.sender_gone {
                return Poll::Ready(());
            }
            if st.queue.len() + st.taken >= self.shared.capacity {
                st.sender = Some(cx.waker().clone());
                return Poll::Pending;
            }
            st.queue.extend(msg.take());
            let w = st.receiver.take();
            drop(st);
            if let Some(w) = w {
                w.wake();
            }
            Poll::Ready(())
        })
        .await
    }

    /// Another handle on the same inbox, for a delivery waiting for room; dropping it does
    /// not end the subscription.
    pub(crate) fn waiter(&self) -> Inbox {
        Inbox {
            shared: self.shared.clone(),
            owner: false,
        }
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        if !self.owner {
            return;
        }
        let w = {
            let mut st = self.shared.state.lock();
            st.sender_gone = true;
            st.receiver.take()
        };
        if let Some(w) = w {
            w.wake();
        }
    }
}

impl InboxReceiver {
    /// The next message: at once from what was taken, else everything queued is taken.
    /// Spends the task's cooperative budget as a channel's receive does, so that a loop
    /// reading a busy subscription yields to its thread's other tasks now and then.
    pub(crate) fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        let coop = std::task::ready!(tokio::task::coop::poll_proceed(cx));
        if let Some(m) = self.taken.pop_front() {
            coop.made_progress();
            return Poll::Ready(Some(m));
        }
        match self.refill(Some(cx)) {
            true => {
                coop.made_progress();
                Poll::Ready(self.taken.pop_front())
            }
            false => Poll::Pending,
        }
    }

    /// The next message if one is queued.
    pub(crate) fn try_recv(&mut self) -> Option<Message> {
        if self.taken.is_empty() {
            self.refill(None);
        }
        self.taken.pop_front()
    }

    /// Messages queued or taken, not read yet.
    pub(crate) fn len(&self) -> usize {
        self.taken.len() + self.shared.state.lock().queue.len()
    }

    /// Takes what is queued (`taken` is empty: what was taken before is read). True when
    /// there is something to read or the inbox ended (then `taken` stays empty); otherwise
    /// registers `cx` to be woken.
    fn refill(&mut self, cx: Option<&mut Context<'_>>) -> bool {
        let mut st = self.shared.state.lock();
        std::mem::swap(&mut st.queue, &mut self.taken);
        st.taken = self.taken.len();
        // What was taken before is read: there is room again.
        let sender = st.sender.take();
        let ready = !self.taken.is_empty() || st.sender_gone;
        if !ready && let Some(cx) = cx {
            match &st.receiver {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => st.receiver = Some(cx.waker().clone()),
            }
        }
        drop(st);
        if let Some(w) = sender {
            w.wake();
        }
        ready
    }
}

impl Drop for InboxReceiver {
    fn drop(&mut self) {
        let (queued, sender) = {
            let mut st = self.shared.state.lock();
            st.receiver_gone = true;
            st.taken = 0;
            (std::mem::take(&mut st.queue), st.sender.take())
        };
        drop(queued);
        if let Some(w) = sender {
            w.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;

    fn msg(n: u8) -> Message {
        Message::from_parts("a.b", Vec::new(), bytes::Bytes::from(vec![n]))
    }

    fn n(m: Option<Message>) -> Option<u8> {
        m.map(|m| m.payload[0])
    }

    /// Lets spawned tasks (on the test's single thread) run until they wait.
    async fn settle() {
        for _ in 0..16 {
            tokio::task::yield_now().await;
        }
    }

    #[test]
    fn messages_come_out_in_order_across_takes() {
        let (tx, mut rx) = inbox(8);
        let mut wakes = Wakes::default();
        for i in 0..3 {
            assert!(tx.push(msg(i), &mut wakes).is_ok());
        }
        assert_eq!(n(rx.try_recv()), Some(0));
        tx.push(msg(3), &mut wakes).ok().unwrap();
        assert_eq!(rx.len(), 3);
        let got: Vec<_> = std::iter::from_fn(|| n(rx.try_recv())).collect();
        assert_eq!(got, [1, 2, 3]);
    }

    #[test]
    fn capacity_counts_what_was_taken_and_not_read() {
        let (tx, mut rx) = inbox(2);
        let mut wakes = Wakes::default();
        tx.push(msg(0), &mut wakes).ok().unwrap();
        tx.push(msg(1), &mut wakes).ok().unwrap();
        assert!(tx.push(msg(2), &mut wakes).is_err(), "full");
        // Taken, one read: still full.
        assert_eq!(n(rx.try_recv()), Some(0));
        assert!(
            tx.push(msg(2), &mut wakes).is_err(),
            "one taken is still unread"
        );
        assert_eq!(n(rx.try_recv()), Some(1));
        // Coming back for more frees the room.
        assert_eq!(n(rx.try_recv()), None);
        tx.push(msg(2), &mut wakes).ok().unwrap();
        tx.push(msg(3), &mut wakes).ok().unwrap();
        assert!(tx.push(msg(4), &mut wakes).is_err());
    }

    #[tokio::test]
    async fn one_wake_per_batch() {
        let (tx, mut rx) = inbox(8);
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(m) = poll_fn(|cx| rx.poll_recv(cx)).await {
                got.push(m.payload[0]);
            }
            got
        });
        settle().await;
        let mut wakes = Wakes::default();
        for i in 0..3 {
            tx.push(msg(i), &mut wakes).ok().unwrap();
        }
        assert_eq!(wakes.0.len(), 1, "the waiting receiver is woken once");
        wakes.wake();
        settle().await;
        tx.push(msg(3), &mut wakes).ok().unwrap();
        wakes.wake();
        drop(tx);
        assert_eq!(reader.await.unwrap(), [0, 1, 2, 3]);
    }

    #[tokio::test]
    async fn a_reading_loop_yields_to_other_tasks() {
        // One thread: the other task runs only if reading yields now and then.
        let (tx, mut rx) = inbox(10_000);
        let mut wakes = Wakes::default();
        for _ in 0..5_000 {
            tx.push(msg(0), &mut wakes).ok().unwrap();
        }
        let ran = Arc::new(std::sync::atomic::AtomicBool::new(false));
        tokio::spawn({
            let ran = ran.clone();
            async move { ran.store(true, std::sync::atomic::Ordering::Relaxed) }
        });
        let mut read_before_it_ran = None;
        for n in 0..5_000 {
            poll_fn(|cx| rx.poll_recv(cx)).await.unwrap();
            if read_before_it_ran.is_none() && ran.load(std::sync::atomic::Ordering::Relaxed) {
                read_before_it_ran = Some(n);
            }
        }
        let n = read_before_it_ran.expect("the other task never ran while reading 5 000");
        assert!(n < 1_000, "it ran only after {n} messages");
    }

    /// An inbox of one holding message 0, and message 1 waiting for room in a task.
    async fn full_with_one_waiting() -> (Inbox, InboxReceiver, tokio::task::JoinHandle<()>) {
        let (tx, rx) = inbox(1);
        let mut wakes = Wakes::default();
        tx.push(msg(0), &mut wakes).ok().unwrap();
        let Err(Full(m)) = tx.push(msg(1), &mut wakes) else {
            panic!("full")
        };
        let waiter = tx.waiter();
        let pushing = tokio::spawn(async move { waiter.push_waiting(m).await });
        settle().await;
        (tx, rx, pushing)
    }

    #[tokio::test]
    async fn a_full_inbox_makes_the_reader_wait_until_the_subscription_reads() {
        let (tx, mut rx, pushing) = full_with_one_waiting().await;
        assert!(!pushing.is_finished());
        assert_eq!(n(rx.try_recv()), Some(0));
        assert_eq!(n(rx.try_recv()), None, "the second was not queued yet");
        pushing.await.unwrap();
        assert_eq!(n(rx.try_recv()), Some(1));
        // The waiter's handle did not end the subscription; the entry's does.
        assert!(
            poll_fn(|cx| Poll::Ready(rx.poll_recv(cx)))
                .await
                .is_pending()
        );
        drop(tx);
        assert_eq!(n(poll_fn(|cx| rx.poll_recv(cx)).await), None);
    }

    #[tokio::test]
    async fn a_gone_subscription_drops_deliveries_and_frees_a_waiting_reader() {
        let (tx, rx, pushing) = full_with_one_waiting().await;
        let mut wakes = Wakes::default();
        drop(rx);
        pushing.await.unwrap();
        assert!(tx.push(msg(2), &mut wakes).is_ok(), "dropped, not refused");
    }
}
