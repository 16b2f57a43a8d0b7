//! A channel's command queue: what the connection (and the topic's hub) sends one channel
//! task. Bounded, one receiver, never waits to send.
//!
//! Every joined channel has one, so it is kept small: about 100 bytes, and 8 per queued
//! command. tokio's `mpsc` channel it replaces took about 880 bytes per channel (its shared
//! state is padded to cache lines, and its first block holds 32 slots), the largest single
//! cost of a joined channel in the churn soak's heap profile (RELIABILITY.md).
//!
//! The semantics are those of tokio's bounded `mpsc` for what the crate uses: `try_send`
//! fails with the command when the queue is full or the receiver closed; `recv` returns
//! `None` once every sender is gone and the queue is empty, and spends the task's
//! cooperative budget; a [`WeakSender`] does not keep the queue open, and cannot be upgraded
//! once every sender is gone.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Poll, Waker};

/// Why [`Sender::try_send`] failed; the value comes back.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum TrySendError<T> {
    /// The queue holds `capacity` commands.
    Full(T),
    /// The receiver closed the queue or is gone.
    Closed(T),
}

#[derive(Debug)]
struct Shared<T> {
    state: Mutex<State<T>>,
    capacity: usize,
}

#[derive(Debug)]
struct State<T> {
    items: VecDeque<T>,
    /// Live [`Sender`]s (not counting weak ones).
    senders: usize,
    /// Set by [`Receiver::close`] and when the receiver is dropped.
    closed: bool,
    /// The receiver's task, waiting for a command or for the last sender to go.
    waker: Option<Waker>,
}

impl<T> Shared<T> {
    fn state(&self) -> MutexGuard<'_, State<T>> {
        // Nothing panics while holding it; a poisoned lock still holds a consistent queue.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A queue of at most `capacity` commands.
pub(crate) fn queue<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            items: VecDeque::new(),
            senders: 1,
            closed: false,
            waker: None,
        }),
        capacity,
    });
    (Sender(shared.clone()), Receiver(shared))
}

/// Sends commands; the queue stays open while one lives.
#[derive(Debug)]
pub(crate) struct Sender<T>(Arc<Shared<T>>);

