"""confluent-kafka (librdkafka 2.16): records, codecs, limits, offsets, admin."""

import threading
import time

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import (
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewPartitions,
    NewTopic,
    ResourceType,
)

from clients import admin, consume, create_topic, produce


@pytest.mark.parametrize("codec", ["none", "gzip", "snappy", "lz4", "zstd"])
def test_records_round_trip_exactly(broker, topic_name, codec):
    create_topic(broker.bootstrap, topic_name, partitions=3)
    sent = [
        (
            i % 3,
            f"key-{i}".encode(),
            (f"value-{i}-" + "v" * (i * 7 % 300)).encode(),
            [("trace", f"t{i}".encode()), ("dup", b"1"), ("dup", b"2")],
            1_700_000_000_000 + i,
        )
        for i in range(300)
    ]
    reports = produce(broker.bootstrap, topic_name, sent, **{"compression.type": codec})
    assert all(err is None for *_, err in reports)
    for partition in range(3):
        expected = [m for m in sent if m[0] == partition]
        got = consume(broker.bootstrap, topic_name, partition, len(expected))
        assert [m.offset() for m in got] == list(range(len(expected)))
        assert [(m.key(), m.value(), m.headers(), m.timestamp()[1]) for m in got] == [
            (key, value, headers, ts) for _, key, value, headers, ts in expected
        ]


def test_null_keys_and_values_round_trip(broker, topic_name):
    create_topic(broker.bootstrap, topic_name)
    produce(broker.bootstrap, topic_name, [(0, None, b"v", None, None), (0, b"k", None, None, None)])
    got = consume(broker.bootstrap, topic_name, 0, 2)
    assert [(m.key(), m.value()) for m in got] == [(None, b"v"), (b"k", None)]


def test_messages_over_max_message_bytes_are_rejected(broker, topic_name):
    create_topic(broker.bootstrap, topic_name)
    big = b"x" * 900_000
    reports = produce(broker.bootstrap, topic_name, [(0, None, big, None, None)])
    assert reports[0][3] is None
    too_big = produce(
        broker.bootstrap,
        topic_name,
        [(0, None, b"y" * 1_500_000, None, None)],
        **{"message.max.bytes": 3_000_000, "compression.type": "none"},
    )
    assert too_big[0][3].code() == KafkaError.MSG_SIZE_TOO_LARGE
    got = consume(broker.bootstrap, topic_name, 0, 1)
    assert got[0].value() == big


def test_topic_max_message_bytes_is_enforced(broker, topic_name):
    create_topic(broker.bootstrap, topic_name, config={"max.message.bytes": "2000"})
    plain = {"compression.type": "none"}
    too_big = produce(broker.bootstrap, topic_name, [(0, None, b"z" * 5000, None, None)], **plain)
    assert too_big[0][3].code() == KafkaError.MSG_SIZE_TOO_LARGE
    small = produce(broker.bootstrap, topic_name, [(0, None, b"small", None, None)], **plain)
    assert small[0][3] is None and small[0][1] == 0


def test_consumer_waiting_at_the_end_is_woken_by_a_produce(broker, topic_name):
    create_topic(broker.bootstrap, topic_name)
    consumer = Consumer(
        {
            "bootstrap.servers": broker.bootstrap,
            "group.id": "unused",
            "enable.auto.commit": False,
            # If the broker only answered at the max wait, the message would take 20 s.
            "fetch.wait.max.ms": 20_000,
        }
    )
    consumer.assign([TopicPartition(topic_name, 0, 0)])
    assert consumer.poll(1.0) is None
    received = {}

    def wait_for_message():
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            msg = consumer.poll(0.1)
            if msg is not None and msg.error() is None:
                received["at"] = time.monotonic()
                received["value"] = msg.value()
                return

    waiter = threading.Thread(target=wait_for_message)
    waiter.start()
    time.sleep(0.5)
    sent_at = time.monotonic()
    produce(broker.bootstrap, topic_name, [(0, None, b"wake up", None, None)])
    waiter.join()
    consumer.close()
    assert received["value"] == b"wake up"
    assert received["at"] - sent_at < 10, "fetch was answered by its timeout, not the append"


def test_list_offsets_earliest_latest_and_by_timestamp(broker, topic_name):
    create_topic(broker.bootstrap, topic_name)
    produce(
        broker.bootstrap,
        topic_name,
        [(0, None, f"m{i}".encode(), None, 1_000 * (i + 1)) for i in range(10)],
        **{"linger.ms": 0, "max.in.flight": 1},
    )
    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "unused"})
    try:
        assert consumer.get_watermark_offsets(TopicPartition(topic_name, 0), timeout=10) == (0, 10)
        queries = [TopicPartition(topic_name, 0, ts) for ts in (1_000, 5_500, 10_000, 50_000)]
        found = [
            consumer.offsets_for_times([q], timeout=10)[0].offset for q in queries
        ]
        assert found == [0, 5, 9, -1]
    finally:
        consumer.close()


