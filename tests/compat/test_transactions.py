"""Transactions (exactly-once): transactional producers of librdkafka and kafka-python,
read_committed consumers (librdkafka's and kcat's default), consume-transform-produce with
offsets in the transaction, fencing, timeouts, and kill -9 in the middle of a transaction."""

import struct
import subprocess
import time

import pytest
from confluent_kafka import (
    Consumer,
    ConsumerGroupTopicPartitions,
    IsolationLevel,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import OffsetSpec

from clients import admin, create_topic, produce
import wire


def txn_producer(bootstrap, transactional_id, **config):
    producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": transactional_id, "linger.ms": 5, **config})
    producer.init_transactions(15)
    return producer


def read_all(bootstrap, topic, partitions, isolation, expect=None, timeout=6, **config):
    """Everything a consumer with `isolation` reads from the start of `partitions`:
    (partition, offset, value) tuples. Stops early once `expect` records arrived."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "reader",
            "enable.auto.commit": False,
            "isolation.level": isolation,
            **config,
        }
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    got = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and (expect is None or len(got) < expect):
            msg = consumer.poll(0.2)
            if msg is None or msg.error():
                continue
            got.append((msg.partition(), msg.offset(), msg.value()))
    finally:
        consumer.close()
    return got


def values(records):
    return sorted(v for _, _, v in records)


def latest_offsets(bootstrap, topic, partition):
    """(read_uncommitted latest, read_committed latest) from ListOffsets."""
    client = admin(bootstrap)
    tp = TopicPartition(topic, partition)
    result = []
    for level in (IsolationLevel.READ_UNCOMMITTED, IsolationLevel.READ_COMMITTED):
        futures = client.list_offsets({tp: OffsetSpec.latest()}, isolation_level=level)
        result.append(futures[tp].result(10).offset)
    return tuple(result)


def test_committed_and_aborted_transactions_across_topics(broker, topic_name):
    other = topic_name + "-b"
    create_topic(broker.bootstrap, topic_name, partitions=2)
    create_topic(broker.bootstrap, other)
    producer = txn_producer(broker.bootstrap, "tx-" + topic_name)

    producer.begin_transaction()
    for i in range(10):
        producer.produce(topic_name, value=f"c{i}".encode(), partition=i % 2)
    producer.produce(other, value=b"c-other")
    producer.commit_transaction(15)

    producer.begin_transaction()
    for i in range(10):
        producer.produce(topic_name, value=f"a{i}".encode(), partition=i % 2)
    producer.produce(other, value=b"a-other")
    producer.flush(15)
    producer.abort_transaction(15)

    producer.begin_transaction()
    producer.produce(topic_name, value=b"last", partition=0)
    producer.commit_transaction(15)

    committed = [f"c{i}".encode() for i in range(10)] + [b"last"]
    aborted = [f"a{i}".encode() for i in range(10)]
    got = read_all(broker.bootstrap, topic_name, [0, 1], "read_committed", expect=11)
    assert values(got) == sorted(committed)
    # Offsets stay dense under the markers: the aborted batch and two markers sit between.
    assert [o for p, o, v in got if p == 0] == [0, 1, 2, 3, 4, 12]
    everything = read_all(broker.bootstrap, topic_name, [0, 1], "read_uncommitted", expect=21)
    assert values(everything) == sorted(committed + aborted)
    assert values(read_all(broker.bootstrap, other, [0], "read_committed", expect=1, timeout=3)) == [b"c-other"]
    assert latest_offsets(broker.bootstrap, topic_name, 0) == (14, 14)


def test_read_committed_waits_for_the_commit(broker, topic_name):
    create_topic(broker.bootstrap, topic_name)
    produce(broker.bootstrap, topic_name, [(0, None, b"before", None, None)])
    producer = txn_producer(broker.bootstrap, "tx-" + topic_name)
    producer.begin_transaction()
    for i in range(5):
        producer.produce(topic_name, value=f"open{i}".encode())
    producer.flush(15)

    # The open transaction's records are durable but not stable.
    assert latest_offsets(broker.bootstrap, topic_name, 0) == (6, 1)
    assert values(read_all(broker.bootstrap, topic_name, [0], "read_committed", timeout=3)) == [b"before"]
    assert len(read_all(broker.bootstrap, topic_name, [0], "read_uncommitted", expect=6)) == 6
    # kcat reads committed data only (librdkafka's default isolation level).
    kcat = subprocess.run(
        ["kcat", "-b", broker.bootstrap, "-C", "-t", topic_name, "-e", "-q", "-f", "%s\\n"],
        capture_output=True, text=True, timeout=30,
    )
    assert kcat.stdout.split() == ["before"]

    producer.commit_transaction(15)
    got = read_all(broker.bootstrap, topic_name, [0], "read_committed", expect=6)
    assert values(got) == sorted([b"before"] + [f"open{i}".encode() for i in range(5)])
    assert latest_offsets(broker.bootstrap, topic_name, 0) == (7, 7)


def test_a_waiting_read_committed_consumer_gets_records_at_commit(broker, topic_name):
    create_topic(broker.bootstrap, topic_name)
    consumer = Consumer(
        {"bootstrap.servers": broker.bootstrap, "group.id": "tail", "isolation.level": "read_committed"}
    )
    consumer.assign([TopicPartition(topic_name, 0, 0)])
    consumer.poll(1)
    producer = txn_producer(broker.bootstrap, "tx-" + topic_name)
    producer.begin_transaction()
    producer.produce(topic_name, value=b"x")
    producer.flush(15)
    assert consumer.poll(1.5) is None
    producer.commit_transaction(15)
    msg = consumer.poll(10)
    consumer.close()
    assert msg is not None and msg.error() is None and msg.value() == b"x"


def consume_transform_produce(bootstrap, source, sink, group, transactional_id, batch, crash=False):
    """Reads up to `batch` records of `source` in `group`, writes them upper-cased to `sink`
    and commits the consumer offsets in the same transaction. With `crash`, stops without
    committing or aborting, like a process that died."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
        }
    )
    consumer.subscribe([source])
    producer = txn_producer(bootstrap, transactional_id)
    producer.begin_transaction()
    taken = 0
    deadline = time.monotonic() + 20
    while taken < batch and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is None or msg.error():
            continue
        producer.produce(sink, value=msg.value().upper())
        taken += 1
    if crash:
        producer.flush(15)
        consumer.close()
        return taken
    producer.send_offsets_to_transaction(consumer.position(consumer.assignment()), consumer.consumer_group_metadata(), 15)
    producer.commit_transaction(15)
    consumer.close()
    return taken


