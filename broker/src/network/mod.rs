//! The Kafka listener: length-prefixed frames, request headers, in-order
//! pipelined responses, dispatch to the API handlers.
//!
//! Each connection has a reader that handles one request at a time (so two
//! produce requests on one connection append in the order sent, as Kafka
//! guarantees) and a writer task that flushes encoded responses in order
//! while the reader already works on the next request. A produce whose
//! answer waits (acks=all replication, a flush.messages group commit) is a
//! delayed operation: appended in order, answered by its own task, and the
//! reader moves on, so a connection keeps several such produces in flight
//! (a client's max.in.flight) instead of one replication round trip each.

pub mod frame;
pub mod handler;
pub mod zero_copy;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tracing::Instrument;

use frame::{FrameError, Request};
use handler::{DelayedAnswer, RequestHandler};
use kafka_protocol::messages::{ApiKey, RequestKind, ResponseKind};
use zero_copy::{Chunk, FileRecords};

/// Request bytes read off the sockets and not yet handled, across all
/// connections (`queued.max.request.bytes`): a connection takes its frame's
/// share before reading the body and gives it back once the request is done,
/// so many clients announcing large frames cannot make the broker hold more.
#[derive(Clone)]
struct RequestMemory {
    budget: Option<(Arc<Semaphore>, u32)>,
}

impl RequestMemory {
    fn new(queued_max_request_bytes: i64) -> RequestMemory {
        let budget = (queued_max_request_bytes > 0).then(|| {
            let total = queued_max_request_bytes.min(i64::from(u32::MAX)) as u32;
            (Arc::new(Semaphore::new(total as usize)), total)
        });
        RequestMemory { budget }
    }

    /// Waits until `size` bytes fit. A frame larger than the whole budget
    /// (allowed by socket.request.max.bytes) waits for all of it.
    async fn reserve(&self, size: usize) -> Option<OwnedSemaphorePermit> {
        let (semaphore, total) = self.budget.as_ref()?;
        let n = (size.min(*total as usize) as u32).max(1);
        semaphore.clone().acquire_many_owned(n).await.ok()
    }
}

/// Accepts connections until shutdown.
pub async fn serve<H: RequestHandler>(listener: TcpListener, apis: Arc<H>, shutdown: watch::Receiver<bool>) {
    let mut stop = shutdown.clone();
    let memory = RequestMemory::new(apis.config().queued_max_request_bytes);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let apis = apis.clone();
                    let shutdown = shutdown.clone();
                    let memory = memory.clone();
                    tokio::spawn(async move {
                        handle_connection(stream, apis, memory, shutdown)
                            .instrument(tracing::debug_span!("connection", %peer))
                            .await
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            () = crate::shutdown::stopped(&mut stop) => return,
        }
    }
}

struct ConnectionGuard<H: RequestHandler>(Arc<H>);
impl<H: RequestHandler> Drop for ConnectionGuard<H> {
    fn drop(&mut self) {
        self.0.metrics().active_connections.dec();
    }
}

