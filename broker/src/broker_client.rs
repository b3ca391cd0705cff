//! Requests this broker sends to another broker over the Kafka protocol (a
//! follower's fetches, a transaction coordinator's markers, a partition
//! leader's transaction verification): one request and its response at a
//! time on a connection the caller keeps, or on pooled connections
//! (`BrokerChannels`). A peer is trusted no more than a client: a
//! response's size is bounded and its correlation id and length checked.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use bytes::{Buf, BufMut, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A response larger than this from a peer is refused (hostile or broken peer).
const MAX_RESPONSE_BYTES: usize = 64 << 20;

/// Idle connections to other brokers, by broker id, for requests that come
/// and go (markers, verifications) rather than a follower's steady fetches.
pub struct BrokerChannels {
    client_id: &'static str,
    /// Bounds the connect and one exchange, so a hung peer is retried.
    timeout: Duration,
    idle: Mutex<HashMap<i32, Vec<TcpStream>>>,
    correlation: AtomicI32,
}

impl BrokerChannels {
    pub fn new(client_id: &'static str, timeout: Duration) -> BrokerChannels {
        BrokerChannels {
            client_id,
            timeout,
            idle: Mutex::default(),
            correlation: AtomicI32::new(0),
        }
    }

    /// One exchange with `broker` at `addr`, on an idle connection or a new
    /// one; the connection is kept only after a clean exchange.
    pub async fn send<Req: Encodable, Resp: Decodable>(
        &self,
        broker: i32,
        addr: &str,
        api_key: ApiKey,
        version: i16,
        request: &Req,
    ) -> std::io::Result<Resp> {
        let timed_out = || std::io::Error::from(std::io::ErrorKind::TimedOut);
        let idle = self.idle.lock().get_mut(&broker).and_then(Vec::pop);
        let mut stream = match idle {
            Some(s) => s,
            None => tokio::time::timeout(self.timeout, TcpStream::connect(addr))
                .await
                .map_err(|_| timed_out())??,
        };
        let correlation = self.correlation.fetch_add(1, Ordering::Relaxed);
        let mut buffer = BytesMut::new();
        let exchange = exchange(
            &mut stream,
            &mut buffer,
            api_key,
            version,
            correlation,
            self.client_id,
            request,
        );
        let response = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| timed_out())??;
        self.idle.lock().entry(broker).or_default().push(stream);
        Ok(response)
    }
}

/// Sends `request` as `api_key` at `version` and reads its response. The
/// response is read into `buffer`, which the caller may reuse once what the
/// response holds (slices of it) is dropped.
pub async fn exchange<Req: Encodable, Resp: Decodable>(
    stream: &mut TcpStream,
    buffer: &mut BytesMut,
    api_key: ApiKey,
    version: i16,
    correlation: i32,
    client_id: &'static str,
    request: &Req,
) -> std::io::Result<Resp> {
    let bad = |e: String| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
    let header = RequestHeader::default()
        .with_request_api_key(api_key as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation)
        .with_client_id(Some(StrBytes::from_static_str(client_id)));
    let mut body = BytesMut::new();
    header
        .encode(&mut body, api_key.request_header_version(version))
        .map_err(|e| bad(e.to_string()))?;
    request.encode(&mut body, version).map_err(|e| bad(e.to_string()))?;
    let mut frame = BytesMut::with_capacity(body.len() + 4);
    frame.put_i32(body.len() as i32);
    frame.extend_from_slice(&body);
    stream.write_all(&frame).await?;
    let len = stream.read_i32().await?;
    let len = usize::try_from(len).map_err(|_| bad(format!("negative frame size {len}")))?;
    if len > MAX_RESPONSE_BYTES {
        return Err(bad(format!("response of {len} bytes")));
    }
    buffer.clear();
    buffer.reserve(len);
    while buffer.len() < len {
        let want = len - buffer.len();
        if (&mut *stream).take(want as u64).read_buf(buffer).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
    let mut buf = buffer.split_to(len).freeze();
    let header =
        ResponseHeader::decode(&mut buf, api_key.response_header_version(version)).map_err(|e| bad(e.to_string()))?;
    if header.correlation_id != correlation {
        return Err(bad(format!(
            "correlation id {} for {correlation}",
            header.correlation_id
        )));
    }
    let response = Resp::decode(&mut buf, version).map_err(|e| bad(e.to_string()))?;
    if buf.has_remaining() {
        return Err(bad(format!("{} bytes after the response", buf.remaining())));
    }
    Ok(response)
}
