"""Large appends (16 KiB or more of one partition in one request in a local folder, 256 KiB on
S3) are written once, to batch objects beside SlateDB's files. Consumers see them like any other records, from any offset
and in any fetch size; acked ones survive SIGKILL; retention and topic deletion delete the
objects, and objects left by a crash are swept at the next start."""

import time

import pytest

from clients import admin, consume, create_topic, produce
from test_confluent import SMALL_FETCHES
from test_durability import assert_acked_records_survived, produce_until_killed
from test_retention import FAST, wait_for, watermarks
import wire

BIG = 16 << 10

# Objects go through the page cache instead of direct I/O (the default in a local folder).
PAGE_CACHE = ("--direct-io", "false")
IO_PATHS = pytest.mark.parametrize("io", [(), PAGE_CACHE], ids=["direct-io", "page-cache"])


def objects(broker):
    """The batch object files in the broker's data folder."""
    return [p for p in (broker.data_dir / "shale" / "batches").rglob("*") if p.is_file()]


def big_values(first, count):
    return [str(n).encode().ljust(BIG, b".") for n in range(first, first + count)]


def produce_big(broker, topic, first, count, partition=0):
    """One producer flush of `count` 16 KiB values: ~`count` x 16 KiB in a few requests."""
    messages = [(partition, None, v, None, None) for v in big_values(first, count)]
    reports = produce(broker.bootstrap, topic, messages, **{"linger.ms": 50})
    assert all(err is None for *_, err in reports)
    return reports


@IO_PATHS
def test_records_of_large_and_small_appends_read_back_from_any_offset(make_broker, topic_name, io):
    broker = make_broker(*io)
    create_topic(broker.bootstrap, topic_name)
    produce_big(broker, topic_name, 0, 40)
    # Several batches of one partition in one Produce request: one object holds them all.
    sock = wire.connect(broker)
    batches = b"".join(wire.record_batch(big_values(40 + 30 * i, 30)) for i in range(3))
    wire.send(sock, wire.header(0, 3) + wire.produce_v3(topic_name, 0, batches))
    assert wire.produce_v3_error(wire.receive(sock)) == (0, 40)
    sock.close()
    written = len(objects(broker))
    assert written >= 2, "large appends should be in batch objects"
    # A small append between them stays in SlateDB; one record of 16 KiB is an object.
    small = produce(broker.bootstrap, topic_name, [(0, None, b"small", None, None)])
    assert small[0][1] == 130
    assert len(objects(broker)) == written
    produce_big(broker, topic_name, 131, 1)
    assert len(objects(broker)) == written + 1
    produce_big(broker, topic_name, 132, 39)

    def expected(offset):
        return b"small" if offset == 130 else str(offset).encode().ljust(BIG, b".")

    for start, fetch in [(0, {}), (55, {}), (100, SMALL_FETCHES)]:
        got = consume(broker.bootstrap, topic_name, 0, 171 - start, offset=start, **fetch)
        assert [m.offset() for m in got] == list(range(start, 171)), (start, fetch)
        assert all(m.value() == expected(m.offset()) for m in got), (start, fetch)


@IO_PATHS
def test_acknowledged_large_appends_survive_sigkill(make_broker, topic_name, io):
    broker = make_broker(*io)
    create_topic(broker.bootstrap, topic_name, partitions=2)
    acked = produce_until_killed(
        broker, topic_name, 2, lambda i: str(i).encode().ljust(BIG, b"."), 3000, **{"linger.ms": 20}
    )
    assert objects(broker), "the load should have gone to batch objects"
    broker.start()
    assert_acked_records_survived(broker, topic_name, 2, acked)


def test_retention_and_topic_deletion_delete_batch_objects(make_broker, topic_name):
    broker = make_broker(*FAST)
    config = {"retention.ms": "2000", "segment.ms": "500"}
    create_topic(broker.bootstrap, topic_name, config=config)
    # Retention may delete a round's objects before the last is written, and the journal
    # holds each for up to ~100 ms before it is a file: count every file seen.
    seen = set()

    def seen_at_least(count):
        seen.update(objects(broker))
        return len(seen) >= count

    for round in range(3):
        produce_big(broker, topic_name, 40 * round, 40)
        wait_for(lambda: seen_at_least(round + 1), what=f"round {round}'s batch objects")
        time.sleep(0.6)
    assert len(seen) >= 3
    wait_for(lambda: watermarks(broker, topic_name) == (120, 120), what="every record to expire")
    wait_for(lambda: not objects(broker), what="the expired batch objects to go")
    assert "deleted the segment's batch objects" in broker.log()

    other = topic_name + "-deleted"
    create_topic(broker.bootstrap, other)
    produce_big(broker, other, 0, 40)
    assert objects(broker)
    client = admin(broker.bootstrap)
    client.delete_topics([other])[other].result(10)
    wait_for(lambda: not objects(broker), what="the deleted topic's batch objects to go")


def test_objects_left_by_a_crash_are_swept_at_the_next_start(make_broker, topic_name):
    broker = make_broker()
    create_topic(broker.bootstrap, topic_name)
    produce_big(broker, topic_name, 0, 40)
    kept = objects(broker)
    assert kept
    broker.stop()
    # What an append interrupted by a crash leaves: an object no batch key refers to.
    orphan = kept[0].parent / "0000000000000001"
    orphan.write_bytes(b"never appended")
    broker.start()
    wait_for(lambda: not orphan.exists(), what="the orphan object to be swept")
    assert sorted(objects(broker)) == sorted(kept), "referenced objects stay"
    got = consume(broker.bootstrap, topic_name, 0, 40)
    assert [m.value() for m in got] == big_values(0, 40)


