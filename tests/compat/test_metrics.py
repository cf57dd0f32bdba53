"""Prometheus metrics at `GET /metrics` on the HTTP API, read with the Prometheus Python
client's OpenMetrics parser: request counts and durations per Kafka API, connections,
bytes and records produced and fetched, topics, groups and consumer lag."""

import base64
import urllib.error
import urllib.request

from confluent_kafka import Consumer, TopicPartition
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from clients import create_topic, produce
from test_http import http_broker


def scrape(base, headers=None):
    """{(sample name, sorted labels): value} of one scrape, which must parse as OpenMetrics."""
    request = urllib.request.Request(base + "/metrics", headers=headers or {})
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.headers["Content-Type"].startswith("application/openmetrics-text; version=1.0.0")
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_metrics_count_requests_traffic_and_consumer_lag(make_broker, topic_name):
    broker, base = http_broker(make_broker)
    before = scrape(base)
    assert before[("shale_topics", ())] == 0
    assert before[("shale_produced_records_total", ())] == 0
    assert before[("process_resident_memory_bytes", ())] > 1 << 20

    create_topic(broker.bootstrap, topic_name, partitions=2)
    reports = produce(broker.bootstrap, topic_name, [(0, None, b"x" * 100, None, None)] * 10)
    assert [err for *_, err in reports] == [None] * 10
    consumer = Consumer(
        {"bootstrap.servers": broker.bootstrap, "group.id": "lagging", "enable.auto.commit": False}
    )
    consumer.assign([TopicPartition(topic_name, 0, 0)])
    read = [consumer.poll(10) for _ in range(4)]
    assert [m.offset() for m in read] == [0, 1, 2, 3]
    consumer.commit(offsets=[TopicPartition(topic_name, 0, 4)], asynchronous=False)

    after = scrape(base)
    consumer.close()
    assert after[("shale_topics", ())] == 1
    assert after[("shale_partitions", ())] == 2
    assert after[("shale_produced_records_total", ())] == 10
    # Ten 100-byte values in batches of at least 61 header bytes and 7 per record.
    assert 10 * (100 + 7) + 61 <= after[("shale_produced_bytes_total", ())] < 10 * (100 + 7) + 61 * 10
    assert after[("shale_fetched_bytes_total", ())] >= after[("shale_produced_bytes_total", ())]
    stored = after[("shale_topic_size_bytes", (("topic", topic_name),))]
    assert stored == after[("shale_produced_bytes_total", ())]
    lag = ("shale_consumer_group_lag", (("group", "lagging"), ("partition", "0"), ("topic", topic_name)))
    assert after[lag] == 6
    assert after[("shale_consumer_groups", (("state", "Empty"),))] == 1
    produce_requests = after[("shale_requests_total", (("api", "Produce"),))]
    assert produce_requests >= 1
    assert after[("shale_request_duration_seconds_count", (("api", "Produce"),))] == produce_requests
    assert after[("shale_requests_total", (("api", "OffsetCommit"),))] == 1
    assert after[("shale_requests_total", (("api", "Fetch"),))] >= 1
    assert after[("shale_connections_accepted_total", ())] >= 3
    assert after[("shale_connections", ())] >= 1  # the consumer's, still open


def test_metrics_ask_for_credentials_when_the_broker_has_users(make_broker):
    broker, base = http_broker(make_broker, "--sasl-users", "ops:ops-secret")
    try:
        scrape(base)
        raise AssertionError("scraped without credentials")
    except urllib.error.HTTPError as error:
        assert error.code == 401
    credentials = base64.b64encode(b"ops:ops-secret").decode()
    assert scrape(base, {"Authorization": f"Basic {credentials}"})[("shale_topics", ())] == 0
