//! Bad input gets Kafka's error or a closed connection, never a crash, while
//! another client keeps producing.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::raw::{batch, produce_error, produce_request, Raw};
use common::TestBroker;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, CreateTopicsRequest, MetadataRequest, RequestKind, ResponseKind, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use rdkafka::producer::FutureRecord;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_errors_while_others_keep_producing() {
    let b = TestBroker::start(&[("auto.create.topics.enable", "false"), ("message.max.bytes", "10000")]).await;
    b.create_topic("steady", 1, &[]).await;
    b.create_topic("target", 1, &[]).await;

    // A well-behaved client producing throughout.
    let stop = Arc::new(AtomicBool::new(false));
    let delivered = Arc::new(AtomicUsize::new(0));
    let producer = b.producer(&[("linger.ms", "1")]);
    let background = {
        let (stop, delivered) = (stop.clone(), delivered.clone());
        tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let v = format!("steady-{i}");
                producer
                    .send(
                        FutureRecord::<str, _>::to("steady").payload(&v),
                        Duration::from_secs(10),
                    )
                    .await
                    .map_err(|(e, _)| e)
                    .expect("the steady client keeps being served");
                delivered.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
        })
    };
    let progress = |at: usize| {
        let delivered = delivered.clone();
        async move {
            common::eventually(Duration::from_secs(10), || {
                (delivered.load(Ordering::Relaxed) > at).then_some(())
            })
            .await
            .expect("steady producer makes progress");
        }
    };
    progress(0).await;

    // A frame over socket.request.max.bytes closes the connection.
    let mut raw = Raw::connect(&b.bootstrap).await;
    raw.send_bytes(&(200 * 1024 * 1024i32).to_be_bytes()).await;
    assert!(raw.is_closed().await, "oversized frame closes the connection");
    progress(delivered.load(Ordering::Relaxed)).await;

    // A negative size, an unknown API key, garbage, a truncated body: closed.
    for bytes in [
        (-5i32).to_be_bytes().to_vec(),
        [&10i32.to_be_bytes()[..], &[0x03, 0xe7, 0, 0, 0, 0, 0, 1, 0, 0]].concat(),
        [&3i32.to_be_bytes()[..], &[1, 2, 3]].concat(),
    ] {
        let mut raw = Raw::connect(&b.bootstrap).await;
        raw.send_bytes(&bytes).await;
        assert!(raw.is_closed().await, "{bytes:?}");
    }
    let mut raw = Raw::connect(&b.bootstrap).await;
    let body = RequestKind::Metadata(MetadataRequest::default().with_topics(Some(vec![
        MetadataRequestTopic::default().with_name(Some(TopicName(StrBytes::from_static_str("steady")))),
    ])));
    let (_, frame) = raw.encode(ApiKey::Metadata, 12, &body);
    let cut = frame.len() - 6;
    let mut truncated = frame[..cut].to_vec();
    truncated[..4].copy_from_slice(&((cut - 4) as i32).to_be_bytes());
    raw.send_bytes(&truncated).await;
    assert!(raw.is_closed().await, "truncated body closes the connection");

    // An unknown version of a known API closes; of ApiVersions, gets a v0 answer.
    let mut raw = Raw::connect(&b.bootstrap).await;
    let (_, frame) = raw.encode(ApiKey::Metadata, 12, &body);
    let mut bad_version = frame.to_vec();
    bad_version[6..8].copy_from_slice(&99i16.to_be_bytes());
    raw.send_bytes(&bad_version).await;
    assert!(raw.is_closed().await, "unsupported version closes the connection");
    let mut raw = Raw::connect(&b.bootstrap).await;
    let (_, frame) = raw.encode(
        ApiKey::ApiVersions,
        3,
        &RequestKind::ApiVersions(ApiVersionsRequest::default()),
    );
    let mut v99 = frame.to_vec();
    v99[6..8].copy_from_slice(&99i16.to_be_bytes());
    raw.send_bytes(&v99).await;
    let mut response = raw.read_frame().await.expect("ApiVersions fallback answer");
    use kafka_protocol::protocol::Decodable;
    let _ = kafka_protocol::messages::ResponseHeader::decode(&mut response, 0).unwrap();
    let versions = kafka_protocol::messages::ApiVersionsResponse::decode(&mut response, 0).unwrap();
    assert_eq!(versions.error_code, ResponseError::UnsupportedVersion.code());
    assert!(versions
        .api_keys
        .iter()
        .any(|k| k.api_key == ApiKey::ApiVersions as i16 && k.max_version >= 3));

    // Produce errors are per partition; the connection stays usable.
    let mut raw = Raw::connect(&b.bootstrap).await;
    let good = batch(3, 10, 1000);
    let mut corrupt = good.to_vec();
    let n = corrupt.len();
    corrupt[n - 2] ^= 0x40;
    let r = raw
        .request(ApiKey::Produce, 9, produce_request("target", 0, corrupt.into()))
        .await
        .unwrap();
    assert_eq!(produce_error(&r), ResponseError::CorruptMessage.code());
    let r = raw
        .request(
            ApiKey::Produce,
            9,
            produce_request("target", 0, good.slice(..good.len() - 5)),
        )
        .await
        .unwrap();
    assert_eq!(
        produce_error(&r),
        ResponseError::CorruptMessage.code(),
        "truncated batch"
    );
    let r = raw
        .request(ApiKey::Produce, 9, produce_request("target", 0, batch(1, 20_000, 1)))
        .await
        .unwrap();
    assert_eq!(produce_error(&r), ResponseError::MessageTooLarge.code());
    let r = raw
        .request(ApiKey::Produce, 9, produce_request("no-such-topic", 0, good.clone()))
        .await
        .unwrap();
    assert_eq!(produce_error(&r), ResponseError::UnknownTopicOrPartition.code());
    let r = raw
        .request(ApiKey::Produce, 9, produce_request("target", 7, good.clone()))
        .await
        .unwrap();
    assert_eq!(
        produce_error(&r),
        ResponseError::UnknownTopicOrPartition.code(),
        "unknown partition"
    );
    let r = raw
        .request(ApiKey::Produce, 9, produce_request("target", 0, good.clone()))
        .await
        .unwrap();
    assert_eq!(produce_error(&r), 0, "a good batch on the same connection still works");

    // Invalid topic names.
    let create = CreateTopicsRequest::default()
        .with_timeout_ms(5000)
        .with_topics(vec![CreatableTopic::default()
            .with_name(TopicName(StrBytes::from_static_str("bad topic!")))
            .with_num_partitions(1)
            .with_replication_factor(1)]);
    match raw
        .request(ApiKey::CreateTopics, 7, RequestKind::CreateTopics(create))
        .await
        .unwrap()
    {
        ResponseKind::CreateTopics(r) => {
            assert_eq!(r.topics[0].error_code, ResponseError::InvalidTopicException.code())
        }
        other => panic!("{other:?}"),
    }
    let meta = MetadataRequest::default()
        .with_allow_auto_topic_creation(true)
        .with_topics(Some(vec![
            MetadataRequestTopic::default().with_name(Some(TopicName(StrBytes::from_static_str("bad/name")))),
            MetadataRequestTopic::default().with_name(Some(TopicName(StrBytes::from_static_str("absent")))),
        ]));
    match raw
        .request(ApiKey::Metadata, 12, RequestKind::Metadata(meta))
        .await
        .unwrap()
    {
        ResponseKind::Metadata(r) => {
            assert_eq!(r.topics[0].error_code, ResponseError::InvalidTopicException.code());
            assert_eq!(
                r.topics[1].error_code,
                ResponseError::UnknownTopicOrPartition.code(),
                "auto create is off"
            );
        }
        other => panic!("{other:?}"),
    }

    progress(delivered.load(Ordering::Relaxed)).await;
    stop.store(true, Ordering::Relaxed);
    background.await.unwrap();
    let steady = b.broker().ctx.replicas.get("steady", 0).unwrap();
    assert_eq!(steady.log_end_offset() as usize, delivered.load(Ordering::Relaxed));
    let target = b.broker().ctx.replicas.get("target", 0).unwrap();
    assert_eq!(target.log_end_offset(), 3, "only the good batch was written");
}
