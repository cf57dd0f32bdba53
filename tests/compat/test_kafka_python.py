"""kafka-python 3.0: produce, consume, admin, and its ApiVersions v4 bootstrap."""

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType, NewPartitions, NewTopic
from kafka.errors import (
    InvalidConfigurationError,
    InvalidTopicError,
    TopicAlreadyExistsError,
)


def producer(broker, **config):
    return KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all", **config)


def read(broker, topic, partition, count):
    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=None, consumer_timeout_ms=10_000)
    consumer.assign([TopicPartition(topic, partition)])
    consumer.seek_to_beginning()
    records = []
    for record in consumer:
        records.append(record)
        if len(records) == count:
            break
    consumer.close()
    return records


@pytest.mark.parametrize("codec", [None, "gzip"])
def test_kafka_python_round_trips_records(broker, topic_name, codec):
    p = producer(broker, compression_type=codec, linger_ms=5)
    futures = [
        p.send(topic_name, value=f"v{i}".encode(), key=f"k{i}".encode(), headers=[("h", b"x")], timestamp_ms=1_000 + i)
        for i in range(100)
    ]
    offsets = [f.get(timeout=15).offset for f in futures]
    p.close()
    assert offsets == list(range(100))
    records = read(broker, topic_name, 0, 100)
    assert [(r.offset, r.key, r.value, r.headers, r.timestamp) for r in records] == [
        (i, f"k{i}".encode(), f"v{i}".encode(), [("h", b"x")], 1_000 + i) for i in range(100)
    ]


def test_kafka_python_admin_manages_topics_and_configs(broker, topic_name):
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        admin.create_topics([NewTopic(topic_name, 2, 1, topic_configs={"retention.ms": "60000"})])
        with pytest.raises(TopicAlreadyExistsError):
            admin.create_topics([NewTopic(topic_name, 2, 1)])
        with pytest.raises(InvalidTopicError):
            admin.create_topics([NewTopic("no/slashes", 1, 1)])
        with pytest.raises(InvalidConfigurationError):
            admin.create_topics([NewTopic("bad-config", 1, 1, topic_configs={"cleanup.policy": "shred"})])

        described = admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, topic_name)], config_filter="all"
        )
        entries = described["topic"][topic_name]
        assert entries["retention.ms"]["value"] == "60000"
        assert entries["retention.ms"]["config_source"] == "DYNAMIC_TOPIC_CONFIG"
        assert entries["max.message.bytes"]["value"] == "1048588"
        assert entries["max.message.bytes"]["config_source"] == "DEFAULT_CONFIG"

        admin.create_partitions({topic_name: NewPartitions(3)})
        assert len(admin.describe_topics([topic_name])[0]["partitions"]) == 3
        admin.delete_topics([topic_name])
        assert topic_name not in admin.list_topics()
    finally:
        admin.close()


def test_kafka_python_acl_admin_gets_security_disabled(broker, topic_name):
    from kafka.admin import (
        ACL,
        ACLFilter,
        ACLOperation,
        ACLPermissionType,
        ACLResourcePatternType,
        ResourcePattern,
        ResourcePatternFilter,
        ResourceType,
    )
    from kafka.errors import SecurityDisabledError

    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        everything = ACLFilter(
            principal=None,
            host="*",
            operation=ACLOperation.ANY,
            permission_type=ACLPermissionType.ANY,
            resource_pattern=ResourcePatternFilter(ResourceType.ANY, None, ACLResourcePatternType.ANY),
        )
        with pytest.raises(SecurityDisabledError):
            admin.describe_acls(everything)
        acl = ACL(
            principal="User:alice",
            host="*",
            operation=ACLOperation.READ,
            permission_type=ACLPermissionType.ALLOW,
            resource_pattern=ResourcePattern(ResourceType.TOPIC, topic_name),
        )
        # kafka-python lists each refused ACL's error type.
        assert admin.create_acls([acl]) == {"succeeded": [], "failed": [SecurityDisabledError]}
    finally:
        admin.close()


def test_kafka_python_consumer_sees_offsets_and_end(broker, topic_name):
    p = producer(broker)
    for i in range(5):
        p.send(topic_name, value=b"x", partition=0)
    p.flush()
    p.close()
    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=None)
    tp = TopicPartition(topic_name, 0)
    assert consumer.beginning_offsets([tp]) == {tp: 0}
    assert consumer.end_offsets([tp]) == {tp: 5}
    consumer.close()