def test_admin_creates_describes_alters_and_deletes_topics(broker, topic_name):
    client = admin(broker.bootstrap)
    futures = client.create_topics(
        [NewTopic(topic_name, 2, 1, config={"retention.ms": "1000", "cleanup.policy": "compact"})]
    )
    futures[topic_name].result(15)

    resource = ConfigResource(ResourceType.TOPIC, topic_name)
    configs = client.describe_configs([resource])[resource].result(15)
    assert configs["retention.ms"].value == "1000"
    assert not configs["retention.ms"].is_default
    assert configs["cleanup.policy"].value == "compact"
    assert configs["segment.ms"].value == "604800000"
    assert configs["segment.ms"].is_default

    alter = ConfigResource(
        ResourceType.TOPIC,
        topic_name,
        incremental_configs=[
            ConfigEntry("retention.ms", "2000", incremental_operation=AlterConfigOpType.SET),
            ConfigEntry("cleanup.policy", None, incremental_operation=AlterConfigOpType.DELETE),
        ],
    )
    client.incremental_alter_configs([alter])[alter].result(15)
    configs = client.describe_configs([resource])[resource].result(15)
    assert configs["retention.ms"].value == "2000"
    assert configs["cleanup.policy"].value == "delete"
    assert configs["cleanup.policy"].is_default

    client.create_partitions([NewPartitions(topic_name, 4)])[topic_name].result(15)
    assert len(client.list_topics(timeout=10).topics[topic_name].partitions) == 4

    client.delete_topics([topic_name])[topic_name].result(15)
    assert topic_name not in client.list_topics(timeout=10).topics


def _error_of(future):
    with pytest.raises(KafkaException) as raised:
        future.result(15)
    return raised.value.args[0].code()


def test_admin_errors_carry_kafka_error_codes(broker, topic_name):
    client = admin(broker.bootstrap)
    create_topic(broker.bootstrap, topic_name)
    cases = {
        topic_name: (NewTopic(topic_name, 1, 1), KafkaError.TOPIC_ALREADY_EXISTS),
        "bad name!": (NewTopic("bad name!", 1, 1), KafkaError.TOPIC_EXCEPTION),
        "unknown-config": (
            NewTopic("unknown-config", 1, 1, config={"no.such.thing": "1"}),
            KafkaError.INVALID_CONFIG,
        ),
        "bad-value": (NewTopic("bad-value", 1, 1, config={"retention.ms": "soon"}), KafkaError.INVALID_CONFIG),
        "three-replicas": (NewTopic("three-replicas", 1, 3), KafkaError.INVALID_REPLICATION_FACTOR),
    }
    for name, (new_topic, code) in cases.items():
        assert _error_of(client.create_topics([new_topic])[name]) == code, name
    assert "bad-value" not in client.list_topics(timeout=10).topics

    shrink = client.create_partitions([NewPartitions(topic_name, 1)])[topic_name]
    assert _error_of(shrink) == KafkaError.INVALID_PARTITIONS
    missing = client.delete_topics(["no-such-topic"])["no-such-topic"]
    assert _error_of(missing) == KafkaError.UNKNOWN_TOPIC_OR_PART
    bad = ConfigResource(
        ResourceType.TOPIC,
        topic_name,
        incremental_configs=[ConfigEntry("retention.ms", "-7", incremental_operation=AlterConfigOpType.SET)],
    )
    assert _error_of(client.incremental_alter_configs([bad])[bad]) == KafkaError.INVALID_CONFIG


def test_describe_cluster_and_broker_configs(broker):
    client = admin(broker.bootstrap)
    cluster = client.describe_cluster().result(15)
    assert cluster.cluster_id
    assert [(n.id, n.host, n.port) for n in cluster.nodes] == [(0, "127.0.0.1", broker.port)]
    resource = ConfigResource(ResourceType.BROKER, "0")
    configs = client.describe_configs([resource])[resource].result(15)
    assert configs["auto.create.topics.enable"].value == "true"
    assert configs["num.partitions"].value == "1"
    assert configs["producer.id.expiration.ms"].value == "86400000"
    assert configs["transactional.id.expiration.ms"].value == "604800000"
    assert configs["offsets.retention.minutes"].value == "10080"