async fn handle_connection<H: RequestHandler>(
    stream: TcpStream,
    apis: Arc<H>,
    memory: RequestMemory,
    mut shutdown: watch::Receiver<bool>,
) {
    // Kafka reports client hosts as "/<ip>".
    let client_host = stream.peer_addr().map(|a| format!("/{}", a.ip())).unwrap_or_default();
    apis.metrics().active_connections.inc();
    let _guard = ConnectionGuard(apis.clone());
    let _ = stream.set_nodelay(true);
    let (mut read_half, write_half) = stream.into_split();
    let mut inbound = Inbound::default();
    let (tx, rx) = mpsc::channel::<Outgoing>(MAX_QUEUED_RESPONSES);
    let writer = tokio::spawn(write_responses(write_half, rx));
    let max_frame = apis.config().socket_request_max_bytes as usize;
    let idle = Duration::from_millis(apis.config().connections_max_idle_ms.max(1) as u64);
    let body_timeout = Duration::from_millis(apis.config().socket_request_read_timeout_ms.max(1) as u64);

    loop {
        tokio::select! {
            r = inbound.read_size(&mut read_half, idle) => match r {
                Ok(true) => {}
                Ok(false) => {
                    tracing::debug!("closing idle connection");
                    break;
                }
                Err(_) => break,
            },
            () = crate::shutdown::stopped(&mut shutdown) => break,
        }
        let size = inbound.size();
        if size < 0 || size as usize > max_frame {
            tracing::warn!(
                size,
                max = max_frame,
                "request size exceeds socket.request.max.bytes; closing connection"
            );
            break;
        }
        // One request at a time per connection, so one connection holds at
        // most one frame (socket.request.max.bytes) of request bytes.
        let permit = tokio::select! {
            permit = memory.reserve(size as usize) => permit,
            () = crate::shutdown::stopped(&mut shutdown) => break,
        };
        let frame = match tokio::time::timeout(body_timeout, inbound.read_frame(&mut read_half, size as usize)).await {
            Ok(Ok(frame)) => frame,
            Ok(Err(_)) => break,
            Err(_) => {
                tracing::warn!(
                    size,
                    "request body did not arrive within socket.request.read.timeout.ms; closing connection"
                );
                break;
            }
        };
        let request = match frame::parse_request(frame, apis.as_ref()) {
            Ok(r) => r,
            Err(FrameError::UnsupportedApiVersions { correlation_id }) => {
                // Clients probe with their newest ApiVersions; answer v0 with our range.
                let response = apis.api_versions_fallback();
                let none = FileRecords::default();
                match frame::encode_response(correlation_id, ApiKey::ApiVersions, 0, &response, &none) {
                    Ok(bytes) => {
                        if tx.send(Outgoing::Ready(bytes)).await.is_err() {
                            break;
                        }
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "encoding ApiVersions fallback failed");
                        break;
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "invalid request; closing connection");
                break;
            }
        };
        let keep_open = dispatch(&apis, request, &tx, &client_host).await;
        drop(permit);
        if !keep_open {
            break;
        }
    }
    drop(tx);
    let _ = writer.await;
}

/// A connection's request bytes. Requests are read straight into one buffer
/// and handed to their handlers as slices of it: no zeroing, no copy through
/// a second buffer, and once a request's slices are dropped (a produce's
/// batches are written by then) the next request reuses the same memory, so
/// large produce requests do not fault in fresh pages every time.
#[derive(Default)]
struct Inbound {
    buf: BytesMut,
    /// Whether the buffer grew past [`READ_CHUNK`] since it was last given back.
    grown: bool,
}

/// What one read asks the socket for at least (several small requests
/// arrive in one read).
const READ_CHUNK: usize = 64 * 1024;
/// A buffer grown past this for one large request is given back after it;
/// below it, it is given back once the connection is quiet for a second.
const RETAIN_MAX: usize = 2 << 20;
const RELEASE_WHEN_QUIET: Duration = Duration::from_secs(1);

impl Inbound {
    /// Waits for the next request's size prefix: false when nothing came
    /// within `idle` (connections.max.idle.ms).
    async fn read_size(&mut self, stream: &mut OwnedReadHalf, idle: Duration) -> std::io::Result<bool> {
        let deadline = tokio::time::Instant::now() + idle;
        if self.grown && self.buf.len() < 4 {
            // Reading is cancel safe: bytes that arrived stay in the buffer.
            if let Ok(r) = tokio::time::timeout(RELEASE_WHEN_QUIET, self.fill(stream, 4)).await {
                return r.map(|()| true);
            }
            self.release();
        }
        match tokio::time::timeout_at(deadline, self.fill(stream, 4)).await {
            Ok(r) => r.map(|()| true),
            Err(_) => Ok(false),
        }
    }

