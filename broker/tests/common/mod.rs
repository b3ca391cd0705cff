//! Shared helpers: an in-process broker on free loopback ports and librdkafka clients.
#![allow(dead_code)]

pub mod proxy;
pub mod raw;

use std::time::{Duration, Instant};

use fjord_broker::{Broker, BrokerConfig};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::producer::FutureProducer;
use rdkafka::{Offset, TopicPartitionList};

pub struct TestBroker {
    pub broker: Option<Broker>,
    pub dir: tempfile::TempDir,
    pub bootstrap: String,
}

pub fn config(dir: &std::path::Path, overrides: &[(&str, &str)]) -> BrokerConfig {
    let mut c = BrokerConfig::default();
    c.set("log.dirs", &dir.display().to_string()).unwrap();
    c.set("listeners", "PLAINTEXT://127.0.0.1:0").unwrap();
    c.set("admin.listener", "127.0.0.1:0").unwrap();
    c.set("metrics.listener", "127.0.0.1:0").unwrap();
    for (k, v) in overrides {
        c.set(k, v).unwrap();
    }
    c
}

impl TestBroker {
    pub async fn start(overrides: &[(&str, &str)]) -> TestBroker {
        let dir = tempfile::tempdir().unwrap();
        let broker = Broker::start(config(dir.path(), overrides)).await.unwrap();
        let bootstrap = broker.kafka_addr.to_string();
        TestBroker {
            broker: Some(broker),
            dir,
            bootstrap,
        }
    }

    pub fn broker(&self) -> &Broker {
        self.broker.as_ref().unwrap()
    }

    /// Clean shutdown, then a new broker on the same data (and the same port).
    pub async fn restart(&mut self, overrides: &[(&str, &str)]) {
        let old = self.broker.take().unwrap();
        let addr = old.kafka_addr;
        old.shutdown().await.unwrap();
        let mut all = vec![("listeners", format!("PLAINTEXT://{addr}"))];
        all.extend(overrides.iter().map(|(k, v)| (*k, v.to_string())));
        let refs: Vec<(&str, &str)> = all.iter().map(|(k, v)| (*k, v.as_str())).collect();
        self.broker = Some(Broker::start(config(self.dir.path(), &refs)).await.unwrap());
    }

    pub fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap)
            .set("broker.address.family", "v4");
        c
    }

    pub fn producer(&self, extra: &[(&str, &str)]) -> FutureProducer {
        let mut c = self.client_config();
        c.set("linger.ms", "5").set("message.timeout.ms", "30000");
        for (k, v) in extra {
            c.set(*k, *v);
        }
        c.create().unwrap()
    }

    pub fn consumer(&self, extra: &[(&str, &str)]) -> BaseConsumer {
        let mut c = self.client_config();
        c.set("group.id", "fjord-tests")
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false");
        for (k, v) in extra {
            c.set(*k, *v);
        }
        c.create().unwrap()
    }

    pub fn admin(&self) -> AdminClient<DefaultClientContext> {
        self.client_config().create().unwrap()
    }

    pub async fn create_topic(&self, name: &str, partitions: i32, configs: &[(&str, &str)]) {
        let mut topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
        for (k, v) in configs {
            topic = topic.set(k, v);
        }
        let res = self
            .admin()
            .create_topics(&[topic], &AdminOptions::new())
            .await
            .unwrap();
        res[0].as_ref().unwrap();
    }
}

/// A consumed record, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rec {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub timestamp: Option<i64>,
    pub headers: Vec<(String, Vec<u8>)>,
}

pub fn own(m: &BorrowedMessage<'_>) -> Rec {
    let headers = m
        .headers()
        .map(|h| {
            h.iter()
                .map(|x| (x.key.to_string(), x.value.unwrap_or_default().to_vec()))
                .collect()
        })
        .unwrap_or_default();
    Rec {
        partition: m.partition(),
        offset: m.offset(),
        key: m.key().map(<[u8]>::to_vec),
        value: m.payload().map(<[u8]>::to_vec),
        timestamp: m.timestamp().to_millis(),
        headers,
    }
}

/// Assigns `partitions` of `topic` from `offset` and reads until `count` records
/// arrived or `timeout` passed.
pub fn consume(
    consumer: &BaseConsumer,
    topic: &str,
    partitions: i32,
    offset: Offset,
    count: usize,
    timeout: Duration,
) -> Vec<Rec> {
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, offset).unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    while out.len() < count && Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => out.push(own(&m)),
            Some(Err(e)) => panic!("consume error: {e}"),
            None => {}
        }
    }
    out
}

/// Polls `f` until it returns Some or the timeout passes.
pub async fn eventually<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