def test_authorized_operations_are_every_operation_without_an_authorizer(broker, topic_name):
    from confluent_kafka import TopicCollection
    from confluent_kafka.admin import AclOperation

    client = admin(broker.bootstrap)
    create_topic(broker.bootstrap, topic_name)
    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "ops-" + topic_name})
    consumer.subscribe([topic_name])
    consumer.poll(3)
    try:
        topic = client.describe_topics(TopicCollection([topic_name]), include_authorized_operations=True)
        cluster = client.describe_cluster(include_authorized_operations=True).result(15)
        groups = client.describe_consumer_groups(["ops-" + topic_name], include_authorized_operations=True)
        topic_ops = set(topic[topic_name].result(15).authorized_operations)
        group_ops = set(groups["ops-" + topic_name].result(15).authorized_operations)
    finally:
        consumer.close()
    op = AclOperation
    assert topic_ops == {
        op.READ, op.WRITE, op.CREATE, op.DESCRIBE, op.DELETE, op.ALTER, op.DESCRIBE_CONFIGS, op.ALTER_CONFIGS
    }
    assert set(cluster.authorized_operations) == {
        op.CREATE, op.CLUSTER_ACTION, op.DESCRIBE_CONFIGS, op.ALTER_CONFIGS, op.IDEMPOTENT_WRITE, op.ALTER, op.DESCRIBE
    }
    assert group_ops == {op.READ, op.DESCRIBE, op.DELETE}
    # Not asked for, not given.
    assert client.describe_cluster().result(15).authorized_operations is None


def test_leader_elections_are_never_needed_on_one_broker(broker, topic_name):
    from confluent_kafka import ElectionType

    client = admin(broker.bootstrap)
    create_topic(broker.bootstrap, topic_name, partitions=2)
    asked = [TopicPartition(topic_name, 0), TopicPartition(topic_name, 1), TopicPartition(topic_name, 7)]
    for election in (ElectionType.PREFERRED, ElectionType.UNCLEAN):
        results = client.elect_leaders(election, asked).result(15)
        assert {(tp.partition, err.name() if err else None) for tp, err in results.items()} == {
            (0, "ELECTION_NOT_NEEDED"),
            (1, "ELECTION_NOT_NEEDED"),
            (7, "UNKNOWN_TOPIC_OR_PART"),
        }
    # Every partition: none needed an election, so none is listed.
    assert client.elect_leaders(ElectionType.PREFERRED, None).result(15) == {}


def test_admin_list_offsets_including_max_timestamp(broker, topic_name):
    from confluent_kafka.admin import OffsetSpec

    create_topic(broker.bootstrap, topic_name)
    timestamps = [5_000, 9_000, 7_000, 9_000, 1_000]
    produce(
        broker.bootstrap,
        topic_name,
        [(0, None, f"m{i}".encode(), None, ts) for i, ts in enumerate(timestamps)],
        **{"linger.ms": 0, "max.in.flight": 1},
    )
    client = admin(broker.bootstrap)
    tp = TopicPartition(topic_name, 0)
    specs = {
        "earliest": OffsetSpec.earliest(),
        "latest": OffsetSpec.latest(),
        "max": OffsetSpec.max_timestamp(),
        "at 6000": OffsetSpec.for_timestamp(6_000),
    }
    found = {name: client.list_offsets({tp: spec})[tp].result(15) for name, spec in specs.items()}
    assert found["earliest"].offset == 0
    assert found["latest"].offset == 5
    assert (found["max"].offset, found["max"].timestamp) == (1, 9_000)
    assert (found["at 6000"].offset, found["at 6000"].timestamp) == (1, 9_000)


def test_a_batch_larger_than_the_fetch_limits_is_still_delivered(broker, topic_name):
    create_topic(broker.bootstrap, topic_name)
    big = b"b" * 500_000
    produce(broker.bootstrap, topic_name, [(0, None, big, None, None), (0, None, b"next", None, None)],
            **{"compression.type": "none", "linger.ms": 0, "max.in.flight": 1})
    got = consume(
        broker.bootstrap,
        topic_name,
        0,
        2,
        **{"max.partition.fetch.bytes": 1000, "fetch.max.bytes": 1000, "message.max.bytes": 1000},
    )
    assert [m.value() for m in got] == [big, b"next"]


def test_pipelined_produce_requests_keep_their_order(broker, topic_name):
    """librdkafka keeps several produce requests in flight on one connection (not idempotent
    here, so nothing on the broker re-checks sequences): the partition must hold the records
    in the order they were sent."""
    create_topic(broker.bootstrap, topic_name)
    producer = Producer({
        "bootstrap.servers": broker.bootstrap, "acks": "all", "linger.ms": 0,
        "batch.num.messages": 5, "max.in.flight.requests.per.connection": 20,
    })
    count = 20_000
    for i in range(count):
        while True:
            try:
                producer.produce(topic_name, value=str(i).encode())
                break
            except BufferError:
                producer.poll(0.01)
        if i % 500 == 0:
            producer.poll(0)
    assert producer.flush(60) == 0
    got = [int(m.value()) for m in consume(broker.bootstrap, topic_name, 0, count)]
    assert len(got) == count
    out_of_order = [(a, b) for a, b in zip(got, got[1:]) if b != a + 1]
    assert out_of_order == [], f"{len(out_of_order)} places out of order, first {out_of_order[:5]}"