impl<T> Sender<T> {
    /// Queues `value` unless the queue is full or closed.
    ///
    /// # Errors
    ///
    /// [`TrySendError::Full`] or [`TrySendError::Closed`], with `value`.
    pub(crate) fn try_send(&self, value: T) -> Result<(), TrySendError<T>> {
        let waker = {
            let mut state = self.0.state();
            if state.closed {
                return Err(TrySendError::Closed(value));
            }
            if state.items.len() >= self.0.capacity {
                return Err(TrySendError::Full(value));
            }
            state.items.push_back(value);
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }

    /// Whether the receiver closed the queue or is gone.
    pub(crate) fn is_closed(&self) -> bool {
        self.0.state().closed
    }

    /// How many more commands fit now.
    pub(crate) fn capacity(&self) -> usize {
        self.0.capacity.saturating_sub(self.0.state().items.len())
    }

    /// A sender that does not keep the queue open.
    pub(crate) fn downgrade(&self) -> WeakSender<T> {
        WeakSender(Arc::downgrade(&self.0))
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let waker = {
            let mut state = self.0.state();
            state.senders -= 1;
            if state.senders > 0 {
                return;
            }
            state.waker.take()
        };
        // The last one: a waiting receiver sees the end.
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// A sender that does not keep the queue open: [`upgrade`](Self::upgrade) it to send.
#[derive(Debug)]
pub(crate) struct WeakSender<T>(Weak<Shared<T>>);

impl<T> WeakSender<T> {
    /// A sender while a [`Sender`] of the queue still lives.
    pub(crate) fn upgrade(&self) -> Option<Sender<T>> {
        let shared = self.0.upgrade()?;
        {
            let mut state = shared.state();
            if state.senders == 0 {
                return None;
            }
            state.senders += 1;
        }
        Some(Sender(shared))
    }
}

impl<T> Clone for WeakSender<T> {
    fn clone(&self) -> Self {
        WeakSender(self.0.clone())
    }
}

impl<T> Default for WeakSender<T> {
    /// A sender of no queue: it never upgrades.
    fn default() -> Self {
        WeakSender(Weak::new())
    }
}

/// Receives the commands, in order.
#[derive(Debug)]
pub(crate) struct Receiver<T>(Arc<Shared<T>>);

impl<T> Receiver<T> {
    /// The next command; `None` once every sender is gone (or the queue is closed) and the
    /// queue is empty.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: a command is taken off the queue only when it is returned.
    pub(crate) async fn recv(&mut self) -> Option<T> {
        poll_fn(|cx| {
            // tokio's cooperative budget, as its own channels keep it: a task fed commands
            // as fast as it takes them still yields to the other tasks of its thread.
            let coop = std::task::ready!(tokio::task::coop::poll_proceed(cx));
            let mut state = self.0.state();
            if let Some(value) = state.items.pop_front() {
                coop.made_progress();
                return Poll::Ready(Some(value));
            }
            if state.senders == 0 || state.closed {
                return Poll::Ready(None);
            }
            match &mut state.waker {
                Some(waker) if waker.will_wake(cx.waker()) => {}
                slot => *slot = Some(cx.waker().clone()),
            }
            Poll::Pending
        })
        .await
    }

    /// The next command, if one is queued.
    pub(crate) fn try_recv(&mut self) -> Option<T> {
        self.0.state().items.pop_front()
    }

    /// Refuses any further command; those queued can still be received.
    pub(crate) fn close(&mut self) {
        self.0.state().closed = true;
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let items = {
            let mut state = self.0.state();
            state.closed = true;
            state.waker = None;
            std::mem::take(&mut state.items)
        };
        // Dropped outside the lock.
        drop(items);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::future::Future as _;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Context, Wake};

    /// Counts its wake-ups.
    #[derive(Default)]
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn poll_recv<T>(rx: &mut Receiver<T>, waker: &Waker) -> Poll<Option<T>> {
        let mut cx = Context::from_waker(waker);
        let fut = std::pin::pin!(rx.recv());
        fut.poll(&mut cx)
    }

    #[test]
    fn commands_arrive_in_order_up_to_the_capacity() {
        let (tx, mut rx) = queue(3);
        assert_eq!(tx.capacity(), 3);
        for n in 0..3 {
            tx.try_send(n).unwrap();
        }
        assert_eq!(tx.capacity(), 0);
        assert_eq!(tx.try_send(9), Err(TrySendError::Full(9)));
        assert_eq!(rx.try_recv(), Some(0));
        assert_eq!(tx.capacity(), 1);
        tx.try_send(3).unwrap();
        let got: Vec<_> = std::iter::from_fn(|| rx.try_recv()).collect();
        assert_eq!(got, [1, 2, 3]);
        assert_eq!(rx.try_recv(), None);
    }

    #[test]
    fn a_waiting_receiver_is_woken_by_a_send_and_by_the_last_sender_going() {
        let (tx, mut rx) = queue::<u32>(2);
        let count = Arc::new(Count::default());
        let waker = Waker::from(count.clone());
        assert_eq!(poll_recv(&mut rx, &waker), Poll::Pending);
        tx.try_send(7).unwrap();
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert_eq!(poll_recv(&mut rx, &waker), Poll::Ready(Some(7)));

        let weak = tx.downgrade();
        let second = weak.upgrade().expect("a sender lives");
        assert_eq!(poll_recv(&mut rx, &waker), Poll::Pending);
        drop(tx);
        assert_eq!(count.0.load(Ordering::SeqCst), 1, "a sender is left");
        second.try_send(8).unwrap();
        drop(second);
        assert_eq!(count.0.load(Ordering::SeqCst), 2);
        // What was queued before the last sender went is still received, then the end.
        assert_eq!(poll_recv(&mut rx, &waker), Poll::Ready(Some(8)));
        assert_eq!(poll_recv(&mut rx, &waker), Poll::Ready(None));
        assert!(weak.upgrade().is_none(), "no sender to upgrade to");
    }

    #[test]
    fn a_weak_sender_does_not_keep_the_queue_open() {
        let (tx, mut rx) = queue::<u32>(2);
        let weak = tx.downgrade();
        drop(tx);
        assert!(weak.upgrade().is_none());
        let waker = Waker::from(Arc::new(Count::default()));
        assert_eq!(poll_recv(&mut rx, &waker), Poll::Ready(None));
        assert!(WeakSender::<u32>::default().upgrade().is_none());
    }

    #[test]
    fn a_closed_queue_refuses_sends_and_keeps_what_it_holds() {
        let (tx, mut rx) = queue(4);
        tx.try_send(1).unwrap();
        assert!(!tx.is_closed());
        rx.close();
        assert!(tx.is_closed());
        assert_eq!(tx.try_send(2), Err(TrySendError::Closed(2)));
        assert_eq!(rx.try_recv(), Some(1));
        let waker = Waker::from(Arc::new(Count::default()));
        assert_eq!(poll_recv(&mut rx, &waker), Poll::Ready(None));
    }

    #[test]
    fn dropping_the_receiver_closes_the_queue_and_drops_what_it_held() {
        let (tx, rx) = queue(4);
        let held = Arc::new(());
        tx.try_send(held.clone()).unwrap();
        drop(rx);
        assert!(tx.is_closed());
        assert_eq!(
            Arc::strong_count(&held),
            1,
            "the queued command was dropped"
        );
        assert!(matches!(tx.try_send(held), Err(TrySendError::Closed(_))));
    }

    #[tokio::test]
    async fn a_receiving_task_gets_what_another_sends() {
        let (tx, mut rx) = queue(16);
        let task = tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(n) = rx.recv().await {
                got.push(n);
            }
            got
        });
        for n in 0..100u32 {
            loop {
                match tx.try_send(n) {
                    Ok(()) => break,
                    Err(TrySendError::Full(_)) => tokio::task::yield_now().await,
                    Err(TrySendError::Closed(_)) => panic!("closed"),
                }
            }
        }
        drop(tx);
        assert_eq!(task.await.unwrap(), (0..100).collect::<Vec<_>>());
    }
}
