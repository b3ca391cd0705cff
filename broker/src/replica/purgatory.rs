//! Kafka's delayed-operation purgatory, one per partition and keyed by event.
//! Every delayed operation of the broker waits here: a produce for its
//! acks=all high watermark, a group commit or group store for its record's,
//! a DeleteRecords for the low watermark, a fetch long-polling for records.
//! An operation watches the events that can complete it; an event wakes its
//! watchers, which check whether they are done (Kafka's `tryComplete`), and
//! watch again if not. Only the partitions an operation names wake it, and a
//! leader change wakes them all: they answer NOT_LEADER_OR_FOLLOWER then
//! instead of waiting out their timeouts.

use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use tokio::sync::Notify;

/// What moves a partition's delayed operations on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Records appended, or the log start moved (followers' fetches).
    Append,
    /// The high watermark moved (consumers' fetches, acks=all, group records).
    HighWatermark,
    /// The low watermark moved (DeleteRecords).
    LowWatermark,
    /// The term began or ended here: every watcher checks again.
    LeaderChange,
}

const EVENTS: usize = 4;

fn slot(event: Event) -> usize {
    match event {
        Event::Append => 0,
        Event::HighWatermark => 1,
        Event::LowWatermark => 2,
        Event::LeaderChange => 3,
    }
}

#[derive(Default)]
pub struct Purgatory {
    watchers: [Watchers; EVENTS],
}

impl Purgatory {
    /// Wakes `waiter` at the next `event` (once: it watches again to wait on).
    pub fn watch(&self, event: Event, waiter: &Arc<Notify>) {
        self.watchers[slot(event)].add(waiter);
    }

    /// `event` happened: its watchers check whether they are done. A leader
    /// change wakes every watcher.
    pub fn complete(&self, event: Event) {
        match event {
            Event::LeaderChange => self.watchers.iter().for_each(Watchers::wake),
            _ => self.watchers[slot(event)].wake(),
        }
    }

    /// A delayed operation on this partition: resolves with what `done`
    /// answers first, checked now and after each of `events` (and each
    /// leader change). The caller bounds it with its deadline.
    pub async fn wait_until<T>(&self, events: &[Event], mut done: impl FnMut() -> Option<T>) -> T {
        let waiter = Arc::new(Notify::new());
        loop {
            // Watch before checking: an event in between leaves a permit.
            for event in events.iter().chain(&[Event::LeaderChange]) {
                self.watch(*event, &waiter);
            }
            if let Some(answer) = done() {
                return answer;
            }
            waiter.notified().await;
        }
    }
}

/// The watchers of one event, each woken once.
#[derive(Default)]
struct Watchers(Mutex<Vec<Weak<Notify>>>);

impl Watchers {
    fn add(&self, waiter: &Arc<Notify>) {
        let waiter = Arc::downgrade(waiter);
        let mut list = self.0.lock();
        // A fetch woken by another partition watches here again.
        if list.iter().any(|w| w.ptr_eq(&waiter)) {
            return;
        }
        // Operations that ended without a wake-up leave dead entries behind.
        if list.len() >= 64 {
            list.retain(|w| w.strong_count() > 0);
        }
        list.push(waiter);
    }

    fn wake(&self) {
        let waiting = std::mem::take(&mut *self.0.lock());
        for w in waiting.iter().filter_map(Weak::upgrade) {
            // A stored permit: one that watched but is not waiting yet still sees it.
            w.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicI64, Ordering};
    use std::time::Duration;

    use super::*;

    /// A waiter is woken by the events it watches and by a leader change,
    /// not by others; one that is done before waiting answers at once.
    #[tokio::test]
    async fn operations_complete_on_their_events() {
        let purgatory = Arc::new(Purgatory::default());
        let hw = Arc::new(AtomicI64::new(0));
        let waiting = {
            let (purgatory, hw) = (purgatory.clone(), hw.clone());
            tokio::spawn(async move {
                purgatory
                    .wait_until(&[Event::HighWatermark], || {
                        (hw.load(Ordering::Acquire) >= 10).then_some("done")
                    })
                    .await
            })
        };
        tokio::task::yield_now().await;
        hw.store(10, Ordering::Release);
        // Another event does not wake it ...
        purgatory.complete(Event::Append);
        let quick = Duration::from_millis(50);
        let mut waiting = waiting;
        assert!(tokio::time::timeout(quick, &mut waiting).await.is_err());
        // ... its own does.
        purgatory.complete(Event::HighWatermark);
        let bound = Duration::from_secs(5);
        assert_eq!(tokio::time::timeout(bound, waiting).await.unwrap().unwrap(), "done");
        // A leader change wakes every watcher.
        let fetch = Arc::new(Notify::new());
        purgatory.watch(Event::Append, &fetch);
        purgatory.complete(Event::LeaderChange);
        assert!(tokio::time::timeout(bound, fetch.notified()).await.is_ok());
        assert_eq!(purgatory.wait_until(&[], || Some(1)).await, 1);
    }
}
