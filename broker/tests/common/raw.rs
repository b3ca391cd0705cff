//! A minimal raw Kafka connection for protocol-level tests, with the
//! kafka-protocol codecs (client side).
#![allow(dead_code)]

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind, ResponseHeader, ResponseKind};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub struct Raw {
    stream: TcpStream,
    next_id: i32,
}

#[derive(Debug)]
pub enum RawError {
    Closed,
    Io(std::io::Error),
    Decode(String),
}

impl Raw {
    pub async fn connect(addr: &str) -> Raw {
        Raw {
            stream: TcpStream::connect(addr).await.unwrap(),
            next_id: 1,
        }
    }

    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    pub fn encode(&mut self, api_key: ApiKey, version: i16, body: &RequestKind) -> (i32, Bytes) {
        let id = self.next_id;
        self.next_id += 1;
        let header = RequestHeader::default()
            .with_request_api_key(api_key as i16)
            .with_request_api_version(version)
            .with_correlation_id(id)
            .with_client_id(Some(StrBytes::from_static_str("raw-test")));
        let mut buf = BytesMut::new();
        buf.put_i32(0);
        header
            .encode(&mut buf, api_key.request_header_version(version))
            .unwrap();
        body.encode(&mut buf, version).unwrap();
        let len = (buf.len() - 4) as i32;
        buf[..4].copy_from_slice(&len.to_be_bytes());
        (id, buf.freeze())
    }

    /// Reads one response frame, or reports that the broker closed the connection.
    pub async fn read_frame(&mut self) -> Result<Bytes, RawError> {
        let mut len = [0u8; 4];
        match tokio::time::timeout(Duration::from_secs(10), self.stream.read_exact(&mut len)).await {
            Err(_) => return Err(RawError::Io(std::io::Error::other("timed out"))),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(RawError::Closed),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => return Err(RawError::Closed),
            Ok(Err(e)) => return Err(RawError::Io(e)),
            Ok(Ok(_)) => {}
        }
        let mut buf = vec![0u8; i32::from_be_bytes(len) as usize];
        self.stream.read_exact(&mut buf).await.map_err(RawError::Io)?;
        Ok(Bytes::from(buf))
    }

    pub async fn request(
        &mut self,
        api_key: ApiKey,
        version: i16,
        body: RequestKind,
    ) -> Result<ResponseKind, RawError> {
        let (id, bytes) = self.encode(api_key, version, &body);
        self.send_bytes(&bytes).await;
        let mut frame = self.read_frame().await?;
        let header = ResponseHeader::decode(&mut frame, api_key.response_header_version(version))
            .map_err(|e| RawError::Decode(e.to_string()))?;
        assert_eq!(header.correlation_id, id, "responses come back in order");
        let response =
            ResponseKind::decode(api_key, &mut frame, version).map_err(|e| RawError::Decode(e.to_string()))?;
        assert!(
            frame.is_empty(),
            "{api_key:?} v{version}: {} trailing bytes",
            frame.len()
        );
        Ok(response)
    }

    /// True when the broker has closed this connection.
    pub async fn is_closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(
            tokio::time::timeout(Duration::from_secs(10), self.stream.read(&mut b)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }
}

/// One uncompressed batch of `n` records built with kafka-protocol's encoder.
pub fn batch(n: usize, value_size: usize, timestamp: i64) -> Bytes {
    use fjord_broker::log::batch::{encode_records, plain_record};
    let mut records: Vec<_> = (0..n)
        .map(|i| {
            plain_record(
                i as i64,
                timestamp + i as i64,
                Some(Bytes::from(format!("k{i}"))),
                Some(Bytes::from(vec![b'v'; value_size])),
            )
        })
        .collect();
    encode_records(&mut records, kafka_protocol::records::Compression::None, -1, -1, -1).unwrap()
}

pub fn produce_request(topic: &str, partition: i32, records: Bytes) -> RequestKind {
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::{ProduceRequest, TopicName};
    RequestKind::Produce(
        ProduceRequest::default()
            .with_acks(1)
            .with_timeout_ms(5000)
            .with_topic_data(vec![TopicProduceData::default()
                .with_name(TopicName(StrBytes::from_string(topic.to_string())))
                .with_partition_data(vec![PartitionProduceData::default()
                    .with_index(partition)
                    .with_records(Some(records))])]),
    )
}

/// The error code of the single partition in a produce response.
pub fn produce_error(response: &ResponseKind) -> i16 {
    match response {
        ResponseKind::Produce(r) => r.responses[0].partition_responses[0].error_code,
        other => panic!("not a produce response: {other:?}"),
    }
}
