"""Idempotent producers: the default for kafka-python (and Java); retries never duplicate
or reorder records, and the producer state survives a broker kill."""

import struct
import time

from kafka.record.default_records import DefaultRecordBatchBuilder

from clients import consume, create_topic, produce
import wire


def init_producer_id(sock):
    wire.send(sock, wire.header(22, 0) + struct.pack(">hi", -1, 60_000))
    _throttle, error, producer_id, epoch = struct.unpack_from(">ihqh", wire.receive(sock), 4)
    assert error == 0
    return producer_id, epoch


def batch(producer_id, epoch, sequence, values):
    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=0,
        is_transactional=False,
        producer_id=producer_id,
        producer_epoch=epoch,
        base_sequence=sequence,
        batch_size=1 << 20,
    )
    for i, value in enumerate(values):
        builder.append(i, timestamp=None, key=None, value=value, headers=[])
    return bytes(builder.build())


def send(sock, topic, records):
    wire.send(sock, wire.header(0, 3) + wire.produce_v3(topic, 0, records))
    return wire.produce_v3_error(wire.receive(sock))


def test_kafka_python_default_producer_is_idempotent_and_works(broker, topic_name):
    from kafka import KafkaProducer

    create_topic(broker.bootstrap, topic_name)
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap)  # idempotence on by default
    offsets = [producer.send(topic_name, f"v{i}".encode()).get(timeout=15).offset for i in range(50)]
    producer.close()
    assert offsets == list(range(50))
    assert [m.value() for m in consume(broker.bootstrap, topic_name, 0, 50)] == [f"v{i}".encode() for i in range(50)]


def test_librdkafka_idempotent_producer_writes_each_record_once(broker, topic_name):
    create_topic(broker.bootstrap, topic_name, partitions=2)
    sent = [(i % 2, None, f"m{i}".encode(), None, None) for i in range(2000)]
    reports = produce(broker.bootstrap, topic_name, sent, **{"enable.idempotence": True, "max.in.flight": 5})
    assert all(err is None for *_, err in reports)
    for partition in (0, 1):
        got = consume(broker.bootstrap, topic_name, partition, 1000)
        assert [m.value() for m in got] == [m[2] for m in sent if m[0] == partition]


def test_retried_batches_are_not_written_twice_and_gaps_are_refused(make_broker, topic_name):
    broker = make_broker()
    create_topic(broker.bootstrap, topic_name)
    sock = wire.connect(broker)
    producer_id, epoch = init_producer_id(sock)
    first = batch(producer_id, epoch, 0, [b"a", b"b"])
    assert send(sock, topic_name, first) == (0, 0)
    assert send(sock, topic_name, first) == (0, 0), "a retry gets its original offset"
    assert send(sock, topic_name, batch(producer_id, epoch, 5, [b"gap"]))[0] == 45  # OUT_OF_ORDER_SEQUENCE_NUMBER
    assert send(sock, topic_name, batch(producer_id, epoch, 2, [b"c"])) == (0, 2)

    broker.kill()
    broker.start()
    sock = wire.connect(broker)
    assert send(sock, topic_name, batch(producer_id, epoch, 2, [b"c"])) == (0, 2), "state survives kill -9"
    assert send(sock, topic_name, batch(producer_id, epoch + 1, 0, [b"d"])) == (0, 3), "a new epoch starts over"
    assert send(sock, topic_name, batch(producer_id, epoch, 3, [b"stale"]))[0] == 47  # INVALID_PRODUCER_EPOCH
    assert [m.value() for m in consume(broker.bootstrap, topic_name, 0, 4)] == [b"a", b"b", b"c", b"d"]

    other_id, _ = init_producer_id(sock)
    assert other_id > producer_id, "producer ids are never reused across restarts"


def init_producer_id_v3(sock, producer_id, epoch):
    """InitProducerId v3 (flexible): asks to bump the epoch of an existing producer id."""
    header = struct.pack(">hhih", 22, 3, 7, 4) + b"test" + b"\x00"
    body = b"\x00" + struct.pack(">iqh", 60_000, producer_id, epoch) + b"\x00"
    wire.send(sock, header + body)
    response = wire.receive(sock)
    _throttle, error, new_id, new_epoch = struct.unpack_from(">ihqh", response, 5)
    return error, new_id, new_epoch