def test_consume_transform_produce_is_exactly_once_across_a_crash(broker, topic_name):
    source, sink, group = topic_name + "-in", topic_name + "-out", "etl-" + topic_name
    create_topic(broker.bootstrap, source)
    create_topic(broker.bootstrap, sink)
    produce(broker.bootstrap, source, [(0, None, f"m{i}".encode(), None, None) for i in range(30)])
    txn_id = "etl-" + topic_name

    assert consume_transform_produce(broker.bootstrap, source, sink, group, txn_id, 10) == 10
    # The next instance processes 10 more and dies before committing.
    assert consume_transform_produce(broker.bootstrap, source, sink, group, txn_id, 10, crash=True) == 10
    # Its replacement fences it (aborting its output), resumes from the committed offset.
    assert consume_transform_produce(broker.bootstrap, source, sink, group, txn_id, 20) == 20

    out = read_all(broker.bootstrap, sink, [0], "read_committed", expect=30)
    assert values(out) == sorted(f"M{i}".encode() for i in range(30))
    assert len(read_all(broker.bootstrap, sink, [0], "read_uncommitted", expect=40)) == 40
    client = admin(broker.bootstrap)
    committed = client.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])[group].result(10)
    assert [tp.offset for tp in committed.topic_partitions] == [30]


def test_a_second_producer_with_the_same_transactional_id_fences_the_first(broker, topic_name):
    create_topic(broker.bootstrap, topic_name)
    first = txn_producer(broker.bootstrap, "tx-" + topic_name)
    first.begin_transaction()
    first.produce(topic_name, value=b"zombie")
    first.flush(15)

    second = txn_producer(broker.bootstrap, "tx-" + topic_name)
    second.begin_transaction()
    second.produce(topic_name, value=b"winner")
    second.commit_transaction(15)

    with pytest.raises(KafkaException) as raised:
        first.produce(topic_name, value=b"late")
        first.commit_transaction(10)
    assert raised.value.args[0].fatal() and raised.value.args[0].code() == KafkaError._FENCED
    got = read_all(broker.bootstrap, topic_name, [0], "read_committed", expect=1, timeout=3)
    assert values(got) == [b"winner"]


def test_the_broker_aborts_a_transaction_past_its_timeout(broker, topic_name):
    create_topic(broker.bootstrap, topic_name)
    # Long enough that a slow machine still sees the transaction open before it times out.
    producer = txn_producer(broker.bootstrap, "tx-" + topic_name, **{"transaction.timeout.ms": 4000})
    producer.begin_transaction()
    producer.produce(topic_name, value=b"slow")
    producer.flush(15)
    assert latest_offsets(broker.bootstrap, topic_name, 0) == (1, 0)
    # Aborted: the marker moved the last stable offset past the record, which stays hidden.
    # Polled: a loaded machine can stall the sweep (every 200 ms) past a fixed sleep.
    deadline = time.monotonic() + 20
    while latest_offsets(broker.bootstrap, topic_name, 0) != (2, 2) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert latest_offsets(broker.bootstrap, topic_name, 0) == (2, 2), broker.log()[-4000:]
    assert read_all(broker.bootstrap, topic_name, [0], "read_committed", timeout=2) == []
    with pytest.raises(KafkaException):
        producer.commit_transaction(10)
    assert "aborted a transaction past its timeout" in broker.log()


