"""Hostile and broken input: the broker answers with Kafka errors or closes that one
connection, and keeps serving everyone else."""

import socket
import struct
import subprocess
import time

import pytest

from clients import consume, create_topic
import wire


def assert_still_serving(broker):
    assert broker.running()
    out = subprocess.run(["kcat", "-b", broker.bootstrap, "-L"], capture_output=True, text=True, timeout=30)
    assert f"broker 0 at {broker.bootstrap}" in out.stdout, out.stderr


def test_api_versions_newer_than_supported_gets_the_v0_fallback(broker):
    sock = wire.connect(broker)
    wire.send(sock, wire.header(18, 99, correlation_id=77) + b"\x00" * 8)
    response = wire.receive(sock)
    correlation_id, error, count = struct.unpack_from(">ihi", response)
    assert correlation_id == 77
    assert error == 35  # UNSUPPORTED_VERSION
    keys = {struct.unpack_from(">hhh", response, 10 + 6 * i) for i in range(count)}
    assert (18, 0, 4) in keys  # ApiVersions 0..4
    assert any(k[0] == 0 for k in keys)  # Produce


@pytest.mark.parametrize(
    "frame",
    [
        pytest.param(struct.pack(">i", 2_000_000_000), id="oversized-length"),
        pytest.param(struct.pack(">i", -5), id="negative-length"),
        pytest.param(struct.pack(">i", 8) + struct.pack(">hhi", 9999, 0, 1), id="unknown-api-key"),
        pytest.param(struct.pack(">i", 8) + struct.pack(">hhi", 27, 0, 1), id="unimplemented-api"),
        pytest.param(struct.pack(">i", 3) + b"\x00\x03\x00", id="truncated-header"),
        pytest.param(
            struct.pack(">i", 14) + wire.header(3, 1, client_id=b"") + b"\x7f\xff\xff\xff", id="huge-array-count"
        ),
        pytest.param(
            struct.pack(">i", 18) + wire.header(0, 3, client_id=b"") + b"\x7f\xff" + b"\x00" * 6,
            id="huge-string-length",
        ),
        pytest.param(
            struct.pack(">i", 40) + wire.header(3, 12, client_id=b"") + b"\xff" * 30, id="garbage-flexible-body"
        ),
    ],
)
def test_bad_frames_close_only_their_connection(broker, frame):
    bystander = wire.connect(broker)
    sock = wire.connect(broker)
    sock.sendall(frame)
    assert wire.receive(sock) is None, "the broker should close a connection that sent this"
    wire.send(bystander, wire.header(18, 0, correlation_id=5))
    assert struct.unpack_from(">ih", wire.receive(bystander)) == (5, 0)
    assert_still_serving(broker)


def test_produce_validates_record_batches(broker, topic_name):
    create_topic(broker.bootstrap, topic_name)
    sock = wire.connect(broker)

    def produce(records):
        return wire.produce_roundtrip(sock, topic_name, records)

    good = wire.record_batch([b"a", b"b"])
    assert produce(good) == (0, 0)

    corrupt = bytearray(good)
    corrupt[-1] ^= 0xFF
    assert produce(bytes(corrupt))[0] == 2  # CORRUPT_MESSAGE

    assert produce(good[:-4])[0] == 2  # truncated: CORRUPT_MESSAGE

    old_magic = bytearray(good)
    old_magic[16] = 1
    assert produce(bytes(old_magic))[0] == 43  # UNSUPPORTED_FOR_MESSAGE_FORMAT

    wire.send(sock, wire.header(0, 3) + wire.produce_v3("no-such-topic", 0, good))
    assert wire.produce_v3_error(wire.receive(sock))[0] == 3  # UNKNOWN_TOPIC_OR_PARTITION

    wire.send(sock, wire.header(0, 3) + wire.produce_v3(topic_name, 0, good, acks=2))
    assert wire.produce_v3_error(wire.receive(sock))[0] == 21  # INVALID_REQUIRED_ACKS

    # Nothing rejected was stored: the next good batch lands right after the first.
    assert produce(good) == (0, 2)


def test_compressed_batches_that_expand_past_the_bound_are_refused(broker, topic_name):
    create_topic(broker.bootstrap, topic_name)
    sock = wire.connect(broker)

    def produce(records):
        return wire.produce_roundtrip(sock, topic_name, records)

    # 600 MiB of records in ~0.6 MB (the bound is 64 MiB).
    huge = wire.gzip_of_zeros(600, key=b"k")
    assert produce(huge)[0] == 2  # CORRUPT_MESSAGE
    # From Produce v8 on, as Kafka: INVALID_RECORD, which clients do not retry.
    assert wire.produce_roundtrip(sock, topic_name, huge, version=8)[0] == 87

    # Framed snappy whose one block claims 4 GiB in 5 bytes.
    liar = b"\x82SNAPPY\x00" + struct.pack(">ii", 1, 1) + struct.pack(">i", 5) + b"\xff\xff\xff\xff\x0f"
    assert produce(wire.compressed_batch(2, liar, 1))[0] == 2

    assert broker.memory_mb("VmHWM") < 300
    # Ordinary compressed batches are still taken, after nothing of the refused ones.
    assert produce(wire.gzip_of_zeros(1, key=b"k", value_bytes=100)) == (0, 0)
    assert_still_serving(broker)


