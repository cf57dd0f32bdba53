"""The broker's memory budgets: request bytes (`--queued-max-request-bytes`) and fetched
record bytes (`--fetch-memory-bytes`) held at once over all connections are bounded;
clients past them wait, and none is refused or loses data."""

import socket
import struct
import threading
import time

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import ConfigResource, ResourceType

from clients import admin, consume, create_topic, produce
import wire


def stall_then_produce(broker, topic, value):
    """Starts a 2.5 MB request and stalls in it (that much of the budget is spoken for),
    then sends a ~1 MB produce of 1000 `value`s from another connection, from a thread
    since the broker may not read it yet. Returns both sockets and the sending thread."""
    stalled = wire.connect(broker)
    stalled.sendall(struct.pack(">i", 2_500_000) + bytes(100))
    time.sleep(0.3)
    records = wire.record_batch([value] * 1000)
    producer = wire.connect(broker)
    sending = threading.Thread(
        target=wire.send, args=(producer, wire.header(0, 3) + wire.produce_v3(topic, 0, records))
    )
    sending.start()
    return stalled, producer, sending


def hog_the_fetch_budget(broker, topic, value):
    """Stores 40 MB in `topic`, then asks for 32 MB of it from a connection that reads
    nothing: the answer is larger than the socket's buffers, so the broker is still
    writing it and holds that much of the fetch budget. Returns the hog's socket."""
    create_topic(broker.bootstrap, topic)
    sock = wire.connect(broker)
    batch = wire.record_batch([value] * 1000)
    for _ in range(40):
        assert wire.produce_roundtrip(sock, topic, batch)[0] == 0
    hog = socket.socket()
    hog.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
    hog.connect(("127.0.0.1", broker.port))
    wire.send(hog, wire.header(1, 4) + wire.fetch_v4(topic, 0, 0, 1, 32 << 20, 32 << 20))
    time.sleep(0.4)
    return hog


def test_a_request_past_the_budget_waits_and_small_ones_pass(make_broker, topic_name):
    broker = make_broker("--queued-max-request-bytes", "3000000")
    create_topic(broker.bootstrap, topic_name)
    resource = ConfigResource(ResourceType.BROKER, "0")
    client = admin(broker.bootstrap)
    configs = client.describe_configs([resource])[resource].result(15)
    assert configs["queued.max.request.bytes"].value == "3000000"
    # The produce does not fit in what the stalled request left, so it is not read yet.
    stalled, producer, sending = stall_then_produce(broker, topic_name, b"x" * 1000)
    producer.settimeout(1.5)
    with pytest.raises(socket.timeout):
        producer.recv(1)
    assert "--queued-max-request-bytes is spent" in broker.log()

    # A small request fits in what is left: another client is answered at once.
    other = wire.connect(broker)
    wire.send(other, wire.header(18, 0, correlation_id=7))
    assert struct.unpack_from(">ih", wire.receive(other)) == (7, 0)

    # The stalled client goes away, its share comes back, and the produce is served.
    stalled.close()
    producer.settimeout(10)
    assert wire.produce_v3_error(wire.receive(producer)) == (0, 0)
    sending.join(10)
    assert [m.value() for m in consume(broker.bootstrap, topic_name, 0, 1000)] == [b"x" * 1000] * 1000


