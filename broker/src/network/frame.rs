//! Request frame parsing and response framing, with the kafka-protocol codecs.

use std::panic::{catch_unwind, AssertUnwindSafe};

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, FetchResponse, RequestHeader, RequestKind, ResponseHeader, ResponseKind};
use kafka_protocol::protocol::{Decodable, Encodable};

use super::zero_copy::{Chunk, ChunkedBuf, FileRecords, SENDFILE_MIN};

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {0} bytes is too short for a request header")]
    TooShort(usize),
    #[error("unknown API key {0}")]
    UnknownApiKey(i16),
    #[error("unsupported version {version} of {api_key:?}")]
    UnsupportedVersion { api_key: ApiKey, version: i16 },
    #[error("ApiVersions version not supported")]
    UnsupportedApiVersions { correlation_id: i32 },
    #[error("malformed {api_key:?} v{version} request: {reason}")]
    Malformed {
        api_key: ApiKey,
        version: i16,
        reason: String,
    },
}

pub struct Request {
    pub header: RequestHeader,
    pub api_key: ApiKey,
    pub version: i16,
    pub body: RequestKind,
}

/// Decoding untrusted bytes must never take the broker down: the codecs use
/// `bytes::Buf` getters, which panic on truncated input, so a panic here is
/// turned into an error for this one connection.
fn guarded<T>(f: impl FnOnce() -> anyhow::Result<T>) -> Result<T, String> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("truncated or malformed field".into()),
    }
}

pub fn parse_request(mut frame: Bytes, apis: &impl super::handler::RequestHandler) -> Result<Request, FrameError> {
    if frame.len() < 8 {
        return Err(FrameError::TooShort(frame.len()));
    }
    let raw_key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let api_key = ApiKey::try_from(raw_key).map_err(|_| FrameError::UnknownApiKey(raw_key))?;
    if !apis.supports(api_key, version) {
        if api_key == ApiKey::ApiVersions {
            return Err(FrameError::UnsupportedApiVersions { correlation_id });
        }
        return Err(FrameError::UnsupportedVersion { api_key, version });
    }
    let header_version = api_key.request_header_version(version);
    let header =
        guarded(|| RequestHeader::decode(&mut frame, header_version)).map_err(|reason| FrameError::Malformed {
            api_key,
            version,
            reason,
        })?;
    let body =
        guarded(|| RequestKind::decode(api_key, &mut frame, version)).map_err(|reason| FrameError::Malformed {
            api_key,
            version,
            reason,
        })?;
    Ok(Request {
        header,
        api_key,
        version,
        body,
    })
}

/// Frames a response: size, header (its version follows the API), body, with
/// the file regions of `files` spliced in where their placeholders are.
pub fn encode_response(
    correlation_id: i32,
    api_key: ApiKey,
    version: i16,
    body: &ResponseKind,
    files: &FileRecords,
) -> anyhow::Result<Vec<Chunk>> {
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    let header_version = api_key.response_header_version(version);
    let size_prefix = |first: &mut [u8], total: usize| first[..4].copy_from_slice(&((total - 4) as i32).to_be_bytes());
    if let ResponseKind::Fetch(fetch) = body {
        let mut buf = ChunkedBuf::new(files, 256 + inline_hint(fetch));
        buf.put_i32(0);
        header.encode(&mut buf, header_version)?;
        fetch.encode(&mut buf, version)?;
        return Ok(buf.finish(size_prefix)?);
    }
    let mut buf = BytesMut::with_capacity(256);
    buf.put_i32(0);
    header.encode(&mut buf, header_version)?;
    body.encode(&mut buf, version)?;
    let total = buf.len();
    size_prefix(&mut buf, total);
    Ok(vec![Chunk::Bytes(buf.freeze())])
}

/// Fetch responses carry most of their bytes as records: size the buffer for
/// the ones that are read inline.
fn inline_hint(fetch: &FetchResponse) -> usize {
    fetch
        .responses
        .iter()
        .flat_map(|t| t.partitions.iter())
        .map(|p| {
            p.records
                .as_ref()
                .map_or(0, |r| if r.len() < SENDFILE_MIN { r.len() } else { 0 })
                + 64
        })
        .sum()
}
