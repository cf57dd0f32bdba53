"""Retention: whole segments dropped by time and size, DeleteRecords, space reclaimed in
the data folder (topic deletion included), and kill -9 while retention runs."""

import subprocess
import time

import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from test_http import call, http_base
from clients import admin, create_topic, produce
import wire

# Retention checks every 200 ms and deletes drained files 300 ms later.
FAST = ["--retention-check-interval-ms", "200", "--reclaim-delay-ms", "300"]
# A compacted topic whose segments seal at 2000 bytes or half a second, tombstones at once.
COMPACT_FAST = {
    "cleanup.policy": "compact",
    "segment.bytes": "2000",
    "segment.ms": "500",
    "delete.retention.ms": "0",
    "retention.ms": "-1",
}


def folder_bytes(broker):
    """Bytes of stored data: the WAL journal's segments are preallocated, a fixed size."""
    used = subprocess.check_output(["du", "-sb", "--exclude=journal", str(broker.data_dir)])
    return int(used.split()[0])


def watermarks(broker, topic, partition=0):
    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "watermarks"})
    try:
        return consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
    finally:
        consumer.close()


def partition_size(broker, topic, partition=0):
    """The partition's stored bytes as DescribeLogDirs (kafka-log-dirs) reports them."""
    from kafka.admin import KafkaAdminClient

    client = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        dirs = client.describe_log_dirs()[0]["log_dirs"]
    finally:
        client.close()
    sizes = {
        (t["name"], p["partition_index"]): p["partition_size"]
        for d in dirs
        for t in d["topics"]
        for p in t["partitions"]
    }
    return sizes[(topic, partition)]


def produce_rounds(broker, topic, rounds, per_round=200, size=500, partition=0, start=0):
    """Produces `rounds` separate flushes (so segments roll between them); each value is
    its sequence number padded to `size` bytes."""
    n = start
    for _ in range(rounds):
        batch = []
        for _ in range(per_round):
            batch.append((partition, None, str(n).encode().ljust(size, b"."), None, None))
            n += 1
        reports = produce(broker.bootstrap, topic, batch)
        assert all(err is None for *_, err in reports)
    return n