def test_a_batch_whose_record_count_does_not_match_its_records_is_refused(broker, topic_name):
    create_topic(broker.bootstrap, topic_name, config={"shale.key.index": "false"})
    sock = wire.connect(broker)

    def keyed(offset_delta):
        record = b"\0" + wire.zigzag(0) + wire.zigzag(offset_delta) + wire.zigzag(1) + b"k" + wire.zigzag(1) + b"v"
        return wire.zigzag(len(record) + 1) + record + wire.zigzag(0)

    one = keyed(0)
    two = one + keyed(1)

    def produce(records, count):
        return wire.produce_roundtrip(sock, topic_name, wire.compressed_batch(0, records, count))

    # One keyed record in ~70 bytes, counted as 2^31 - 1 records (on a topic with the key
    # index, its reads reserved room for that many, ~220 GB, and the failed allocation
    # aborted the broker).
    assert produce(one, 2**31 - 1)[0] == 2  # CORRUPT_MESSAGE
    # Counts the records do not fill, under a valid CRC: Kafka refuses them too. Taken on a
    # topic without the key index, they gave consumers offsets with no record, or records
    # past the batch's last offset.
    assert produce(one, 2)[0] == 2
    assert produce(two, 1)[0] == 2
    assert produce(one + b"\0\0\0", 1)[0] == 2
    assert produce(two, 2) == (0, 0)
    assert produce(one, 1) == (0, 2)
    assert [(m.offset(), m.key()) for m in consume(broker.bootstrap, topic_name, 0, 3)] == [
        (0, b"k"),
        (1, b"k"),
        (2, b"k"),
    ]
    assert_still_serving(broker)


def test_clients_gone_with_long_fetches_pending_free_their_connections(make_broker, topic_name):
    broker = make_broker("--max-connections", "10")
    create_topic(broker.bootstrap, topic_name)
    # Ten clients each leave a fetch waiting an hour for more than will ever come, and go.
    gone = [wire.connect(broker) for _ in range(10)]
    for sock in gone:
        wire.send(sock, wire.header(1, 4) + wire.fetch_v4(topic_name, 0, 3_600_000, 100_000_000))
    time.sleep(0.5)
    for sock in gone:
        sock.close()
    # Their connection slots come back within seconds: a new client is served.
    started = time.monotonic()
    newcomer = wire.connect(broker)
    wire.send(newcomer, wire.header(18, 0, correlation_id=9))
    assert struct.unpack_from(">ih", wire.receive(newcomer)) == (9, 0)
    assert time.monotonic() - started < 8
    # One that only stops sending still gets what it asked.
    half_closed = wire.connect(broker)
    wire.send(half_closed, wire.header(18, 0, correlation_id=10))
    half_closed.shutdown(socket.SHUT_WR)
    assert struct.unpack_from(">ih", wire.receive(half_closed)) == (10, 0)


def test_acks_zero_gets_no_response(broker, topic_name):
    create_topic(broker.bootstrap, topic_name)
    sock = wire.connect(broker)
    wire.send(sock, wire.header(0, 3, correlation_id=1) + wire.produce_v3(topic_name, 0, wire.record_batch([b"x"]), acks=0))
    wire.send(sock, wire.header(18, 0, correlation_id=2))
    correlation_id, error = struct.unpack_from(">ih", wire.receive(sock))
    assert (correlation_id, error) == (2, 0), "the first response must be ApiVersions'"


def test_a_partition_repeated_in_one_produce_request_is_refused(broker, topic_name):
    create_topic(broker.bootstrap, topic_name)
    sock = wire.connect(broker)
    batch = wire.record_batch([b"once"])
    part = struct.pack(">ii", 0, len(batch)) + batch
    body = (
        struct.pack(">hhi", -1, -1, 10_000)
        + struct.pack(">i", 1)
        + wire.string(topic_name)
        + struct.pack(">i", 2)
        + part
        + part
    )
    wire.send(sock, wire.header(0, 3) + body)
    response = wire.receive(sock)
    (name_len,) = struct.unpack_from(">h", response, 8)
    at = 8 + 2 + name_len
    (count,) = struct.unpack_from(">i", response, at)
    results = [struct.unpack_from(">ihq", response, at + 4 + i * 22) for i in range(count)]
    assert [(p, error) for p, error, _ in results] == [(0, 0), (0, 42)]  # the repeat: INVALID_REQUEST
    wire.send(sock, wire.header(0, 3) + wire.produce_v3(topic_name, 0, wire.record_batch([b"next"])))
    assert wire.produce_v3_error(wire.receive(sock)) == (0, 1), "only one copy was stored"


@pytest.mark.parametrize("min_bytes, answers_at_once", [(0, True), (1, False)])
def test_fetch_min_bytes_decides_whether_an_empty_fetch_waits(broker, topic_name, min_bytes, answers_at_once):
    create_topic(broker.bootstrap, topic_name)
    sock = wire.connect(broker)
    started = time.monotonic()
    wire.send(sock, wire.header(1, 4) + wire.fetch_v4(topic_name, 0, 1500, min_bytes))
    assert wire.receive(sock) is not None
    waited = time.monotonic() - started
    # With nothing to read, min_bytes=0 is answered at once; min_bytes=1 waits for max_wait_ms.
    assert (waited < 1.0) == answers_at_once, waited