def test_kill_during_a_transaction_never_exposes_half_of_it(make_broker, topic_name):
    broker = make_broker()
    create_topic(broker.bootstrap, topic_name, partitions=2)
    txn_id = "tx-" + topic_name
    producer = txn_producer(broker.bootstrap, txn_id)
    producer.begin_transaction()
    for i in range(10):
        producer.produce(topic_name, value=f"kept{i}".encode(), partition=i % 2)
    producer.commit_transaction(15)
    producer.begin_transaction()
    for i in range(10):
        producer.produce(topic_name, value=f"open{i}".encode(), partition=i % 2)
    producer.flush(15)

    broker.kill()
    broker.restart()
    # Still undecided after the restart: hidden from read_committed consumers...
    assert values(read_all(broker.bootstrap, topic_name, [0, 1], "read_committed", timeout=3)) == sorted(
        f"kept{i}".encode() for i in range(10)
    )
    # ...until the producer's replacement aborts it.
    replacement = txn_producer(broker.bootstrap, txn_id)
    replacement.begin_transaction()
    replacement.produce(topic_name, value=b"after", partition=0)
    replacement.commit_transaction(15)
    got = read_all(broker.bootstrap, topic_name, [0, 1], "read_committed", expect=11)
    assert values(got) == sorted([f"kept{i}".encode() for i in range(10)] + [b"after"])

    # A committed transaction survives a kill as a whole.
    replacement.begin_transaction()
    for i in range(6):
        replacement.produce(topic_name, value=f"late{i}".encode(), partition=i % 2)
    replacement.commit_transaction(15)
    broker.kill()
    broker.restart()
    got = read_all(broker.bootstrap, topic_name, [0, 1], "read_committed", expect=17)
    assert len(got) == 17 and {f"late{i}".encode() for i in range(6)} <= set(values(got))


def test_kafka_python_transactions_and_admin_views(broker, topic_name):
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition as KTopicPartition
    from kafka.admin import KafkaAdminClient

    create_topic(broker.bootstrap, topic_name)
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, transactional_id="kp-" + topic_name)
    producer.init_transactions()
    producer.begin_transaction()
    for i in range(3):
        producer.send(topic_name, f"yes{i}".encode())
    producer.commit_transaction()
    producer.begin_transaction()
    producer.send(topic_name, b"no")
    producer.flush()
    producer.abort_transaction()
    producer.begin_transaction()
    producer.send(topic_name, b"open")
    producer.flush()

    client = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    txn_id = "kp-" + topic_name
    listed = [t for listings in client.list_transactions().values() for t in listings]
    assert [(t.transactional_id, t.state.value) for t in listed] == [(txn_id, "Ongoing")]
    described = client.describe_transactions([txn_id])[txn_id]
    assert described.state.value == "Ongoing"
    assert described.topic_partitions == {KTopicPartition(topic_name, 0)}
    producer_id = listed[0].producer_id
    assert described.producer_id == producer_id and described.transaction_timeout_ms > 0
    tp = KTopicPartition(topic_name, 0)
    active = client.describe_producers([tp])[tp].active_producers
    # Offsets 0-2 committed, 3 marker, 4 aborted, 5 marker: the open transaction starts at 6.
    assert [(p.producer_id, p.current_transaction_start_offset) for p in active] == [(producer_id, 6)]
    with pytest.raises(Exception, match="TransactionalIdNotFound"):
        client.describe_transactions(["no-such-" + topic_name])
    client.close()

    consumer = KafkaConsumer(
        bootstrap_servers=broker.bootstrap,
        isolation_level="read_committed",
        auto_offset_reset="earliest",
        consumer_timeout_ms=3000,
    )
    consumer.assign([KTopicPartition(topic_name, 0)])
    seen = [m.value for m in consumer]
    consumer.close()
    assert seen == [b"yes0", b"yes1", b"yes2"]
    producer.commit_transaction()
    producer.close()


def init_txn_producer(sock, transactional_id, timeout_ms=60_000):
    """InitProducerId v0 for a transactional id: (error, producer id, epoch)."""
    wire.send(sock, wire.header(22, 0) + wire.string(transactional_id) + struct.pack(">i", timeout_ms))
    _throttle, error, producer_id, epoch = struct.unpack_from(">ihqh", wire.receive(sock), 4)
    return error, producer_id, epoch