def test_epoch_bumps_are_granted_only_for_issued_producer_ids(broker):
    sock = wire.connect(broker)
    producer_id, epoch = init_producer_id(sock)
    assert init_producer_id_v3(sock, producer_id, epoch) == (0, producer_id, epoch + 1)
    error, _, _ = init_producer_id_v3(sock, producer_id + 1000, 0)
    assert error == 49  # INVALID_PRODUCER_ID_MAPPING


def test_idle_producers_states_expire_but_open_transactions_keep_theirs(make_broker, topic_name):
    """`--producer-id-expiration-ms` (Kafka's producer.id.expiration.ms): a producer that has
    written nothing to a partition for that long loses its state there, as DescribeProducers
    shows, also after a restart; one with a transaction open keeps it."""
    from kafka import KafkaAdminClient, KafkaProducer
    from kafka import TopicPartition as KTopicPartition

    broker = make_broker("--producer-id-expiration-ms", "1500")
    create_topic(broker.bootstrap, topic_name)
    sock = wire.connect(broker)
    idle_id, epoch = init_producer_id(sock)
    assert send(sock, topic_name, batch(idle_id, epoch, 0, [b"a", b"b"])) == (0, 0)
    transactional = KafkaProducer(bootstrap_servers=broker.bootstrap, transactional_id="t-" + topic_name)
    transactional.init_transactions()
    transactional.begin_transaction()
    transactional.send(topic_name, b"open").get(timeout=15)
    tp = KTopicPartition(topic_name, 0)

    def producers():
        client = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
        try:
            return {p.producer_id: p for p in client.describe_producers([tp])[tp].active_producers}
        finally:
            client.close()

    written_ms = time.time() * 1000
    before = producers()
    assert len(before) == 2 and idle_id in before
    assert abs(before[idle_id].last_timestamp - written_ms) < 5_000
    assert before[idle_id].last_sequence == 1
    (open_id,) = set(before) - {idle_id}
    assert before[open_id].current_transaction_start_offset == 2

    time.sleep(3)
    assert list(producers()) == [open_id]
    # A retry of the first batch now is a new batch to the broker, as in Kafka.
    assert send(sock, topic_name, batch(idle_id, epoch, 0, [b"a", b"b"])) == (0, 3)
    transactional.commit_transaction()
    transactional.close()

    time.sleep(3)
    assert producers() == {}
    # The states are gone from the store too: a restart, with an expiration they would not
    # reach, does not load them again.
    broker.args = ["--producer-id-expiration-ms", "3600000"]
    broker.restart()
    assert producers() == {}
    got = consume(broker.bootstrap, topic_name, 0, 5, **{"isolation.level": "read_committed"})
    assert [m.value() for m in got] == [b"a", b"b", b"open", b"a", b"b"]


def test_idle_producer_states_of_partitions_not_loaded_since_a_restart_expire_too(make_broker, topic_name):
    """The expiry pass also reads the states of partitions nobody has used since the broker
    started, so they do not stay in the store until a client touches the partition."""
    from kafka import KafkaAdminClient
    from kafka import TopicPartition as KTopicPartition

    broker = make_broker("--producer-id-expiration-ms", "3600000")
    create_topic(broker.bootstrap, topic_name)
    sock = wire.connect(broker)
    producer_id, epoch = init_producer_id(sock)
    assert send(sock, topic_name, batch(producer_id, epoch, 0, [b"a"])) == (0, 0)
    sock.close()

    # Restarted with a short expiration, and the partition left alone past it.
    broker.args = ["--producer-id-expiration-ms", "1000"]
    broker.restart()
    time.sleep(2.5)
    # Back to a long expiration: a state still stored would be loaded and listed again.
    broker.args = ["--producer-id-expiration-ms", "3600000"]
    broker.restart()
    tp = KTopicPartition(topic_name, 0)
    client = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        assert client.describe_producers([tp])[tp].active_producers == []
    finally:
        client.close()
    assert [m.value() for m in consume(broker.bootstrap, topic_name, 0, 1)] == [b"a"]
