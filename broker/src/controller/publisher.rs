//! Hands applied metadata to the broker's listeners (its replicas, the group
//! coordinator) on a thread of its own, in log order, so that a listener's
//! disk work (opening, recovering and deleting logs) never holds up the
//! quorum's apply task. Kafka's MetadataLoader does the same from its own
//! event queue.

use std::sync::mpsc;
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use tokio::sync::watch;

use super::image::MetadataImage;
use super::records::ImageChanges;
use super::Listener;

/// The image as applied, and how far the listeners have acted on it.
pub struct Published {
    /// The image as the state machine applied it: what the active
    /// controller judges operations against.
    pub image: RwLock<Arc<MetadataImage>>,
    /// The listeners, and the image they were last told of.
    told: Mutex<Told>,
    /// The image they have acted on (told's, readable while they work).
    acted_on: RwLock<Arc<MetadataImage>>,
    /// The index of the last log entry the listeners have acted on: a
    /// broker counts as caught up (and an operation as done here) from then.
    pub applied: watch::Sender<u64>,
}

struct Told {
    listeners: Vec<Listener>,
    image: Arc<MetadataImage>,
}

impl Published {
    /// Tells `listener` of the image now (as a change of everything), then
    /// of every change after it.
    pub fn subscribe(&self, listener: Listener) -> crate::error::Result<()> {
        let mut told = self.told.lock();
        listener(&told.image, &ImageChanges::everything())?;
        told.listeners.push(listener);
        Ok(())
    }

    /// The image the listeners have acted on (behind [`Self::image`] while
    /// they work on a change).
    pub fn acted_on(&self) -> Arc<MetadataImage> {
        self.acted_on.read().clone()
    }

    fn tell(&self, publication: Publication) {
        let Publication { image, changes, index } = publication;
        if !changes.is_empty() {
            let mut told = self.told.lock();
            told.image = image.clone();
            for l in &told.listeners {
                if let Err(e) = l(&image, &changes) {
                    // The image is committed; a broker that cannot act on it
                    // (a disk error opening a log) reports it and keeps following.
                    tracing::error!(error = %e, "applying the metadata image failed");
                }
            }
            *self.acted_on.write() = image;
        }
        self.applied.send_replace(index);
    }
}

struct Publication {
    image: Arc<MetadataImage>,
    changes: ImageChanges,
    index: u64,
}

/// The state machine's end: publishes each applied batch. The thread ends
/// when the publisher is dropped (with the state machine).
pub struct Publisher {
    published: Arc<Published>,
    queue: mpsc::Sender<Publication>,
}

impl Publisher {
    pub fn start(image: MetadataImage) -> std::io::Result<Publisher> {
        let image = Arc::new(image);
        let published = Arc::new(Published {
            image: RwLock::new(image.clone()),
            told: Mutex::new(Told {
                listeners: Vec::new(),
                image: image.clone(),
            }),
            acted_on: RwLock::new(image),
            applied: watch::channel(0).0,
        });
        let (queue, pending) = mpsc::channel::<Publication>();
        let telling = published.clone();
        // Listeners may spawn tasks (a coordinator loading its groups).
        let runtime = tokio::runtime::Handle::try_current().ok();
        std::thread::Builder::new()
            .name("metadata-publisher".into())
            .spawn(move || {
                let _entered = runtime.as_ref().map(tokio::runtime::Handle::enter);
                while let Ok(mut next) = pending.recv() {
                    // Batches that queued up meanwhile are told as one change.
                    while let Ok(later) = pending.try_recv() {
                        next.changes.merge(later.changes);
                        next.image = later.image;
                        next.index = later.index;
                    }
                    telling.tell(next);
                }
            })?;
        Ok(Publisher { published, queue })
    }

    pub fn published(&self) -> Arc<Published> {
        self.published.clone()
    }

    /// The image as applied up to log index `index`, and what the entries up
    /// to it changed; the listeners are told on the publisher's thread.
    pub fn publish(&self, image: Arc<MetadataImage>, changes: ImageChanges, index: u64) {
        *self.published.image.write() = image.clone();
        // The thread outlives every send: it ends only when `queue` is dropped.
        let _ = self.queue.send(Publication { image, changes, index });
    }
}
