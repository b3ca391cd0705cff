//! A hostile client costs its own connection, never the broker: counts
//! claiming billions of elements, fuzzed frames of every advertised API and
//! version, frames whose body never comes, more request bytes than the broker
//! will hold. Each case is followed by a second client that must be served.

mod common;

use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use common::raw::{batch, produce_error, produce_request, Raw, RawError};
use common::TestBroker;
use fjord_broker::log::batch::{PatchedHeader, HEADER_SIZE};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{ApiKey, ApiVersionsRequest, RequestHeader, RequestKind, ResponseKind};
use kafka_protocol::protocol::{Encodable, StrBytes};

/// A request frame: a well-formed header, then `body` as given.
fn frame(api_key: ApiKey, version: i16, body: &[u8]) -> Vec<u8> {
    let header = RequestHeader::default()
        .with_request_api_key(api_key as i16)
        .with_request_api_version(version)
        .with_correlation_id(7)
        .with_client_id(Some(StrBytes::from_static_str("hostile")));
    let mut buf = BytesMut::new();
    buf.put_i32(0);
    header
        .encode(&mut buf, api_key.request_header_version(version))
        .unwrap();
    buf.put_slice(body);
    let len = (buf.len() - 4) as i32;
    buf[..4].copy_from_slice(&len.to_be_bytes());
    buf.to_vec()
}

/// The broker answers a fresh client's ApiVersions: it is up and serving.
async fn still_serving(bootstrap: &str) -> Vec<(ApiKey, i16, i16)> {
    let mut raw = Raw::connect(bootstrap).await;
    match raw
        .request(
            ApiKey::ApiVersions,
            3,
            RequestKind::ApiVersions(ApiVersionsRequest::default()),
        )
        .await
    {
        Ok(ResponseKind::ApiVersions(r)) => r
            .api_keys
            .iter()
            .filter_map(|k| Some((ApiKey::try_from(k.api_key).ok()?, k.min_version, k.max_version)))
            .collect(),
        other => panic!("a second client is not served: {other:?}"),
    }
}

/// Sends one frame; returns once the broker answered or closed (or stayed
/// silent for `patience`, as a long-polling request may).
async fn send_one(bootstrap: &str, bytes: &[u8], patience: Duration) {
    let mut raw = Raw::connect(bootstrap).await;
    raw.send_bytes(bytes).await;
    let _ = tokio::time::timeout(patience, raw.read_frame()).await;
}