def test_the_object_threshold_is_a_flag(make_broker, topic_name):
    broker = make_broker("--object-min-kb", "64")
    create_topic(broker.bootstrap, topic_name)
    produce_big(broker, topic_name, 0, 1)
    assert not objects(broker), "16 KiB is below the threshold"
    sock = wire.connect(broker)
    wire.send(sock, wire.header(0, 3) + wire.produce_v3(topic_name, 0, wire.record_batch(big_values(1, 5))))
    assert wire.produce_v3_error(wire.receive(sock)) == (0, 1)
    sock.close()
    assert len(objects(broker)) == 1, "80 KiB in one request is an object"
    got = consume(broker.bootstrap, topic_name, 0, 6)
    assert [m.value() for m in got] == big_values(0, 6)


@IO_PATHS
def test_offsets_by_time_over_batch_objects_and_sealed_segments(make_broker, topic_name, io):
    """Look-ups by time judge batches by the headers stored with their objects' locations
    and skip sealed segments whose stats say they are older; they must find what a scan
    of every record would."""
    from confluent_kafka import Consumer, TopicPartition
    from confluent_kafka.admin import OffsetSpec

    broker = make_broker(*FAST, *io)
    create_topic(broker.bootstrap, topic_name, config={"retention.ms": "-1", "segment.ms": "500"})
    t0 = 1_700_000_000_000

    def produce_round(records):
        reports = produce(broker.bootstrap, topic_name, records, **{"linger.ms": 50})
        assert all(err is None for *_, err in reports)
        time.sleep(0.6)  # the next round rolls the segment

    # Segment of round 0: offsets 0-19, newest record t0 + 190.
    produce_round([(0, None, v, None, t0 + 10 * i) for i, v in enumerate(big_values(0, 20))])
    # Round 1: a small append (offset 20, kept in SlateDB), then offsets 21-40 in an object,
    # offset 26 stamped later than anything else.
    produce_round([(0, None, b"small", None, t0 + 10_000)])
    stamps = [t0 + 10_010 + 10 * i for i in range(20)]
    stamps[5] = t0 + 50_000
    produce_round([(0, None, v, None, ts) for v, ts in zip(big_values(21, 20), stamps)])
    # Round 2, in the active segment: offsets 41-60.
    produce_round([(0, None, v, None, t0 + 20_000 + 10 * i) for i, v in enumerate(big_values(41, 20))])
    assert objects(broker), "the large appends should be in batch objects"
    time.sleep(0.5)  # retention's check stores the sealed segments' stats

    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "unused"})
    try:
        def at(ts):
            found = consumer.offsets_for_times([TopicPartition(topic_name, 0, ts)], timeout=10)[0]
            return found.offset

        # A timestamp equal to a sealed segment's newest record still finds it there.
        assert at(t0 - 1) == 0
        assert at(t0 + 190) == 19
        assert at(t0 + 191) == 20
        assert at(t0 + 10_005) == 21
        # The first record at or after the time, not the closest: offset 26 comes first.
        assert at(t0 + 10_055) == 26
        assert at(t0 + 20_015) == 26
        assert at(t0 + 50_000) == 26
        assert at(t0 + 50_001) == -1
    finally:
        consumer.close()
    client = admin(broker.bootstrap)
    tp = TopicPartition(topic_name, 0)
    newest = client.list_offsets({tp: OffsetSpec.max_timestamp()})[tp].result(15)
    assert (newest.offset, newest.timestamp) == (26, t0 + 50_000)
    # What was found is what is there: the record at offset 26 carries that time.
    record = consume(broker.bootstrap, topic_name, 0, 1, offset=26)[0]
    assert record.timestamp() == (1, t0 + 50_000)


def test_acked_large_appends_survive_sigkill_after_memtable_flushes(make_broker, topic_name):
    """Large appends leave only locations in the memtable, so the broker flushes it after
    512 WAL writes (at most every 2 s) to bound what a start replays; records acked before
    and after such flushes all survive SIGKILL."""
    broker = make_broker("--log", "info,shale::log::durability=debug")
    create_topic(broker.bootstrap, topic_name)
    # One 20 KB record per request and one request at a time: a WAL write per record.
    serial = {"linger.ms": 0, "batch.num.messages": 1, "max.in.flight": 1}
    flushed = "memtable flushed to bound the WAL replayed at start"
    acked_at_flush = []

    def flushed_and_200_more_acked(acked_count):
        # A fast disk acks 2500 records before the first flush is due (2 s after start).
        if not acked_at_flush and flushed in broker.log():
            acked_at_flush.append(acked_count)
        return bool(acked_at_flush) and acked_count >= acked_at_flush[0] + 200

    acked = produce_until_killed(
        broker,
        topic_name,
        1,
        lambda i: str(i).encode().ljust(20_000, b"."),
        2500,
        until=flushed_and_200_more_acked,
        **serial,
    )
    assert flushed in broker.log()
    broker.start()
    ends = assert_acked_records_survived(broker, topic_name, 1, acked)
    after = produce(broker.bootstrap, topic_name, [(0, None, b"after restart", None, None)])
    assert after[0][1] == ends[0][1]