def wait_for(condition, timeout=30, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def settled_log_start(broker, topic):
    """The log start offset once retention has stopped moving it (unchanged for 1 s, five
    retention passes)."""
    last, since = None, time.monotonic()
    while time.monotonic() - since < 1:
        start = watermarks(broker, topic)[0]
        if start != last:
            last, since = start, time.monotonic()
        time.sleep(0.1)
    return last


def read_from_earliest(broker, topic, expect, partition=0):
    consumer = Consumer(
        {"bootstrap.servers": broker.bootstrap, "group.id": "readers-" + topic, "auto.offset.reset": "earliest"}
    )
    consumer.assign([TopicPartition(topic, partition, 0)])
    got = []
    deadline = time.monotonic() + 20
    try:
        while len(got) < expect and time.monotonic() < deadline:
            msg = consumer.poll(0.3)
            if msg is None or msg.error():
                continue
            got.append((msg.offset(), int(msg.value().rstrip(b"."))))
    finally:
        consumer.close()
    return got


def test_time_retention_drops_old_segments_and_reclaims_space(make_broker, topic_name):
    broker = make_broker(*FAST)
    config = {"retention.ms": "3000", "segment.bytes": "50000", "segment.ms": "1000"}
    create_topic(broker.bootstrap, topic_name, config=config)
    end = produce_rounds(broker, topic_name, rounds=10)
    full = folder_bytes(broker)
    assert full > 1_000_000
    assert partition_size(broker, topic_name) > 1_000_000

    # Everything expires; the offsets go on where they were.
    wait_for(lambda: watermarks(broker, topic_name) == (end, end), what="log start to reach the end")
    assert partition_size(broker, topic_name) == 0
    wait_for(lambda: folder_bytes(broker) < full // 3, what="the data folder to shrink")
    assert "dropping segment" in broker.log()

    # A consumer asking for offset 0 is reset to the log start and reads new records.
    produce_rounds(broker, topic_name, rounds=1, per_round=5, start=end)
    assert read_from_earliest(broker, topic_name, 5) == [(end + i, end + i) for i in range(5)]


def test_size_retention_keeps_the_newest_bytes(make_broker, topic_name):
    broker = make_broker(*FAST)
    config = {"retention.ms": "-1", "retention.bytes": "300000", "segment.bytes": "50000"}
    create_topic(broker.bootstrap, topic_name, config=config)
    end = produce_rounds(broker, topic_name, rounds=12)
    wait_for(lambda: watermarks(broker, topic_name)[0], what="size retention")
    start = settled_log_start(broker, topic_name)
    assert 0 < start < end
    # Kept: at least retention.bytes of the newest records (~560 bytes each in batches).
    assert (end - start) * 500 >= 300_000
    assert 300_000 <= partition_size(broker, topic_name) < end * 500
    got = read_from_earliest(broker, topic_name, end - start)
    assert got == [(o, o) for o in range(start, end)]


def test_delete_records_moves_the_log_start_at_once(broker, topic_name):
    create_topic(broker.bootstrap, topic_name, partitions=2)
    produce(broker.bootstrap, topic_name, [(p, None, str(i).encode(), None, None) for i in range(50) for p in (0, 1)])
    client = admin(broker.bootstrap)
    deleted = client.delete_records([TopicPartition(topic_name, 0, 30)])
    result = deleted[TopicPartition(topic_name, 0, 30)].result(10)
    assert result.low_watermark == 30
    assert watermarks(broker, topic_name, 0) == (30, 50)
    assert watermarks(broker, topic_name, 1) == (0, 50)
    # Past the high watermark: OFFSET_OUT_OF_RANGE.
    with pytest.raises(KafkaException) as raised:
        client.delete_records([TopicPartition(topic_name, 1, 51)])[TopicPartition(topic_name, 1, 51)].result(10)
    assert "OFFSET_OUT_OF_RANGE" in str(raised.value)
    # A consumer below the start is reset (auto.offset.reset=earliest) to it.
    consumer = Consumer(
        {"bootstrap.servers": broker.bootstrap, "group.id": "below", "auto.offset.reset": "earliest"}
    )
    consumer.assign([TopicPartition(topic_name, 0, 5)])
    msg = wait_for(lambda: consumer.poll(0.3), what="a record after the reset")
    consumer.close()
    assert (msg.offset(), msg.value()) == (30, b"30")
    # Survives a restart.
    broker.kill()
    broker.restart()
    assert watermarks(broker, topic_name, 0) == (30, 50)


def test_deleting_a_topic_frees_its_space(make_broker, topic_name):
    broker = make_broker(*FAST)
    create_topic(broker.bootstrap, topic_name, config={"segment.bytes": "50000"})
    produce_rounds(broker, topic_name, rounds=10)
    full = folder_bytes(broker)
    client = admin(broker.bootstrap)
    client.delete_topics([topic_name])[topic_name].result(10)
    wait_for(lambda: folder_bytes(broker) < full // 3, what="the data folder to shrink")
    assert "dropping the segments of a deleted topic" in broker.log()


def test_kill_during_retention_keeps_what_should_stay(make_broker, topic_name):
    broker = make_broker(*FAST)
    config = {"retention.ms": "-1", "retention.bytes": "200000", "segment.bytes": "30000"}
    create_topic(broker.bootstrap, topic_name, config=config)
    end = 0
    for _ in range(4):
        end = produce_rounds(broker, topic_name, rounds=4, start=end)
        time.sleep(0.3)
        broker.kill()
        broker.restart()
    start = settled_log_start(broker, topic_name)
    assert watermarks(broker, topic_name)[1] == end
    got = read_from_earliest(broker, topic_name, end - start)
    # Whatever retention dropped, the rest is contiguous, in order and ends at the end.
    assert got == [(o, o) for o in range(start, end)]
    assert (end - start) * 500 >= 200_000
    wait_for(lambda: watermarks(broker, topic_name)[0] > 0, what="retention after restarts")


def test_compacted_topic_keeps_the_latest_value_per_key(make_broker, topic_name):
    broker = make_broker(*FAST, "--http", "127.0.0.1:0")
    create_topic(broker.bootstrap, topic_name, config=COMPACT_FAST)
    end = 0
    for round_ in range(5):
        records = [(0, f"k{k}".encode(), f"v{round_}-{k}".encode(), None, None) for k in range(10)]
        if round_ == 4:
            records.append((0, b"k3", None, None, None))  # a tombstone: k3 is deleted
        end += len(records)
        assert all(err is None for *_, err in produce(broker.bootstrap, topic_name, records, **{"compression.type": "lz4"}))
    # A last record keeps the compacted records out of the active segment.
    produce(broker.bootstrap, topic_name, [(0, b"last", b"x", None, None)])
    end += 1

    def compacted():
        consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "c", "auto.offset.reset": "earliest"})
        consumer.assign([TopicPartition(topic_name, 0, 0)])
        got = []
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            msg = consumer.poll(0.3)
            if msg is None or msg.error():
                if got and got[-1][1] == b"last":
                    break
                continue
            got.append((msg.offset(), msg.key(), msg.value()))
        consumer.close()
        return got if len(got) < end else None

    got = wait_for(compacted, timeout=30, what="compaction")
    latest = {}
    for _, key, value in got:
        assert key not in latest, f"{key} seen twice after compaction: {got}"
        latest[key] = value
    assert latest[b"last"] == b"x"
    assert latest[b"k0"] == b"v4-0" and latest[b"k9"] == b"v4-9"
    # The tombstone went too (delete.retention.ms=0), and with it every trace of k3.
    assert b"k3" not in latest
    assert sorted(latest) == sorted([f"k{k}".encode() for k in range(10) if k != 3] + [b"last"])
    offsets = [o for o, _, _ in got]
    assert offsets == sorted(offsets) and offsets[-1] == end - 1
    assert watermarks(broker, topic_name) == (0, end)
    assert "compacted topic" in broker.log()
    # Key streams lose the removed records too, while a key's version (its record count)
    # stays what it was.
    base = http_base(broker)
    status, body = call(base, "GET", f"/v1/topics/{topic_name}/keys/k0/records")
    assert status == 200 and [r["value"] for r in body["records"]] == ["v4-0"]
    assert body["records"][0]["offset"] == dict((k, o) for o, k, _ in got)[b"k0"]
    assert call(base, "GET", f"/v1/topics/{topic_name}/keys/k3/records")[1]["records"] == []
    assert call(base, "GET", f"/v1/topics/{topic_name}/keys/k3/count")[1]["count"] == 6


def test_compaction_keeps_a_stored_batch_it_cannot_read(make_broker, topic_name):
    # With the key index off nothing reads a batch's records on produce, so one whose
    # records decompress past the broker's bound (64 MiB) is stored. Compaction keeps it as
    # it is and compacts the rest; it used to fail there, every pass, and hold back
    # retention of every topic after it.
    broker = make_broker(*FAST)
    config = {**COMPACT_FAST, "shale.key.index": "false"}
    create_topic(broker.bootstrap, topic_name, config=config)
    sock = wire.connect(broker)
    huge = wire.gzip_of_zeros(100, key=b"k0")
    assert wire.produce_roundtrip(sock, topic_name, huge) == (0, 0)
    end = 100
    for round_ in range(4):
        records = [(0, f"k{k}".encode(), f"v{round_}".encode(), None, None) for k in range(10)]
        assert all(err is None for *_, err in produce(broker.bootstrap, topic_name, records))
        end += len(records)
    produce(broker.bootstrap, topic_name, [(0, b"last", b"x", None, None)])
    end += 1

    wait_for(lambda: "compacted topic" in broker.log(), what="compaction")
    assert "compaction keeps a batch whose records cannot be read" in broker.log()
    assert "retention pass failed" not in broker.log()
    # The batch is served as it was stored, and the records after it were compacted:
    # only the last round's ten and the last record are left of the 41.
    wire.send(sock, wire.header(1, 4) + wire.fetch_v4(topic_name, 0, 0, 0))
    error, batches = wire.fetch_v4_result(wire.receive(sock))
    assert error == 0 and batches[0] == (0, 99)
    kept = read_from_earliest_raw(broker, topic_name, start=100)
    assert [value for _, value in kept] == [b"v3"] * 10 + [b"x"]
    assert watermarks(broker, topic_name) == (0, end)


def read_from_earliest_raw(broker, topic, start):
    """(offset, value) of every record from `start` to the end of partition 0."""
    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "raw-" + topic})
    consumer.assign([TopicPartition(topic, 0, start)])
    got = []
    try:
        while True:
            msg = consumer.poll(2)
            if msg is None:
                return got
            if not msg.error():
                got.append((msg.offset(), msg.value()))
    finally:
        consumer.close()