    /// The size prefix read by [`Inbound::read_size`].
    fn size(&self) -> i32 {
        i32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]])
    }

    /// The request after the size prefix, `size` bytes.
    async fn read_frame(&mut self, stream: &mut OwnedReadHalf, size: usize) -> std::io::Result<Bytes> {
        self.fill(stream, 4 + size).await?;
        self.buf.advance(4);
        let frame = self.buf.split_to(size).freeze();
        self.grown |= size > READ_CHUNK;
        if size > RETAIN_MAX {
            // The frame keeps its own allocation; the buffer starts small again.
            self.release();
        }
        Ok(frame)
    }

    /// Gives a grown allocation back, keeping the bytes already read.
    fn release(&mut self) {
        self.buf = BytesMut::from(&self.buf[..]);
        self.grown = false;
    }

    /// Reads until the buffer holds `want` bytes (end of stream first: an error).
    async fn fill(&mut self, stream: &mut OwnedReadHalf, want: usize) -> std::io::Result<()> {
        while self.buf.len() < want {
            // Reclaims the allocation when every slice handed out is gone.
            self.buf.reserve((want - self.buf.len()).max(READ_CHUNK));
            if stream.read_buf(&mut self.buf).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
        Ok(())
    }
}

/// Responses queued on one connection (ready or delayed), in request order.
const MAX_QUEUED_RESPONSES: usize = 128;

/// One response in a connection's order: encoded, or a delayed produce's
/// task that encodes it when it completes (`None`: acks=0, no answer).
enum Outgoing {
    Ready(Vec<Chunk>),
    Later(JoinHandle<anyhow::Result<Option<Vec<Chunk>>>>),
}

/// Handles one request; false when the connection must close.
async fn dispatch<H: RequestHandler>(
    apis: &Arc<H>,
    request: Request,
    tx: &mpsc::Sender<Outgoing>,
    client_host: &str,
) -> bool {
    let Request {
        header,
        api_key,
        version,
        body,
    } = request;
    let api = format!("{api_key:?}");
    let span = tracing::debug_span!(
        "request",
        api = %api,
        version,
        correlation_id = header.correlation_id,
        client_id = header.client_id.as_deref().unwrap_or(""),
    );
    let started = Instant::now();
    let correlation_id = header.correlation_id;
    let response = if let RequestKind::Produce(produce) = body {
        let appended = apis.begin_produce(produce, version).instrument(span.clone()).await;
        if !appended.is_ready() {
            let apis = apis.clone();
            let answer = async move {
                let response = appended.complete().await;
                observe(apis.as_ref(), &api, started);
                response
                    .map(|r| {
                        frame::encode_response(
                            correlation_id,
                            api_key,
                            version,
                            &ResponseKind::Produce(r),
                            &FileRecords::default(),
                        )
                    })
                    .transpose()
            };
            return tx
                .send(Outgoing::Later(tokio::spawn(answer.instrument(span))))
                .await
                .is_ok();
        }
        appended
            .complete()
            .await
            .map(|r| (ResponseKind::Produce(r), FileRecords::default()))
    } else {
        apis.handle(&header, body, client_host).instrument(span).await
    };
    respond(
        apis.as_ref(),
        &api,
        started,
        correlation_id,
        api_key,
        version,
        response,
        tx,
    )
    .await
}

fn observe<H: RequestHandler>(apis: &H, api: &str, started: Instant) {
    let metrics = apis.metrics();
    metrics.requests.with_label_values(&[api]).inc();
    metrics
        .request_latency
        .with_label_values(&[api])
        .observe(started.elapsed().as_secs_f64());
}

#[allow(clippy::too_many_arguments)]
async fn respond<H: RequestHandler>(
    apis: &H,
    api: &str,
    started: Instant,
    correlation_id: i32,
    api_key: ApiKey,
    version: i16,
    response: Option<(ResponseKind, FileRecords)>,
    tx: &mpsc::Sender<Outgoing>,
) -> bool {
    observe(apis, api, started);
    let Some((response, files)) = response else {
        return true; // acks=0 produce: no response
    };
    match frame::encode_response(correlation_id, api_key, version, &response, &files) {
        Ok(bytes) => tx.send(Outgoing::Ready(bytes)).await.is_ok(),
        Err(e) => {
            tracing::error!(api = %api, error = %e, "encoding response failed; closing connection");
            false
        }
    }
}