def test_producers_past_a_small_budget_all_get_through(make_broker, topic_name):
    # Every ~1 MB request is larger than the whole budget: each is read when no other
    # request is held, and four producers at once still deliver everything.
    broker = make_broker("--queued-max-request-bytes", "262144")
    create_topic(broker.bootstrap, topic_name, partitions=4)
    per_producer = 8000
    errors = []

    def run(partition):
        producer = Producer(
            {"bootstrap.servers": broker.bootstrap, "acks": "all", "linger.ms": 20, "batch.size": 1 << 20}
        )

        def delivered(err, _msg):
            if err is not None:
                errors.append(err)

        for i in range(per_producer):
            producer.produce(topic_name, value=f"{partition}-{i}".encode().ljust(1000, b"."), partition=partition, on_delivery=delivered)
            producer.poll(0)
        assert producer.flush(60) == 0

    threads = [threading.Thread(target=run, args=(p,)) for p in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == []
    for partition in range(4):
        values = [m.value() for m in consume(broker.bootstrap, topic_name, partition, per_producer, timeout=60)]
        assert values == [f"{partition}-{i}".encode().ljust(1000, b".") for i in range(per_producer)]


def test_a_client_stalled_in_a_request_is_closed_when_idle_and_its_share_returns(make_broker, topic_name):
    broker = make_broker("--queued-max-request-bytes", "3000000", "--connections-max-idle-ms", "1500")
    create_topic(broker.bootstrap, topic_name)
    stalled, producer, sending = stall_then_produce(broker, topic_name, b"y" * 1000)
    # The stalled client never finishes its request nor goes away; the broker closes it
    # once it has been idle that long, and the waiting produce is served.
    producer.settimeout(15)
    assert wire.produce_v3_error(wire.receive(producer)) == (0, 0)
    sending.join(10)
    stalled.settimeout(5)
    assert stalled.recv(1) == b""
    assert "idle for 1500 ms" in broker.log()


def test_a_fetch_past_the_fetch_budget_waits_for_room(make_broker, topic_name):
    broker = make_broker("--fetch-memory-bytes", str(32 << 20))
    hog = hog_the_fetch_budget(broker, topic_name, b"z" * 1000)

    # Another consumer is answered without records at the end of its wait; the high
    # watermark tells it there are some.
    consumer = wire.connect(broker)
    wire.send(consumer, wire.header(1, 4) + wire.fetch_v4(topic_name, 0, 300, 1))
    assert wire.fetch_v4_partition(wire.receive(consumer)) == (0, 40_000, b"")
    assert "--fetch-memory-bytes is spent" in broker.log()

    # The hog goes away; its share comes back, and a waiting fetch is answered with records.
    wire.send(consumer, wire.header(1, 4, correlation_id=2) + wire.fetch_v4(topic_name, 0, 10_000, 1))
    time.sleep(0.3)
    hog.close()
    error, batches = wire.fetch_v4_result(wire.receive(consumer))
    assert (error, batches[0]) == (0, (0, 999))


def test_a_client_that_reads_no_answers_is_closed_when_idle_and_its_share_returns(make_broker, topic_name):
    broker = make_broker("--fetch-memory-bytes", str(32 << 20), "--connections-max-idle-ms", "1500")
    hog = hog_the_fetch_budget(broker, topic_name, b"w" * 1000)
    # The hog keeps its connection but reads nothing; the broker gives up on it once its
    # answer has waited that long, and a waiting fetch is answered with records.
    consumer = wire.connect(broker)
    started = time.monotonic()
    wire.send(consumer, wire.header(1, 4) + wire.fetch_v4(topic_name, 0, 10_000, 1))
    error, batches = wire.fetch_v4_result(wire.receive(consumer))
    assert (error, batches[0]) == (0, (0, 999))
    assert time.monotonic() - started < 8
    assert "answers not read for 1500 ms" in broker.log()
    hog.close()


def test_consumers_past_a_small_fetch_budget_all_get_everything(make_broker, topic_name):
    broker = make_broker("--fetch-memory-bytes", str(1 << 20))
    create_topic(broker.bootstrap, topic_name, partitions=4)
    values = [f"{i}".encode().ljust(1000, b".") for i in range(5000)]
    produce(broker.bootstrap, topic_name, [(p, None, v, None, None) for p in range(4) for v in values], **{"batch.size": 1 << 20})
    results = {}

    def run(partition):
        read = consume(broker.bootstrap, topic_name, partition, len(values), timeout=60, **{"fetch.message.max.bytes": 4 << 20})
        results[partition] = [m.value() for m in read]

    threads = [threading.Thread(target=run, args=(p,)) for p in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(90)
    assert results == {p: values for p in range(4)}


def test_memory_a_keyed_burst_took_goes_back_once_the_broker_is_idle(make_broker, topic_name):
    """Keyed records each add a key index entry, held in SlateDB's memtables until they are
    flushed; the memory they leave free is given back to the system once the broker has
    been idle for a few seconds, so a broker does not keep its peak for good."""
    broker = make_broker("--default-partitions", "8")
    producer = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all", "linger.ms": 5})
    value = b"v" * 200
    for i in range(400_000):
        while True:
            try:
                producer.produce(topic_name, value, key=b"key-%d" % (i % 1000))
                break
            except BufferError:
                producer.poll(0.01)
    assert producer.flush(60) == 0
    peak = broker.memory_mb("VmHWM")
    assert peak > 120, f"the burst took only {peak:.0f} MB; nothing to give back"
    deadline = time.monotonic() + 40
    while broker.memory_mb() > peak / 2 and time.monotonic() < deadline:
        time.sleep(1)
    assert broker.memory_mb() <= peak / 2, (
        f"still {broker.memory_mb():.0f} MB after the burst's peak of {peak:.0f} MB"
    )
    read = consume(broker.bootstrap, topic_name, 0, 10)
    assert len(read) == 10 and all(m.key().startswith(b"key-") for m in read)