def end_txn(sock, transactional_id, producer_id, epoch, commit):
    """EndTxn v0: the error code."""
    wire.send(sock, wire.header(26, 0) + wire.string(transactional_id) + struct.pack(">qh?", producer_id, epoch, commit))
    return struct.unpack_from(">ih", wire.receive(sock), 4)[1]


def add_partition(sock, transactional_id, producer_id, epoch, topic, partition):
    """AddPartitionsToTxn v0 for one partition: its error code."""
    body = wire.string(transactional_id) + struct.pack(">qhi", producer_id, epoch, 1)
    body += wire.string(topic) + struct.pack(">ii", 1, partition)
    wire.send(sock, wire.header(24, 0) + body)
    response = wire.receive(sock)
    name_len = struct.unpack_from(">h", response, 12)[0]
    return struct.unpack_from(">h", response, 14 + name_len + 8)[0]


def test_transaction_coordinator_error_codes(broker, topic_name):
    create_topic(broker.bootstrap, topic_name)
    sock = wire.connect(broker)
    txn_id = "raw-" + topic_name
    assert init_txn_producer(sock, txn_id, timeout_ms=0)[0] == 50  # INVALID_TRANSACTION_TIMEOUT
    assert init_txn_producer(sock, txn_id, timeout_ms=900_001)[0] == 50
    error, producer_id, epoch = init_txn_producer(sock, txn_id)
    assert (error, epoch) == (0, 0)
    assert init_txn_producer(sock, txn_id) == (0, producer_id, 1)
    # Nothing open: committing is an invalid state; the old epoch is fenced
    # (INVALID_PRODUCER_EPOCH for v0 clients, which predate PRODUCER_FENCED).
    assert end_txn(sock, txn_id, producer_id, 1, True) == 48
    assert end_txn(sock, txn_id, producer_id, 0, True) == 47
    assert end_txn(sock, txn_id, producer_id + 1, 1, True) == 49  # INVALID_PRODUCER_ID_MAPPING
    assert add_partition(sock, txn_id, producer_id, 1, "no-such-topic", 0) == 3
    assert add_partition(sock, txn_id, producer_id, 1, topic_name, 0) == 0
    assert end_txn(sock, txn_id, producer_id, 1, False) == 0
    assert end_txn(sock, txn_id, producer_id, 1, False) == 0  # a retried abort succeeds again
    assert end_txn(sock, txn_id, producer_id, 1, True) == 48


def test_unused_transactional_ids_expire_and_open_transactions_keep_theirs(make_broker, topic_name):
    """`--transactional-id-expiration-ms` (Kafka's transactional.id.expiration.ms): an id
    with no transaction open is forgotten once unused that long, also after a restart, and
    initialised again it gets a new producer id; an id with a transaction open is kept."""
    from kafka import KafkaAdminClient

    broker = make_broker("--transactional-id-expiration-ms", "1500")
    create_topic(broker.bootstrap, topic_name)
    done_id, open_id = "done-" + topic_name, "open-" + topic_name
    done = txn_producer(broker.bootstrap, done_id)
    done.begin_transaction()
    done.produce(topic_name, value=b"committed")
    done.commit_transaction(15)
    still_open = txn_producer(broker.bootstrap, open_id, **{"transaction.timeout.ms": 60000})
    still_open.begin_transaction()
    still_open.produce(topic_name, value=b"open")
    still_open.flush(15)

    def listed():
        client = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
        try:
            return {
                t.transactional_id: (t.producer_id, t.state.value)
                for listings in client.list_transactions().values()
                for t in listings
            }
        finally:
            client.close()

    before = listed()
    assert set(before) == {done_id, open_id} and before[done_id][1] == "CompleteCommit"
    deadline = time.monotonic() + 20
    while done_id in listed() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert listed() == {open_id: before[open_id]}

    again = txn_producer(broker.bootstrap, done_id)
    assert listed()[done_id][0] != before[done_id][0], "a forgotten id gets a new producer id"
    again.begin_transaction()
    again.produce(topic_name, value=b"again")
    again.commit_transaction(15)
    still_open.commit_transaction(15)
    assert values(read_all(broker.bootstrap, topic_name, [0], "read_committed", expect=3)) == [
        b"again",
        b"committed",
        b"open",
    ]

    deadline = time.monotonic() + 20
    while listed() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert listed() == {}
    assert "forgot a transactional id unused past its expiration" in broker.log()
    # Forgotten in the store too: a restart, with an expiration they would not reach, does
    # not load them again.
    broker.args = ["--transactional-id-expiration-ms", "3600000"]
    broker.restart()
    assert listed() == {}
