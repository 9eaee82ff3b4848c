//! Keyed broadcast topics: one channel per key, created by the first subscriber and removed
//! when the last [`Subscription`] is dropped, so no caller has to remember to release anything.
//!
//! Used for live job events (`hub`, keyed by job) and upload progress (keyed by owner). Delivery
//! is best-effort by design: a subscriber that falls more than `capacity` messages behind sees
//! `Lagged` and must recover from durable state (the job store), never from the topic.

use std::collections::HashMap;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};

use futures::Stream;
use tokio::sync::broadcast;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;

type Channels<K, T> = Mutex<HashMap<K, broadcast::Sender<T>>>;

/// A map of broadcast channels keyed by `K`, carrying `T`.
#[derive(Debug)]
pub struct Topics<K, T> {
    // A std Mutex, not a tokio one: it guards short map operations and is never held across an
    // await. Shared with every subscription so that dropping one can remove its channel.
    channels: Arc<Channels<K, T>>,
    capacity: usize,
}

impl<K, T> Topics<K, T>
where
    K: Eq + Hash + Clone,
    T: Clone + Send + 'static,
{
    /// Topics whose channels buffer `capacity` messages per slow subscriber.
    pub fn new(capacity: usize) -> Self {
        Self {
            channels: Arc::new(Mutex::new(HashMap::new())),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<K, broadcast::Sender<T>>> {
        self.channels.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Every message published on `key` from now on. The channel goes away with the last
    /// subscription of the key.
    pub fn subscribe(&self, key: K) -> Subscription<K, T> {
        let rx = self
            .lock()
            .entry(key.clone())
            .or_insert_with(|| broadcast::channel(self.capacity).0)
            .subscribe();
        Subscription {
            stream: Some(BroadcastStream::new(rx)),
            key: Some(key),
            channels: Arc::clone(&self.channels),
        }
    }

    /// Sends `message` to the subscribers of `key`; returns how many there were.
    pub fn publish(&self, key: &K, message: T) -> usize {
        match self.lock().get(key) {
            Some(tx) => tx.send(message).unwrap_or(0),
            None => 0,
        }
    }

    /// Number of keys with at least one subscriber.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when nobody subscribes to anything.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One subscriber of one key: a stream of messages (`Err(Lagged(n))` when `n` were skipped).
/// Dropping it releases the key's channel when it was the last subscriber.
#[derive(Debug)]
pub struct Subscription<K: Eq + Hash, T: Clone + Send + 'static> {
    stream: Option<BroadcastStream<T>>,
    key: Option<K>,
    channels: Arc<Channels<K, T>>,
}

// Nothing in a subscription is pinned structurally: the inner stream is Unpin and the key is
// only read in `drop`.
impl<K: Eq + Hash, T: Clone + Send + 'static> Unpin for Subscription<K, T> {}

impl<K: Eq + Hash, T: Clone + Send + 'static> Subscription<K, T> {
    /// The next message; `None` only if the topic itself was dropped.
    pub async fn recv(&mut self) -> Option<Result<T, BroadcastStreamRecvError>> {
        futures::StreamExt::next(self).await
    }
}

impl<K: Eq + Hash, T: Clone + Send + 'static> Stream for Subscription<K, T> {
    type Item = Result<T, BroadcastStreamRecvError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.get_mut().stream.as_mut() {
            Some(stream) => Pin::new(stream).poll_next(cx),
            None => Poll::Ready(None),
        }
    }
}

impl<K: Eq + Hash, T: Clone + Send + 'static> Drop for Subscription<K, T> {
    fn drop(&mut self) {
        // Drop our receiver first, so the count below no longer includes it.
        self.stream.take();
        let Some(key) = self.key.take() else { return };
        let mut map = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
        if map.get(&key).is_some_and(|tx| tx.receiver_count() == 0) {
            map.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    #[tokio::test]
    async fn a_channel_lives_exactly_as_long_as_its_subscriptions() {
        let topics: Topics<u32, u64> = Topics::new(4);
        assert_eq!(topics.publish(&1, 10), 0, "nobody listens yet");
        let mut a = topics.subscribe(1);
        let b = topics.subscribe(1);
        let _other = topics.subscribe(2);
        assert_eq!(topics.len(), 2);
        assert_eq!(topics.publish(&1, 11), 2);
        assert_eq!(a.recv().await.map(Result::ok), Some(Some(11)));
        drop(b);
        assert_eq!(topics.len(), 2, "one subscriber of key 1 is left");
        drop(a);
        assert_eq!(topics.len(), 1, "key 1 released with its last subscriber");
        assert_eq!(topics.publish(&1, 12), 0);
    }

    #[tokio::test]
    async fn a_slow_subscriber_is_told_it_lagged() {
        let topics: Topics<u8, u32> = Topics::new(2);
        let mut sub = topics.subscribe(0);
        for i in 0..5 {
            topics.publish(&0, i);
        }
        assert!(matches!(
            sub.next().await,
            Some(Err(BroadcastStreamRecvError::Lagged(3)))
        ));
        assert_eq!(sub.next().await.map(Result::ok), Some(Some(3)));
    }

    #[tokio::test]
    async fn a_subscription_dropped_mid_wait_releases_its_channel() {
        let topics: Topics<u8, u32> = Topics::new(2);
        let mut sub = topics.subscribe(7);
        let waited = tokio::time::timeout(std::time::Duration::from_millis(5), sub.recv()).await;
        assert!(waited.is_err(), "nothing was published");
        drop(sub);
        assert!(topics.is_empty());
    }
}