async fn write_responses(write_half: tokio::net::tcp::OwnedWriteHalf, mut rx: mpsc::Receiver<Outgoing>) {
    let mut out = BufWriter::with_capacity(64 * 1024, write_half);
    while let Some(next) = rx.recv().await {
        let frame = match next {
            Outgoing::Ready(frame) => frame,
            Outgoing::Later(task) => {
                // Flush what is ready before waiting on a delayed answer.
                if out.flush().await.is_err() {
                    return;
                }
                match task.await {
                    Ok(Ok(Some(frame))) => frame,
                    Ok(Ok(None)) => continue,
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, "encoding a delayed response failed; closing connection");
                        return;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "a delayed response failed; closing connection");
                        return;
                    }
                }
            }
        };
        for chunk in frame {
            let written = match chunk {
                Chunk::Bytes(bytes) => out.write_all(&bytes).await,
                Chunk::File(slice) => match out.flush().await {
                    Ok(()) => send_file(out.get_ref().as_ref(), &slice).await,
                    Err(e) => Err(e),
                },
            };
            if let Err(e) = written {
                tracing::debug!(error = %e, "writing response failed; closing connection");
                return;
            }
        }
        // Coalesce pipelined responses; flush once nothing else is queued.
        if rx.is_empty() && out.flush().await.is_err() {
            return;
        }
    }
    let _ = out.flush().await;
    let _ = out.shutdown().await;
}

/// Copies a file region to the socket inside the kernel (sendfile(2)).
async fn send_file(socket: &TcpStream, slice: &zero_copy::FileSlice) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let mut offset = slice.position as libc::off_t;
    let end = offset + slice.len as libc::off_t;
    while offset < end {
        socket.writable().await?;
        let result = socket.try_io(tokio::io::Interest::WRITABLE, || {
            let left = (end - offset) as usize;
            // SAFETY: both descriptors are open for the duration of the call; `offset` is ours.
            let n = unsafe { libc::sendfile(socket.as_raw_fd(), slice.file.as_raw_fd(), &mut offset, left) };
            if n < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(n as usize)
            }
        });
        match result {
            Ok(0) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "segment shorter than the fetch slice",
                ))
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(body: &[u8]) -> Vec<u8> {
        let mut out = (body.len() as i32).to_be_bytes().to_vec();
        out.extend_from_slice(body);
        out
    }

    /// Requests that arrive together, split anywhere, or larger than the
    /// buffer keeps come out whole and in order; a large one's allocation is
    /// not kept.
    #[tokio::test]
    async fn requests_come_out_whole_from_one_reused_buffer() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let big: Vec<u8> = (0..RETAIN_MAX + 12_345).map(|i| (i % 251) as u8).collect();
        let mid = vec![9u8; 300_000];
        let mut wire = Vec::new();
        for body in [&b"first"[..], &big, &b"third"[..], &mid, &b""[..], &b"last"[..]] {
            wire.extend(framed(body));
        }
        let sender = tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            // Odd-sized writes: frames and prefixes split across reads.
            for piece in wire.chunks(70_001) {
                s.write_all(piece).await.unwrap();
            }
            s
        });
        let (stream, _) = listener.accept().await.unwrap();
        let (mut read_half, _write_half) = stream.into_split();
        let mut inbound = Inbound::default();
        let idle = Duration::from_secs(10);
        let mut frames = Vec::new();
        for _ in 0..6 {
            assert!(inbound.read_size(&mut read_half, idle).await.unwrap());
            let size = inbound.size() as usize;
            frames.push(inbound.read_frame(&mut read_half, size).await.unwrap());
            if size > RETAIN_MAX {
                assert!(!inbound.grown, "a frame over RETAIN_MAX is not kept");
            }
        }
        assert_eq!(frames[0], &b"first"[..]);
        assert_eq!(frames[1], &big[..]);
        assert_eq!(frames[2], &b"third"[..]);
        assert_eq!(frames[3], &mid[..]);
        assert!(frames[4].is_empty());
        assert_eq!(frames[5], &b"last"[..]);
        assert!(inbound.grown, "a 300 KB frame's buffer is kept for the next");
        // The peer goes away: an error, not a hang.
        drop(sender.await.unwrap());
        assert!(inbound.read_size(&mut read_half, idle).await.is_err());
    }
}