def test_a_fetch_below_deleted_records_is_out_of_range_though_read_ahead(broker, topic_name):
    """A full fetch makes the broker read the next chunk ahead; DeleteRecords past it must
    still turn the next fetch into OFFSET_OUT_OF_RANGE, not serve the deleted records."""
    create_topic(broker.bootstrap, topic_name)
    produce(broker.bootstrap, topic_name, [(0, None, b"v" * 100, None, None) for _ in range(3000)],
            **{"linger.ms": 0, "batch.num.messages": 20})
    sock = wire.connect(broker)
    wire.send(sock, wire.header(1, 4) + wire.fetch_v4(topic_name, 0, 0, 0, partition_max_bytes=4096))
    error, batches = wire.fetch_v4_result(wire.receive(sock))
    assert error == 0 and batches[0][0] == 0
    following = batches[-1][1] + 1
    # The chunk after `following` is read again, from where the last fetch stopped.
    wire.send(sock, wire.header(1, 4) + wire.fetch_v4(topic_name, following, 0, 0, partition_max_bytes=4096))
    error, batches = wire.fetch_v4_result(wire.receive(sock))
    assert error == 0 and batches[0][0] == following
    following = batches[-1][1] + 1
    client = admin(broker.bootstrap)
    deleted = client.delete_records([TopicPartition(topic_name, 0, 2000)])
    assert deleted[TopicPartition(topic_name, 0, 2000)].result(10).low_watermark == 2000
    wire.send(sock, wire.header(1, 4) + wire.fetch_v4(topic_name, following, 0, 0, partition_max_bytes=4096))
    error, batches = wire.fetch_v4_result(wire.receive(sock))
    assert (error, batches) == (1, []), "OFFSET_OUT_OF_RANGE"
    wire.send(sock, wire.header(1, 4) + wire.fetch_v4(topic_name, 2000, 0, 0, partition_max_bytes=4096))
    error, batches = wire.fetch_v4_result(wire.receive(sock))
    # Batches are served whole: the first is the one holding offset 2000, wherever the
    # producer's batches happened to start.
    assert error == 0 and batches[0][0] <= 2000 <= batches[0][1]


