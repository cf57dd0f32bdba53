"""Hand-built Kafka frames, for sending what no well-behaved client would."""

import socket
import struct
import time
import zlib

from kafka.record.default_records import DefaultRecordBatchBuilder
from kafka.record.util import calc_crc32c


def connect(broker):
    sock = socket.create_connection(("127.0.0.1", broker.port), timeout=10)
    return sock


def header(api_key, version, correlation_id=1, client_id=b"wire-test"):
    """Request header v1 (non-flexible APIs)."""
    return struct.pack(">hhih", api_key, version, correlation_id, len(client_id)) + client_id


def send(sock, payload):
    sock.sendall(struct.pack(">i", len(payload)) + payload)


def receive(sock):
    """One response frame, or None if the broker closed the connection."""
    size = _read_exactly(sock, 4)
    if size is None:
        return None
    return _read_exactly(sock, struct.unpack(">i", size)[0])


def _read_exactly(sock, n):
    data = b""
    while len(data) < n:
        try:
            chunk = sock.recv(n - len(data))
        except ConnectionResetError:
            return None
        if not chunk:
            return None
        data += chunk
    return data


def string(s):
    raw = s.encode()
    return struct.pack(">h", len(raw)) + raw


def record_batch(values):
    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=0,
        is_transactional=False,
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=-1,
        batch_size=1 << 20,
    )
    for i, value in enumerate(values):
        builder.append(i, timestamp=None, key=None, value=value, headers=[])
    return bytes(builder.build())


def produce_v3(topic, partition, records, acks=-1):
    """A Produce v3 request body for one partition."""
    return (
        struct.pack(">hhi", -1, acks, 10_000)
        + struct.pack(">i", 1)
        + string(topic)
        + struct.pack(">i", 1)
        + struct.pack(">ii", partition, len(records))
        + records
    )


def produce_roundtrip(sock, topic, records, version=3):
    """Sends a Produce of `records` to partition 0 of `topic` (v3 by default; v3 to v8 share
    the request layout and the start of the response); returns (error, base offset)."""
    send(sock, header(0, version) + produce_v3(topic, 0, records))
    return produce_v3_error(receive(sock))


def produce_v3_error(response):
    """(error code, base offset) of the single partition in a Produce v3 response."""
    body = response[4:]  # correlation id
    (name_len,) = struct.unpack_from(">h", body, 4)
    at = 4 + 2 + name_len + 4
    _partition, error, base_offset = struct.unpack_from(">ihq", body, at)
    return error, base_offset


def fetch_v4(topic, offset, max_wait_ms, min_bytes, partition_max_bytes=1 << 20, max_bytes=1 << 20):
    """Fetch v4 of partition 0 of `topic`."""
    return (
        struct.pack(">iiiib", -1, max_wait_ms, min_bytes, max_bytes, 0)
        + struct.pack(">i", 1)
        + string(topic)
        + struct.pack(">i", 1)
        + struct.pack(">iqi", 0, offset, partition_max_bytes)
    )


def fetch_v4_partition(response):
    """(error code, high watermark, records) of the one partition of a Fetch v4 response."""
    pos = 8  # correlation id, throttle time
    pos += 4  # topic count
    (name_len,) = struct.unpack_from(">h", response, pos)
    pos += 2 + name_len + 4  # name, partition count
    _, error, high_watermark, _, aborted = struct.unpack_from(">ihqqi", response, pos)
    pos += 4 + 2 + 8 + 8 + 4 + max(aborted, 0) * 16
    (size,) = struct.unpack_from(">i", response, pos)
    return error, high_watermark, response[pos + 4 : pos + 4 + max(size, 0)]


def fetch_v4_result(response):
    """(error code, log offsets of the returned batches as (base, last)) of the one partition."""
    error, _, records = fetch_v4_partition(response)
    batches = []
    while len(records) >= 27:
        base, length = struct.unpack_from(">qi", records, 0)
        (last_delta,) = struct.unpack_from(">i", records, 23)
        batches.append((base, base + last_delta))
        records = records[12 + length :]
    return error, batches


def compressed_batch(codec, records, count):
    """A v2 batch (no keys checked, CRC right) of `count` records whose encoding, compressed
    with `codec` (the attributes' low bits), is `records`."""
    now = int(time.time() * 1000)
    after_crc = struct.pack(">hiqqqhii", codec, count - 1, now, now, -1, -1, -1, count) + records
    crc = calc_crc32c(after_crc)
    return struct.pack(">qiibI", 0, 9 + len(after_crc), 0, 2, crc) + after_crc


def zigzag(n):
    n = (n << 1) ^ (n >> 63)
    out = b""
    while n >= 0x80:
        out += bytes([n & 0x7F | 0x80])
        n >>= 7
    return out + bytes([n])


def gzip_of_zeros(count, key, value_bytes=1 << 20):
    """A gzip batch of `count` records keyed `key`, each value `value_bytes` zeros: 1 MiB
    values compress about a thousandfold, so it holds far more than it weighs."""
    value = bytes(value_bytes)
    gzip = zlib.compressobj(6, zlib.DEFLATED, 31)
    records = b""
    for i in range(count):
        record = b"\0" + zigzag(0) + zigzag(i) + zigzag(len(key)) + key + zigzag(len(value)) + value + zigzag(0)
        records += gzip.compress(zigzag(len(record)) + record)
    return compressed_batch(1, records + gzip.flush(), count)
