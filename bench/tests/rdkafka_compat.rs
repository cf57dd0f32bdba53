//! The `rdkafka` crate (librdkafka through Rust, with its async producer and stream
//! consumer on tokio) against a real broker: the release `shale` binary beside this test's,
//! on a free port with a fresh data folder. Asserts on what the crate's user sees.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

/// A broker process, killed when dropped.
struct Broker {
    process: Child,
    bootstrap: String,
    _data: tempfile::TempDir,
}

impl Broker {
    fn start() -> Broker {
        // Tests run from target/<profile>/deps; the binary is one folder up.
        let exe = std::env::current_exe().expect("test binary path");
        let shale = exe
            .parent()
            .and_then(|deps| deps.parent())
            .expect("target folder")
            .join("shale");
        let data = tempfile::tempdir().expect("data folder");
        let mut process = Command::new(&shale)
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data.path())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e} (build it first)", shale.display()));
        let mut lines = BufReader::new(process.stderr.take().expect("stderr")).lines();
        let bootstrap = loop {
            let line = lines
                .next()
                .expect("the broker exited before listening")
                .expect("broker log");
            if let Some(rest) = line.split("Shale listening on ").nth(1) {
                break rest.split_whitespace().next().expect("address").to_string();
            }
        };
        // Keep draining the log so the broker never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Broker {
            process,
            bootstrap,
            _data: data,
        }
    }

    fn config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.bootstrap);
        config
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

async fn create_topic(broker: &Broker, name: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = broker.config().create().expect("admin");
    let results = admin
        .create_topics(
            &[NewTopic::new(name, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .expect("create topics");
    assert_eq!(results, vec![Ok(name.to_string())]);
}

#[test]
fn future_producer_and_stream_consumer_in_a_group() {
    let broker = Broker::start();
    runtime().block_on(async {
        create_topic(&broker, "orders", 2).await;
        let producer: FutureProducer = broker
            .config()
            .set("acks", "all")
            .create()
            .expect("producer");
        let mut delivered = Vec::new();
        for i in 0..10 {
            let key = format!("key-{}", i % 2);
            let value = format!("order-{i}");
            let headers = OwnedHeaders::new().insert(Header {
                key: "n",
                value: Some(&i.to_string()),
            });
            let record = FutureRecord::to("orders")
                .key(&key)
                .payload(&value)
                .headers(headers)
                .partition(i % 2);
            let delivery = producer
                .send(record, Duration::from_secs(10))
                .await
                .expect("delivered");
            delivered.push((delivery.partition, delivery.offset));
        }
        let expected: Vec<(i32, i64)> = (0..10).map(|i| (i % 2, i64::from(i / 2))).collect();
        assert_eq!(delivered, expected);

        let consumer: StreamConsumer = broker
            .config()
            .set("group.id", "order-readers")
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .create()
            .expect("consumer");
        consumer.subscribe(&["orders"]).expect("subscribe");
        let mut seen = Vec::new();
        while seen.len() < 10 {
            let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
                .await
                .expect("a message within 30 s")
                .expect("no consumer error");
            let header = message.headers().expect("headers").get(0);
            seen.push((
                message.partition(),
                message.offset(),
                String::from_utf8(message.key().expect("key").to_vec()).unwrap(),
                String::from_utf8(message.payload().expect("value").to_vec()).unwrap(),
                (header.key.to_string(), header.value.map(|v| v.to_vec())),
            ));
        }
        seen.sort();
        let wanted: Vec<_> = (0..10)
            .map(|i| {
                (
                    i % 2,
                    i64::from(i / 2),
                    format!("key-{}", i % 2),
                    format!("order-{i}"),
                    ("n".to_string(), Some(i.to_string().into_bytes())),
                )
            })
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        assert_eq!(seen, wanted);
        consumer
            .commit_consumer_state(CommitMode::Sync)
            .expect("commit");
        let committed = consumer
            .committed(Duration::from_secs(10))
            .expect("committed offsets");
        let mut positions: Vec<(i32, Offset)> = committed
            .elements()
            .iter()
            .map(|e| (e.partition(), e.offset()))
            .collect();
        positions.sort_by_key(|(p, _)| *p);
        assert_eq!(
            positions,
            vec![(0, Offset::Offset(5)), (1, Offset::Offset(5))]
        );
    });
}

#[test]
fn transactional_producer_and_read_committed_consumer() {
    let broker = Broker::start();
    runtime().block_on(create_topic(&broker, "ledger", 1));
    let producer: BaseProducer = broker
        .config()
        .set("transactional.id", "ledger-writer")
        .create()
        .expect("producer");
    let timeout = Duration::from_secs(10);
    producer.init_transactions(timeout).expect("init");
    for (values, commit) in [(["a", "b"], true), (["x", "y"], false), (["c", "d"], true)] {
        producer.begin_transaction().expect("begin");
        for value in values {
            producer
                .send(BaseRecord::<(), str>::to("ledger").payload(value))
                .expect("queued");
        }
        // A BaseProducer serves its delivery reports when polled; flushing does that.
        producer.flush(timeout).expect("flush");
        if commit {
            producer.commit_transaction(timeout).expect("commit");
        } else {
            producer.abort_transaction(timeout).expect("abort");
        }
    }

    let read = |isolation: &str, count: usize| -> Vec<(i64, String)> {
        let consumer: BaseConsumer = broker
            .config()
            .set("group.id", "unused")
            .set("isolation.level", isolation)
            .create()
            .expect("consumer");
        let mut assignment = TopicPartitionList::new();
        assignment
            .add_partition_offset("ledger", 0, Offset::Beginning)
            .expect("assignment");
        consumer.assign(&assignment).expect("assign");
        let mut seen = Vec::new();
        while seen.len() < count {
            let message = consumer
                .poll(Duration::from_secs(30))
                .expect("a message within 30 s")
                .expect("no consumer error");
            let value = String::from_utf8(message.payload().expect("value").to_vec()).unwrap();
            seen.push((message.offset(), value));
        }
        seen
    };
    // 0-1 committed, 2 marker, 3-4 aborted, 5 marker, 6-7 committed, 8 marker.
    let committed = read("read_committed", 4);
    assert_eq!(
        committed,
        [(0, "a"), (1, "b"), (6, "c"), (7, "d")].map(|(o, v)| (o, v.to_string()))
    );
    let everything = read("read_uncommitted", 6);
    assert_eq!(
        everything.iter().map(|(o, _)| *o).collect::<Vec<_>>(),
        [0, 1, 3, 4, 6, 7]
    );
}
