//! Requests this broker sends to another broker over the Kafka protocol (a
//! follower's fetches, a transaction coordinator's markers): one request and
//! its response at a time on a connection the caller keeps. A peer is
//! trusted no more than a client: a response's size is bounded and its
//! correlation id and length checked.

use bytes::{Buf, BufMut, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A response larger than this from a peer is refused (hostile or broken peer).
const MAX_RESPONSE_BYTES: usize = 64 << 20;

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