def test_slatedb_metadata_files_do_not_pile_up_in_a_local_folder(make_broker, topic_name):
    # SlateDB writes a manifest per memtable flush and compaction. Its garbage collector
    # (here every second, for files a second old) must keep deleting the old ones: in a
    # local folder it failed on every pass after the first, and they stayed for good.
    fast_gc = {
        f"SLATEDB_GARBAGE_COLLECTOR_OPTIONS.{kind}_OPTIONS.{field}": "1s"
        for kind in ("MANIFEST", "COMPACTIONS")
        for field in ("INTERVAL", "MIN_AGE")
    }
    broker = make_broker(env=fast_gc)
    create_topic(broker.bootstrap, topic_name)
    manifests = broker.data_dir / "shale" / "manifest"
    producer = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all", "linger.ms": 0})

    def newest():
        return max(int(p.stem) for p in manifests.iterdir())

    sent = 0
    deadline = time.monotonic() + 60
    # One WAL write per message; the broker flushes the memtable every 512 of them, at
    # most every 2 s, and each flush (and compaction) writes a manifest. On until six.
    while newest() < 6 and time.monotonic() < deadline:
        for _ in range(100):
            producer.produce(topic_name, value=b"%d" % sent)
            assert producer.flush(10) == 0
            sent += 1
    written = newest()
    assert written >= 6, f"only {written} manifests were written"

    def collected():
        present = sorted(int(p.stem) for p in manifests.iterdir())
        return present[0] > written - 3

    wait_for(collected, what="the garbage collector to delete old manifests")
    assert "error collecting garbage" not in broker.log(), broker.log()
    assert watermarks(broker, topic_name) == (0, sent)
