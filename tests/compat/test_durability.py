"""Crash safety: every acknowledged record survives SIGKILL; topics and configs survive
restarts; a second broker on the same folder refuses to start."""

import re
import subprocess
import threading
import time

import pytest

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import ConfigResource, ResourceType

from clients import admin, consume, create_topic, produce
from conftest import SHALE_BIN


def produce_until_killed(broker, topic, partitions, value_of, min_acked, until=None, **config):
    """Produces `value_of(i)` round-robin over `partitions` with acks=all until `min_acked`
    records are acknowledged and `until(acknowledged count)`, if given, holds (or 20 s pass),
    then SIGKILLs the broker mid-stream. Returns the acknowledged values by (partition,
    offset)."""
    acked = {}
    producer = Producer(
        {"bootstrap.servers": broker.bootstrap, "acks": "all", "message.timeout.ms": 3000, **config}
    )

    def delivered(err, msg):
        if err is None:
            acked[(msg.partition(), msg.offset())] = msg.value()

    stop = threading.Event()

    def keep_producing():
        i = 0
        while not stop.is_set():
            try:
                producer.produce(topic, value=value_of(i), partition=i % partitions, on_delivery=delivered)
                i += 1
            except BufferError:
                producer.poll(0.01)
            producer.poll(0)

    writer = threading.Thread(target=keep_producing)
    writer.start()
    deadline = time.monotonic() + 20
    while (len(acked) < min_acked or (until and not until(len(acked)))) and time.monotonic() < deadline:
        time.sleep(0.05)
    broker.kill()
    stop.set()
    writer.join()
    producer.flush(5)
    assert len(acked) >= min_acked, "the producer should have had acks before the kill"
    return dict(acked)


def assert_acked_records_survived(broker, topic, partitions, acked):
    """After a restart: offsets are dense from 0 and every acknowledged record is there.
    Returns each partition's (low, high) watermarks."""
    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "unused"})
    ends = [consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10) for p in range(partitions)]
    consumer.close()
    for partition, (low, high) in enumerate(ends):
        assert low == 0
        stored = consume(broker.bootstrap, topic, partition, high)
        assert [m.offset() for m in stored] == list(range(high)), "offsets must stay dense"
        by_offset = {m.offset(): m.value() for m in stored}
        for (p, offset), value in acked.items():
            if p == partition:
                assert by_offset.get(offset) == value, f"acked record {p}/{offset} lost"
    return ends


def test_acknowledged_records_survive_sigkill(make_broker, topic_name):
    broker = make_broker()
    create_topic(broker.bootstrap, topic_name, partitions=2)
    acked = produce_until_killed(
        broker, topic_name, 2, lambda i: f"m{i}".encode(), 2000, **{"linger.ms": 1, "compression.type": "lz4"}
    )
    broker.start()
    ends = assert_acked_records_survived(broker, topic_name, 2, acked)
    after = produce(broker.bootstrap, topic_name, [(0, None, b"after restart", None, None)])
    assert after[0][1] == ends[0][1], "offsets continue where the durable log ended"


def test_topics_and_configs_survive_sigkill(make_broker, topic_name):
    broker = make_broker()
    create_topic(broker.bootstrap, topic_name, partitions=3, config={"retention.ms": "12345"})
    broker.kill()
    broker.start()
    client = admin(broker.bootstrap)
    assert len(client.list_topics(timeout=10).topics[topic_name].partitions) == 3
    resource = ConfigResource(ResourceType.TOPIC, topic_name)
    assert client.describe_configs([resource])[resource].result(15)["retention.ms"].value == "12345"


def test_clean_shutdown_keeps_acks_one_writes(make_broker, topic_name):
    broker = make_broker()
    create_topic(broker.bootstrap, topic_name)
    reports = produce(broker.bootstrap, topic_name, [(0, None, f"a{i}".encode(), None, None) for i in range(100)], acks=1)
    assert all(err is None for *_, err in reports)
    assert broker.stop() == 0
    assert "all acknowledged data is durable" in broker.log()
    broker.start()
    got = consume(broker.bootstrap, topic_name, 0, 100)
    assert [m.value() for m in got] == [f"a{i}".encode() for i in range(100)]