SMALL_FETCHES = {"max.partition.fetch.bytes": 4096, "fetch.max.bytes": 8192, "message.max.bytes": 8192}


def _sent(partition, i):
    return f"{partition}-{i:06d}".encode().ljust(100, b".")


def test_consumers_catching_up_in_small_fetches_get_every_record_in_order(broker, topic_name):
    """A backlog spread over several segments, read in small fetches (each one's successor is
    read ahead by the broker) by two consumers at once while more records are appended:
    each gets every record once, in order."""
    create_topic(broker.bootstrap, topic_name, partitions=2, config={"segment.bytes": "20000"})
    backlog, more = 3000, 1000
    small_batches = {"linger.ms": 0, "batch.num.messages": 20}
    produce(broker.bootstrap, topic_name,
            [(p, None, _sent(p, i), None, None) for i in range(backlog) for p in (0, 1)],
            **small_batches)
    appending = threading.Thread(target=produce, args=(
        broker.bootstrap, topic_name,
        [(p, None, _sent(p, i), None, None) for i in range(backlog, backlog + more) for p in (0, 1)],
    ), kwargs=small_batches)
    got = {}

    def read(partition):
        got[partition] = consume(broker.bootstrap, topic_name, partition, backlog + more,
                                 timeout=60, **SMALL_FETCHES)

    readers = [threading.Thread(target=read, args=(p,)) for p in (0, 1)]
    appending.start()
    for reader in readers:
        reader.start()
    for thread in [appending, *readers]:
        thread.join()
    for partition in (0, 1):
        messages = got[partition]
        assert [m.offset() for m in messages] == list(range(backlog + more))
        assert [m.value() for m in messages] == [_sent(partition, i) for i in range(backlog + more)]


def consume_partitions(bootstrap, topic, partitions, count, **config):
    """One consumer assigned `partitions` partitions from offset 0 (so each fetch asks for
    all of them) reads `count` records of each; returns (offset, value) lists by partition."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "unused",
                         "enable.auto.commit": False, **config})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    got = {p: [] for p in range(partitions)}
    deadline = time.monotonic() + 60
    try:
        while sum(map(len, got.values())) < partitions * count and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            assert msg.error() is None, msg.error()
            got[msg.partition()].append((msg.offset(), msg.value()))
    finally:
        consumer.close()
    return got


@pytest.mark.parametrize("fetches", [{}, SMALL_FETCHES], ids=["limits-fit", "limits-exceed"])
def test_one_consumer_of_many_partitions_gets_each_its_own_records(broker, topic_name, fetches):
    """Each partition of a fetch asking for many gets its own records, whole and in order,
    whether their limits fit in the response's or are cut to what it has left."""
    partitions, count = 6, 400
    create_topic(broker.bootstrap, topic_name, partitions=partitions)
    produce(broker.bootstrap, topic_name,
            [(p, None, _sent(p, i), None, None) for i in range(count) for p in range(partitions)],
            **{"linger.ms": 0, "batch.num.messages": 50})
    got = consume_partitions(broker.bootstrap, topic_name, partitions, count, **fetches)
    for p in range(partitions):
        assert got[p] == [(i, _sent(p, i)) for i in range(count)]


def test_acl_requests_get_security_disabled_as_from_kafka_without_an_authorizer(broker, topic_name):
    from confluent_kafka.admin import (
        AclBinding,
        AclBindingFilter,
        AclOperation,
        AclPermissionType,
        ResourcePatternType,
    )

    client = admin(broker.bootstrap)
    binding = AclBinding(
        ResourceType.TOPIC, topic_name, ResourcePatternType.LITERAL, "User:alice", "*",
        AclOperation.READ, AclPermissionType.ALLOW,
    )
    every = AclBindingFilter(
        ResourceType.ANY, None, ResourcePatternType.ANY, None, None, AclOperation.ANY, AclPermissionType.ANY
    )
    # librdkafka reports no ACLs for the describe, and the error for each creation and filter.
    assert client.describe_acls(every).result(15) == []
    for future in (client.create_acls([binding])[binding], client.delete_acls([every])[every]):
        with pytest.raises(KafkaException) as raised:
            future.result(15)
        assert raised.value.args[0].code() == KafkaError.SECURITY_DISABLED
        assert raised.value.args[0].str() == "No Authorizer is configured."
