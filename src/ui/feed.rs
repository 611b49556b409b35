//! The web page's live feed: a [`Notifier`] that fans every approval change out to
//! the open pages over server-sent events (`GET /ui/events`).
//!
//! The gate publishes each change once; [`LiveFeed`] puts it on a tokio broadcast
//! channel, and each open page has a task that filters it by what its approver may
//! see and writes it to the event stream. A page that falls behind gets a `resync`
//! event and reloads its view. The feed carries what changed, never the approval's
//! content: the page fetches the view it shows through its own session.
//!
//! The feed sees this process's changes. Replicas sharing a store each serve their
//! own pages.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::Frame;
use serde_json::json;
use tokio::sync::{broadcast, mpsc};

use crate::approval::Approval;
use crate::notify::{Change, Notifier};
use crate::respond::BoxError;

/// How many changes a slow page may lag behind before it is told to resync.
const CAPACITY: usize = 256;
/// Comment lines keep idle connections (and proxies) from timing out.
pub const KEEPALIVE: Duration = Duration::from_secs(15);
/// Open event streams per process.
pub const MAX_STREAMS: usize = 1024;

/// One change, as the feed carries it.
#[derive(Debug, Clone)]
pub struct FeedEvent {
    pub change: Change,
    pub approval: Arc<Approval>,
}

/// The broadcast side. Cheap to clone.
#[derive(Debug)]
pub struct LiveFeed {
    tx: broadcast::Sender<FeedEvent>,
    streams: AtomicUsize,
}

impl Default for LiveFeed {
    fn default() -> Self {
        Self::new()
    }
}

impl LiveFeed {
    pub fn new() -> LiveFeed {
        let (tx, _) = broadcast::channel(CAPACITY);
        LiveFeed { tx, streams: AtomicUsize::new(0) }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<FeedEvent> {
        self.tx.subscribe()
    }

    /// Takes one of the [`MAX_STREAMS`] stream slots; `None` when all are taken.
    pub fn open_stream(self: &Arc<Self>) -> Option<StreamSlot> {
        let n = self.streams.fetch_add(1, Ordering::AcqRel);
        if n >= MAX_STREAMS {
            self.streams.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(StreamSlot(self.clone()))
    }

    pub fn open_streams(&self) -> usize {
        self.streams.load(Ordering::Acquire)
    }
}

/// A held stream slot; released on drop.
#[derive(Debug)]
pub struct StreamSlot(Arc<LiveFeed>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.streams.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Notifier for LiveFeed {
    fn name(&self) -> &'static str {
        "web"
    }

    fn publish(&self, change: Change, approval: &Approval) {
        // No page open: nothing to do (send fails only when nobody listens).
        let _ = self.tx.send(FeedEvent { change, approval: Arc::new(approval.clone()) });
    }
}

/// The text of one event-stream message.
pub fn sse_event(ev: &FeedEvent) -> Bytes {
    let a = &ev.approval;
    let data = json!({
        "id": a.id,
        "change": ev.change.as_str(),
        "status": a.status.as_str(),
        "route": a.route,
    });
    Bytes::from(format!("event: approval\ndata: {data}\n\n"))
}

/// A response body fed by a channel: the event stream of one page.
#[derive(Debug)]
pub struct SseBody {
    rx: mpsc::Receiver<Bytes>,
}

impl SseBody {
    pub fn channel() -> (mpsc::Sender<Bytes>, SseBody) {
        let (tx, rx) = mpsc::channel(16);
        (tx, SseBody { rx })
    }
}

impl hyper::body::Body for SseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.get_mut().rx.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}