fn huge_count_frames() -> Vec<(&'static str, Vec<u8>)> {
    let mut compact_huge = BytesMut::new();
    // Unsigned varint of 0x7ffffff0 + 1: a compact array of 0x7ffffff0 elements.
    let mut n: u32 = 0x7fff_fff1;
    while n >= 0x80 {
        compact_huge.put_u8((n as u8) | 0x80);
        n >>= 7;
    }
    compact_huge.put_u8(n as u8);
    vec![
        (
            "Metadata v1, 0x7ffffff0 topics",
            frame(ApiKey::Metadata, 1, &0x7fff_fff0i32.to_be_bytes()),
        ),
        (
            "Metadata v12, compact 0x7ffffff0 topics",
            frame(ApiKey::Metadata, 12, &compact_huge),
        ),
        (
            "CreateTopics v4, i32::MAX topics",
            frame(ApiKey::CreateTopics, 4, &i32::MAX.to_be_bytes()),
        ),
        (
            "OffsetCommit v2, i32::MAX topics",
            frame(
                ApiKey::OffsetCommit,
                2,
                &[
                    &[0, 1, b'g'][..],
                    &[0, 0, 0, 1],
                    &[0, 0],
                    &[0; 8],
                    &i32::MAX.to_be_bytes(),
                ]
                .concat(),
            ),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_counts_cost_one_connection_not_the_broker() {
    let b = TestBroker::start(&[]).await;
    for (what, bytes) in huge_count_frames() {
        let mut raw = Raw::connect(&b.bootstrap).await;
        raw.send_bytes(&bytes).await;
        match raw.read_frame().await {
            Err(RawError::Closed) => {}
            other => panic!("{what}: expected the connection closed, got {other:?}"),
        }
        still_serving(&b.bootstrap).await;
    }

    // A batch on a compacted topic whose header claims i32::MAX records while holding one.
    b.create_topic("compacted", 1, &[("cleanup.policy", "compact")]).await;
    let one = batch(1, 10, now_ms());
    let mut lying = one.to_vec();
    lying[57..61].copy_from_slice(&i32::MAX.to_be_bytes());
    lying[23..27].copy_from_slice(&(i32::MAX - 1).to_be_bytes());
    let lying = with_crc(lying);
    let mut raw = Raw::connect(&b.bootstrap).await;
    let r = raw
        .request(ApiKey::Produce, 9, produce_request("compacted", 0, lying))
        .await
        .expect("a produce answer");
    assert_eq!(produce_error(&r), ResponseError::CorruptMessage.code());
    let r = raw
        .request(ApiKey::Produce, 9, produce_request("compacted", 0, one))
        .await
        .unwrap();
    assert_eq!(produce_error(&r), 0, "the same connection goes on");
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn with_crc(mut batch: Vec<u8>) -> Bytes {
    let mut h = PatchedHeader::from_batch(&batch);
    h.recompute_crc(&batch[HEADER_SIZE..]);
    batch[..HEADER_SIZE].copy_from_slice(&h.0);
    Bytes::from(batch)
}

/// xorshift64*: a fixed seed, so a failing case is found again by rerunning.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// A decodable body for `api_key` at `version` when one of a few fills
/// decodes, re-encoded; else a run of zeros.
fn seed_body(api_key: ApiKey, version: i16) -> Vec<u8> {
    for fill in [0u8, 1] {
        let mut bytes = Bytes::from(vec![fill; 96]);
        if let Ok(request) = RequestKind::decode(api_key, &mut bytes, version) {
            let mut out = BytesMut::new();
            if request.encode(&mut out, version).is_ok() {
                return out.to_vec();
            }
        }
    }
    vec![0; 32]
}

/// One mutation of a seed: truncated, bytes flipped, a huge count or a long
/// varint written over it, or random bytes.
fn mutate(seed: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut body = seed.to_vec();
    match rng.below(5) {
        0 => body.truncate(rng.below(body.len() + 1)),
        1 => {
            for _ in 0..=rng.below(4) {
                if !body.is_empty() {
                    let at = rng.below(body.len());
                    body[at] ^= 1 << rng.below(8);
                }
            }
        }
        2 => {
            let at = rng.below(body.len() + 1);
            let huge: [u8; 4] = match rng.below(3) {
                0 => i32::MAX.to_be_bytes(),
                1 => 0x7fff_fff0i32.to_be_bytes(),
                _ => [0xff, 0xff, 0xff, 0x7f],
            };
            body.splice(at..(at + 4).min(body.len()), huge);
        }
        3 => {
            let at = rng.below(body.len() + 1);
            body.splice(at..at, [0xff, 0xff, 0xff, 0xff, 0x0f]);
        }
        _ => body = (0..rng.below(64)).map(|_| rng.next() as u8).collect(),
    }
    body
}

/// Every advertised API key and version, mutated seeds, on fresh connections;
/// after each key a second client must still be served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuzzed_frames_of_every_api_cost_one_connection() {
    let b = TestBroker::start(&[("auto.create.topics.enable", "false")]).await;
    let apis = still_serving(&b.bootstrap).await;
    assert!(apis.len() > 20, "ApiVersions lists the broker's APIs");
    let mut rng = Rng(0x5eed_f10d);
    let started = Instant::now();
    let mut sent = 0;
    for (api_key, min, max) in apis {
        for version in min..=max {
            let seed = seed_body(api_key, version);
            for _ in 0..24 {
                let body = mutate(&seed, &mut rng);
                send_one(
                    &b.bootstrap,
                    &frame(api_key, version, &body),
                    Duration::from_millis(200),
                )
                .await;
                sent += 1;
            }
        }
        still_serving(&b.bootstrap).await;
    }
    eprintln!("fuzz: {sent} frames in {:?}", started.elapsed());
    // The broker that took all of that still appends and serves.
    let producer = b.producer(&[]);
    b.create_topic("after-fuzz", 1, &[]).await;
    producer
        .send(
            rdkafka::producer::FutureRecord::<str, _>::to("after-fuzz").payload("still here"),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .expect("produce after the fuzzing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_never_arrives_times_out() {
    let b = TestBroker::start(&[("socket.request.read.timeout.ms", "300")]).await;
    let mut raw = Raw::connect(&b.bootstrap).await;
    raw.send_bytes(&[&100i32.to_be_bytes()[..], &[0, 18, 0, 3]].concat())
        .await;
    let started = Instant::now();
    assert!(raw.is_closed().await, "a stalled frame closes its connection");
    assert!(started.elapsed() < Duration::from_secs(5));
    still_serving(&b.bootstrap).await;
}

/// With queued.max.request.bytes reached, the next frame waits to be read
/// until bytes are given back; nothing is refused or lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bytes_across_connections_are_bounded() {
    let b = TestBroker::start(&[("queued.max.request.bytes", "1000")]).await;
    // A announces 990 bytes and sends 4: the broker holds 990 of its 1000.
    let mut a = Raw::connect(&b.bootstrap).await;
    a.send_bytes(&[&990i32.to_be_bytes()[..], &[0, 3, 0, 1]].concat()).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    // B's ApiVersions (about 40 bytes) does not fit: it is not answered while A holds the bytes.
    let mut b_conn = Raw::connect(&b.bootstrap).await;
    let (_, request) = b_conn.encode(
        ApiKey::ApiVersions,
        3,
        &RequestKind::ApiVersions(ApiVersionsRequest::default()),
    );
    b_conn.send_bytes(&request).await;
    let early = tokio::time::timeout(Duration::from_millis(500), b_conn.read_frame()).await;
    assert!(early.is_err(), "B waits while A holds the request budget: {early:?}");
    // A finishes its frame (garbage: its connection closes) and gives the bytes back.
    let rest = [&[0, 0, 0, 9, 0xff, 0xff][..], &i32::MAX.to_be_bytes(), &[0; 976]].concat();
    a.send_bytes(&rest).await;
    assert!(a.is_closed().await);
    b_conn
        .read_frame()
        .await
        .expect("B is answered once the bytes are free");
}
