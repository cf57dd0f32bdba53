//! Prometheus metrics, served as OpenMetrics text at `GET /metrics` on the HTTP API.
//!
//! Counters that requests move (requests and their durations per Kafka API, connections,
//! bytes and records produced, bytes fetched) are atomics updated where the work happens;
//! what can be read from the broker's state (topics, partitions, topic sizes, groups,
//! consumer lag, memory) is read when scraped, so it costs nothing between scrapes.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kafka_protocol::messages::ApiKey;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

use super::Broker;
use crate::protocol::versions;

/// Label set of the per-API metrics: `api="Produce"` and so on.
type ApiLabel = [(&'static str, String); 1];

/// Request durations from 0.1 ms to 13 s, doubling.
#[derive(Clone)]
struct DurationBuckets;

impl MetricConstructor<Histogram> for DurationBuckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(exponential_buckets(0.0001, 2.0, 18))
    }
}

/// One API's request counter and duration histogram, kept so that a request updates them
/// without looking its labels up (their clones share the family's values).
struct ApiMetrics {
    requests: Counter,
    duration: Histogram,
}

pub struct Metrics {
    requests: Family<ApiLabel, Counter>,
    durations: Family<ApiLabel, Histogram, DurationBuckets>,
    /// Indexed by API key.
    by_api: Vec<Option<ApiMetrics>>,
    pub connections: Gauge,
    pub connections_accepted: Counter,
    pub produced_records: Counter,
    pub produced_bytes: Counter,
    pub fetched_bytes: Counter,
    started: SystemTime,
}

impl Default for Metrics {
    fn default() -> Self {
        let requests = Family::<ApiLabel, Counter>::default();
        let durations = Family::new_with_constructor(DurationBuckets);
        // Only the APIs served; each gets its series before its first request.
        let mut by_api: Vec<Option<ApiMetrics>> = Vec::new();
        for &(api, _, _) in versions::SUPPORTED {
            let label = [("api", format!("{api:?}"))];
            let index = api as i16 as usize;
            if by_api.len() <= index {
                by_api.resize_with(index + 1, || None);
            }
            by_api[index] = Some(ApiMetrics {
                requests: requests.get_or_create(&label).clone(),
                duration: durations.get_or_create(&label).clone(),
            });
        }
        Metrics {
            requests,
            durations,
            by_api,
            connections: Gauge::default(),
            connections_accepted: Counter::default(),
            produced_records: Counter::default(),
            produced_bytes: Counter::default(),
            fetched_bytes: Counter::default(),
            started: SystemTime::now(),
        }
    }
}

impl Metrics {
    /// Counts one request of `api` that took `elapsed` from its decoding to its answer.
    pub fn request(&self, api: ApiKey, elapsed: Duration) {
        if let Some(Some(metrics)) = self.by_api.get(api as i16 as usize) {
            metrics.requests.inc();
            metrics.duration.observe(elapsed.as_secs_f64());
        }
    }

    /// The OpenMetrics text of every metric, the broker's state read now.
    pub async fn render(&self, broker: &Broker) -> String {
        let mut registry = Registry::default();
        registry.register(
            "shale_requests",
            "Kafka requests answered, by API",
            self.requests.clone(),
        );
        registry.register_with_unit(
            "shale_request_duration",
            "Time from a request's arrival to its answer, by API (fetches include their wait)",
            Unit::Seconds,
            self.durations.clone(),
        );
        registry.register(
            "shale_connections",
            "Open Kafka client connections",
            self.connections.clone(),
        );
        registry.register(
            "shale_connections_accepted",
            "Kafka client connections accepted",
            self.connections_accepted.clone(),
        );
        registry.register(
            "shale_produced_records",
            "Records appended by produce requests",
            self.produced_records.clone(),
        );
        registry.register_with_unit(
            "shale_produced",
            "Record batch bytes appended by produce requests",
            Unit::Bytes,
            self.produced_bytes.clone(),
        );
        registry.register_with_unit(
            "shale_fetched",
            "Record batch bytes answered to fetch requests",
            Unit::Bytes,
            self.fetched_bytes.clone(),
        );
        register_state(&mut registry, broker).await;
        registry.register_with_unit(
            "process_start_time",
            "When the broker started, since the Unix epoch",
            Unit::Seconds,
            gauge(
                self.started
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs() as i64),
            ),
        );
        if let Some(bytes) = resident_memory_bytes() {
            registry.register_with_unit(
                "process_resident_memory",
                "Resident set size of the broker process",
                Unit::Bytes,
                gauge(bytes),
            );
        }
        let mut text = String::new();
        encode(&mut text, &registry).expect("writing to a String cannot fail");
        text
    }
}

fn gauge(value: i64) -> Gauge {
    let gauge = Gauge::default();
    gauge.set(value);
    gauge
}

/// Topics, partitions, topic sizes, groups by state, and each group's lag per committed
/// partition.
async fn register_state(registry: &mut Registry, broker: &Broker) {
    let topics = broker.log.topics();
    let partitions: usize = topics.iter().map(|t| t.partitions.len()).sum();
    registry.register("shale_topics", "Topics", gauge(topics.len() as i64));
    registry.register(
        "shale_partitions",
        "Partitions of all topics",
        gauge(partitions as i64),
    );
    let sizes = Family::<[(&'static str, String); 1], Gauge>::default();
    for topic in &topics {
        let bytes: u64 = topic
            .partitions
            .iter()
            .map(|p| broker.log.partition_bytes(p))
            .sum();
        sizes
            .get_or_create(&[("topic", topic.name.clone())])
            .set(bytes as i64);
    }
    registry.register_with_unit(
        "shale_topic_size",
        "Stored bytes of a topic's partitions, as DescribeLogDirs reports them",
        Unit::Bytes,
        sizes,
    );

    let groups = broker.groups.list().await;
    let by_state = Family::<[(&'static str, &'static str); 1], Gauge>::default();
    for group in &groups {
        by_state
            .get_or_create(&[("state", group.state.name())])
            .inc();
    }
    registry.register(
        "shale_consumer_groups",
        "Consumer groups, by state",
        by_state,
    );

    let lag = Family::<[(&'static str, String); 3], Gauge>::default();
    for group in &groups {
        for (topic, partitions) in broker.groups.committed(&group.group_id, None).await {
            let Some(log) = broker.log.topic(&topic) else {
                continue;
            };
            for (index, committed) in partitions {
                let (Some(committed), Some(partition)) = (committed, log.partition(index)) else {
                    continue;
                };
                let Ok(offsets) = broker.log.offsets(partition).await else {
                    continue;
                };
                let labels = [
                    ("group", group.group_id.clone()),
                    ("topic", topic.clone()),
                    ("partition", index.to_string()),
                ];
                lag.get_or_create(&labels)
                    .set((offsets.high_watermark - committed.offset).max(0));
            }
        }
    }
    registry.register(
        "shale_consumer_group_lag",
        "Records between a group's committed offset and the partition's high watermark",
        lag,
    );
    registry.register_with_unit(
        "shale_fetch_memory_free",
        "Room left in --fetch-memory-bytes",
        Unit::Bytes,
        gauge(broker.fetch_budget.free() as i64),
    );
}

/// The process's resident set, from `/proc/self/statm` (Linux).
fn resident_memory_bytes() -> Option<i64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: i64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf only reads a system constant.
    let page_size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * page_size as i64)
}