def test_a_second_broker_on_the_same_folder_refuses_to_start(make_broker, tmp_path, topic_name):
    shared = tmp_path / "shared"
    first = make_broker(data_dir=shared)
    create_topic(first.bootstrap, topic_name)
    produce(first.bootstrap, topic_name, [(0, None, b"from the first", None, None)])

    second = subprocess.run(
        [SHALE_BIN, "serve", "--listen", "127.0.0.1:0", "--data-dir", str(shared)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert second.returncode != 0
    assert "another Shale broker is using it" in second.stderr, second.stderr

    reports = produce(first.bootstrap, topic_name, [(0, None, b"still the first's", None, None)])
    assert reports[0][3] is None and reports[0][1] == 1
    # A killed broker's lock goes with it.
    first.kill()
    after = make_broker(data_dir=shared)
    got = consume(after.bootstrap, topic_name, 0, 2)
    assert [m.value() for m in got] == [b"from the first", b"still the first's"]


def test_wal_writes_go_to_the_journal_and_survive_sigkill(make_broker, topic_name):
    broker = make_broker()
    if "written and read with direct I/O" not in broker.log():
        pytest.skip("the temp folder refuses direct I/O: the WAL is files, no journal")
    create_topic(broker.bootstrap, topic_name)
    journal, wal = broker.data_dir / "journal", broker.data_dir / "shale" / "wal"
    # The first segment is written shortly after the start; WAL objects are files until then.
    deadline = time.time() + 10
    while not list(journal.glob("*.seg")) and time.time() < deadline:
        time.sleep(0.05)
    assert list(journal.glob("*.seg")), "no journal segment was written"
    files_before = set(wal.glob("*"))
    producer = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all", "linger.ms": 0})
    acked = []
    for i in range(300):
        # One request, and so one WAL write, each.
        producer.produce(
            topic_name, f"w{i}".encode(), partition=0, on_delivery=lambda e, m: acked.append((e, m.offset()))
        )
        assert producer.flush(10) == 0
    assert acked == [(None, i) for i in range(300)]
    new_files = set(wal.glob("*")) - files_before
    assert len(new_files) < 30, f"{len(new_files)} new WAL files: the journal took no WAL writes"

    broker.kill()
    broker.start()
    got = consume(broker.bootstrap, topic_name, 0, 300)
    assert [m.value() for m in got] == [f"w{i}".encode() for i in range(300)]
    assert "WAL journal read" in broker.log()


def test_small_batch_objects_written_to_the_journal_survive_sigkill(make_broker, topic_name):
    broker = make_broker()
    if "written and read with direct I/O" not in broker.log():
        pytest.skip("the temp folder refuses direct I/O: no journal")
    create_topic(broker.bootstrap, topic_name, partitions=2)
    journal = broker.data_dir / "journal"
    deadline = time.time() + 10
    while not list(journal.glob("*.seg")) and time.time() < deadline:
        time.sleep(0.05)
    assert list(journal.glob("*.seg")), "no journal segment was written"
    # One 40 KB record per append: batch objects small enough for the journal, killed
    # mid-stream, so the last ones are still there, not yet files.
    acked = produce_until_killed(
        broker, topic_name, 2, lambda i: f"{i:08d}".encode() * 5000, 300, **{"linger.ms": 0, "batch.size": 60000}
    )
    broker.start()
    assert_acked_records_survived(broker, topic_name, 2, acked)
    found = re.search(r"WAL journal read.*batch_objects=(\d+)", broker.log())
    assert found and int(found.group(1)) > 0, "the kill should have left batch objects in the journal"
    # Moved to files, the objects read the same after a clean restart.
    assert broker.stop() == 0
    broker.start()
    assert_acked_records_survived(broker, topic_name, 2, acked)
