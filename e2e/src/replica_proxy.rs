//! A Kafka-aware TCP proxy in front of a broker's advertised listener. It
//! forwards every connection, and can cut one replica off: a connection whose
//! Fetch names that replica id is dropped, so the follower loses its leaders
//! as in a network partition while clients and the other followers carry on.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, FetchRequest, RequestHeader};
use kafka_protocol::protocol::Decodable;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

const NOBODY: i32 = i32::MIN;

pub struct ReplicaProxy {
    pub addr: SocketAddr,
    cut: Arc<AtomicI32>,
    accept: JoinHandle<()>,
}

impl ReplicaProxy {
    /// Listens on `port` (127.0.0.1; 0: one the OS picks) and forwards to `upstream`.
    pub async fn start(port: u16, upstream: SocketAddr) -> ReplicaProxy {
        let listener = TcpListener::bind(("127.0.0.1", port)).await.expect("proxy port");
        let addr = listener.local_addr().expect("bound");
        let cut = Arc::new(AtomicI32::new(NOBODY));
        let accept = {
            let cut = cut.clone();
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    tokio::spawn(forward(client, upstream, cut.clone()));
                }
            })
        };
        ReplicaProxy { addr, cut, accept }
    }

    /// Drops `replica`'s fetch connections from now on (existing ones at their next fetch).
    pub fn cut_replica(&self, replica: i32) {
        self.cut.store(replica, Ordering::SeqCst);
    }

    pub fn heal(&self) {
        self.cut.store(NOBODY, Ordering::SeqCst);
    }
}

impl Drop for ReplicaProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// The replica id a Fetch request frame names (-1 for a consumer, None for other requests).
fn fetching_replica(frame: &Bytes) -> Option<i32> {
    let mut buf = frame.clone();
    let key = i16::from_be_bytes([*frame.first()?, *frame.get(1)?]);
    let version = i16::from_be_bytes([*frame.get(2)?, *frame.get(3)?]);
    if key != ApiKey::Fetch as i16 {
        return None;
    }
    RequestHeader::decode(&mut buf, ApiKey::Fetch.request_header_version(version)).ok()?;
    let request = FetchRequest::decode(&mut buf, version).ok()?;
    Some(if version >= 15 {
        request.replica_state.replica_id.0
    } else {
        request.replica_id.0
    })
}

async fn forward(mut client: TcpStream, upstream: SocketAddr, cut: Arc<AtomicI32>) {
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let (mut from_server, mut to_server) = server.into_split();
    let (mut from_client, mut to_client) = client.split();
    let responses = async {
        let _ = tokio::io::copy(&mut from_server, &mut to_client).await;
    };
    let requests = async {
        let mut replica = None;
        loop {
            let Ok(len) = from_client.read_i32().await else { return };
            let Ok(size) = usize::try_from(len) else { return };
            let mut frame = BytesMut::zeroed(size);
            if from_client.read_exact(&mut frame).await.is_err() {
                return;
            }
            let frame = frame.freeze();
            if let Some(r) = fetching_replica(&frame) {
                replica = Some(r);
            }
            if replica.is_some_and(|r| r >= 0 && r == cut.load(Ordering::SeqCst)) {
                return;
            }
            if to_server.write_all(&len.to_be_bytes()).await.is_err() || to_server.write_all(&frame).await.is_err() {
                return;
            }
        }
    };
    // Either side ending ends the connection.
    tokio::select! {
        () = responses => {}
        () = requests => {}
    }
}
