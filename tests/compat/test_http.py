"""The HTTP/JSON API (`--http`): key streams, the global log and conditional appends over
the same key logs Kafka clients use, checked against confluent-kafka and kafka-python."""

import base64
import json
import re
import threading
import time
import urllib.error
import urllib.request

from confluent_kafka import Consumer, Producer, TopicPartition
from kafka.partitioner.default import murmur2

from confluent_kafka.admin import ConfigResource, ConfigSource, ResourceType

from clients import admin, consume, create_topic, produce

HTTP_READY = re.compile(r"HTTP API listening on 127\.0\.0\.1:(\d+)")


def http_base(broker):
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for line in list(broker.lines):
            match = HTTP_READY.search(line)
            if match:
                return f"http://127.0.0.1:{match.group(1)}"
        time.sleep(0.05)
    raise AssertionError("no HTTP address in the log:\n" + broker.log())


def call(base, method, path, body=None, raw=None, headers=None):
    """(status, parsed JSON body) of one request."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(base + path, data=data, method=method)
    if body is not None:
        request.add_header("Content-Type", "application/json")
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def http_broker(make_broker, *args):
    broker = make_broker("--http", "127.0.0.1:0", *args)
    return broker, http_base(broker)


def test_key_streams_and_the_global_log_see_kafka_records(make_broker, topic_name):
    broker, base = http_broker(make_broker)
    create_topic(broker.bootstrap, topic_name, partitions=3)
    sent = [(None, f"k{i % 4}".encode(), f"v{i}".encode(), [("n", str(i).encode())], None) for i in range(40)]
    reports = produce(broker.bootstrap, topic_name, sent, **{"compression.type": "lz4", "linger.ms": 20})
    assert all(err is None for *_, err in reports)
    where = {v: (p, o) for p, o, v, _ in reports}

    for k in range(4):
        status, body = call(base, "GET", f"/v1/topics/{topic_name}/keys/k{k}/records")
        assert status == 200
        values = [r["value"] for r in body["records"]]
        assert values == [f"v{i}" for i in range(40) if i % 4 == k]
        for r in body["records"]:
            assert (r["partition"], r["offset"]) == where[r["value"].encode()]
            assert r["key"] == f"k{k}" and r["topic"] == topic_name
            assert r["headers"] == {"n": r["value"][1:]}
        assert body["next"] == 10
        assert call(base, "GET", f"/v1/topics/{topic_name}/keys/k{k}/count")[1]["count"] == 10

    # Paging through one key.
    status, page = call(base, "GET", f"/v1/topics/{topic_name}/keys/k1/records?from=3&limit=4")
    assert [r["value"] for r in page["records"]] == ["v13", "v17", "v21", "v25"] and page["next"] == 7

    # The global log: every record once, in sequence order, paged.
    seen, start = [], 0
    while True:
        status, body = call(base, "GET", f"/v1/log?from={start}&limit=7")
        assert status == 200
        if not body["records"]:
            break
        seen.extend(body["records"])
        start = body["next"]
    sequences = [r["sequence"] for r in seen]
    assert sequences == sorted(sequences) and len(set(sequences)) == 40
    assert sorted(r["value"] for r in seen) == sorted(f"v{i}" for i in range(40))
    per_partition = {}
    for r in seen:
        per_partition.setdefault(r["partition"], []).append(r["offset"])
    assert all(offsets == sorted(offsets) for offsets in per_partition.values())


def test_http_appends_are_kafka_records(make_broker, topic_name):
    broker, base = http_broker(make_broker)
    create_topic(broker.bootstrap, topic_name, partitions=4)
    status, body = call(
        base, "POST", f"/v1/topics/{topic_name}/keys/order-7/records",
        {"value": "created", "headers": {"source": "http"}, "expected_version": 0},
    )
    assert status == 200 and body["version"] == 1
    # Kafka's default partitioner (Java's, murmur2) would put the key on the same partition.
    assert body["partition"] == (murmur2(b"order-7") & 0x7FFFFFFF) % 4
    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "http-check"})
    consumer.assign([TopicPartition(topic_name, body["partition"], 0)])
    msg = None
    deadline = time.monotonic() + 10
    while msg is None and time.monotonic() < deadline:
        msg = consumer.poll(0.3)
    consumer.close()
    assert (msg.key(), msg.value(), msg.headers(), msg.offset()) == (b"order-7", b"created", [("source", b"http")], 0)

    # base64 for binary values, both ways.
    blob = bytes(range(256))
    status, body = call(
        base, "POST", f"/v1/topics/{topic_name}/keys/order-7/records?encoding=base64",
        {"value": base64.b64encode(blob).decode()},
    )
    assert status == 200 and body["version"] == 2
    status, body = call(base, "GET", f"/v1/topics/{topic_name}/keys/order-7/records?from=1&encoding=base64")
    assert base64.b64decode(body["records"][0]["value"]) == blob
    # A null value is a tombstone.
    status, body = call(base, "POST", f"/v1/topics/{topic_name}/keys/order-7/records", {"value": None})
    assert status == 200 and body["version"] == 3
    assert call(base, "GET", f"/v1/topics/{topic_name}/keys/order-7/records?from=2")[1]["records"][0]["value"] is None


def test_conditional_appends_have_one_winner_per_version(make_broker, topic_name):
    broker, base = http_broker(make_broker)
    create_topic(broker.bootstrap, topic_name, partitions=2)
    path = f"/v1/topics/{topic_name}/keys/account-1/records"
    wins, conflicts = [], []
    lock = threading.Lock()

    def writer(name):
        for attempt in range(40):
            current = call(base, "GET", f"/v1/topics/{topic_name}/keys/account-1/count")[1]["count"]
            status, body = call(base, "POST", path, {"value": f"{name}-{attempt}", "expected_version": current})
            with lock:
                if status == 200:
                    wins.append((body["version"], f"{name}-{attempt}"))
                else:
                    assert status == 409 and body["current_version"] > current, body
                    conflicts.append(body["current_version"])

    threads = [threading.Thread(target=writer, args=(f"w{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    versions = sorted(v for v, _ in wins)
    assert versions == list(range(1, len(wins) + 1)), "exactly one winner per version"
    assert conflicts, "six writers on one key must collide"
    stream = call(base, "GET", f"{path}?limit=1000")[1]["records"]
    assert [r["value"] for r in stream] == [value for _, value in sorted(wins)]

    # A Kafka producer writing the key moves its version too.
    produce(broker.bootstrap, topic_name, [(None, b"account-1", b"from-kafka", None, None)])
    status, body = call(base, "POST", path, {"value": "stale", "expected_version": len(wins)})
    assert status == 409 and body["current_version"] == len(wins) + 1


def test_reads_follow_the_tail_and_survive_a_restart(make_broker, topic_name):
    broker, base = http_broker(make_broker)
    create_topic(broker.bootstrap, topic_name)
    call(base, "POST", f"/v1/topics/{topic_name}/keys/k/records", {"value": "one"})
    result = {}

    def wait_for_second():
        started = time.monotonic()
        result["key"] = call(base, "GET", f"/v1/topics/{topic_name}/keys/k/records?from=1&wait_ms=10000")
        result["key_elapsed"] = time.monotonic() - started

    def wait_on_log():
        result["log"] = call(base, "GET", "/v1/log?from=1&wait_ms=10000")

    waiters = [threading.Thread(target=wait_for_second), threading.Thread(target=wait_on_log)]
    for w in waiters:
        w.start()
    time.sleep(0.5)
    produce(broker.bootstrap, topic_name, [(0, b"k", b"two", None, None)])
    for w in waiters:
        w.join()
    assert [r["value"] for r in result["key"][1]["records"]] == ["two"]
    assert result["key_elapsed"] < 5
    assert [r["value"] for r in result["log"][1]["records"]] == ["two"]
    # Nothing new: an empty answer after wait_ms.
    started = time.monotonic()
    assert call(base, "GET", f"/v1/topics/{topic_name}/keys/k/records?from=2&wait_ms=300")[1]["records"] == []
    assert time.monotonic() - started >= 0.3

    broker.kill()
    broker.restart()
    base = http_base(broker)
    status, body = call(base, "GET", f"/v1/topics/{topic_name}/keys/k/records")
    assert [r["value"] for r in body["records"]] == ["one", "two"]
    assert call(base, "POST", f"/v1/topics/{topic_name}/keys/k/records", {"value": "three", "expected_version": 2})[1]["version"] == 3


def test_bad_requests_get_json_errors(make_broker, topic_name):
    broker, base = http_broker(make_broker)
    create_topic(broker.bootstrap, topic_name)
    create_topic(broker.bootstrap, topic_name + "-plain", config={"shale.key.index": "false"})
    path = f"/v1/topics/{topic_name}/keys/k/records"
    assert call(base, "GET", "/v1/nowhere")[0] == 404
    assert call(base, "GET", "/v1/topics/no-such-topic/keys/k/records")[0] == 404
    assert call(base, "GET", f"/v1/topics/{topic_name}-plain/keys/k/records")[0] == 400
    assert call(base, "GET", f"{path}?limit=0")[0] == 400
    assert call(base, "GET", f"{path}?from=-1")[0] == 400
    assert call(base, "GET", f"{path}?encoding=rot13")[0] == 400
    for bad in [b"{", b"[1,2]", b'"text"', b'{"value": 5}', b'{"value": "x", "expected_version": -1}',
                b'{"value": "x", "headers": [1]}', b'{"valeu": "x"}']:
        status, body = call(base, "POST", path, raw=bad, headers={"Content-Type": "application/json"})
        assert 400 <= status < 500 and "error" in body, (bad, status, body)
    status, body = call(base, "POST", f"{path}?encoding=base64", {"value": "***"})
    assert status == 400 and "base64" in body["error"]
    huge = json.dumps({"value": "x" * (3 << 20)}).encode()
    assert call(base, "POST", path, raw=huge, headers={"Content-Type": "application/json"})[0] == 413
    # Nothing was half-written.
    assert call(base, "GET", f"/v1/topics/{topic_name}/keys/k/count")[1]["count"] == 0
    assert broker.running()


def test_the_key_index_flag_sets_the_default_of_topics_that_do_not_set_it(make_broker, topic_name):
    """`--key-index false`: keyed records of topics that do not set shale.key.index are not
    indexed (keyed produce then skips the index's work), a topic that sets it still is, and
    DescribeConfigs says where each value comes from, as it does for `--retention-ms`."""
    broker, base = http_broker(make_broker, "--key-index", "false", "--retention-ms", "3600000")
    indexed = topic_name + "-indexed"
    create_topic(broker.bootstrap, topic_name)
    create_topic(broker.bootstrap, indexed, config={"shale.key.index": "true", "retention.ms": "7200000"})
    sent = [(None, b"k", f"v{i}".encode(), None, None) for i in range(5)]
    for topic in (topic_name, indexed):
        assert [err for *_, err in produce(broker.bootstrap, topic, sent)] == [None] * 5
        assert [m.value() for m in consume(broker.bootstrap, topic, 0, 5)] == [v for _, _, v, _, _ in sent]
    status, body = call(base, "GET", f"/v1/topics/{topic_name}/keys/k/records")
    assert status == 400 and "index" in body["error"], body
    status, body = call(base, "GET", f"/v1/topics/{indexed}/keys/k/records")
    assert status == 200 and [r["value"] for r in body["records"]] == [f"v{i}" for i in range(5)]

    client = admin(broker.bootstrap)
    described = {}
    for topic in (topic_name, indexed):
        resource = ConfigResource(ResourceType.TOPIC, topic)
        described[topic] = client.describe_configs([resource])[resource].result(15)
    flag = described[topic_name]["shale.key.index"]
    assert (flag.value, flag.source, flag.is_default) == ("false", ConfigSource.STATIC_BROKER_CONFIG.value, False)
    own = described[indexed]["shale.key.index"]
    assert (own.value, own.source) == ("true", ConfigSource.DYNAMIC_TOPIC_CONFIG.value)
    retention = described[topic_name]["retention.ms"]
    assert (retention.value, retention.source) == ("3600000", ConfigSource.STATIC_BROKER_CONFIG.value)
    # Synonyms name the broker configs the flags stand for, as Kafka's admin tools show them.
    assert [(s.name, s.value, s.source) for s in retention.synonyms.values()] == [
        ("log.retention.ms", "3600000", ConfigSource.STATIC_BROKER_CONFIG.value),
        ("log.retention.hours", "168", ConfigSource.DEFAULT_CONFIG.value),
    ]
    own_retention = described[indexed]["retention.ms"]
    assert [(s.name, s.value, s.source) for s in own_retention.synonyms.values()] == [
        ("retention.ms", "7200000", ConfigSource.DYNAMIC_TOPIC_CONFIG.value),
        ("log.retention.ms", "3600000", ConfigSource.STATIC_BROKER_CONFIG.value),
        ("log.retention.hours", "168", ConfigSource.DEFAULT_CONFIG.value),
    ]
    segment = described[topic_name]["segment.ms"]
    assert (segment.value, segment.source, segment.is_default) == ("604800000", ConfigSource.DEFAULT_CONFIG.value, True)


def test_counts_and_time_ranges(make_broker, topic_name):
    broker, base = http_broker(make_broker)
    create_topic(broker.bootstrap, topic_name, partitions=2)
    start = 1_700_000_000_000
    sent = [(i % 2, f"k{i % 2}".encode(), f"v{i}".encode(), None, start + i * 1000) for i in range(20)]
    assert all(err is None for *_, err in produce(broker.bootstrap, topic_name, sent))
    window = f"since_ms={start + 5000}&until_ms={start + 15000}"

    status, body = call(base, "GET", f"/v1/topics/{topic_name}/count")
    assert status == 200 and body["count"] == 20 and body["partitions"] == {"0": 10, "1": 10}
    assert call(base, "GET", f"/v1/topics/{topic_name}/count?partition=1")[1]["count"] == 10
    assert call(base, "GET", f"/v1/topics/{topic_name}/count?{window}")[1]["count"] == 10
    assert call(base, "GET", f"/v1/topics/{topic_name}/count?partition=0&{window}")[1]["count"] == 5
    assert call(base, "GET", f"/v1/topics/{topic_name}/count?partition=7")[0] == 404

    assert call(base, "GET", f"/v1/topics/{topic_name}/keys/k0/count")[1]["count"] == 10
    assert call(base, "GET", f"/v1/topics/{topic_name}/keys/k0/count?{window}")[1]["count"] == 5
    status, body = call(base, "GET", f"/v1/topics/{topic_name}/keys/k0/records?{window}")
    assert [r["value"] for r in body["records"]] == ["v6", "v8", "v10", "v12", "v14"]
    assert [r["timestamp"] for r in body["records"]] == [start + i * 1000 for i in (6, 8, 10, 12, 14)]
    assert body["next"] == 10  # paging moves past the records outside the range
    status, body = call(base, "GET", f"/v1/log?{window}&limit=1000")
    assert sorted(int(r["value"][1:]) for r in body["records"]) == list(range(5, 15))

    # One topic's records by time, in sequence order; another topic's stay out.
    produce(broker.bootstrap, topic_name + "-other", [(None, b"k0", b"elsewhere", None, start + 6000)])
    status, body = call(base, "GET", f"/v1/topics/{topic_name}/records?{window}")
    assert status == 200
    assert sorted(int(r["value"][1:]) for r in body["records"]) == list(range(5, 15))
    assert {r["topic"] for r in body["records"]} == {topic_name}
    sequences = [r["sequence"] for r in body["records"]]
    assert sequences == sorted(sequences)
    status, body = call(base, "GET", f"/v1/topics/{topic_name}/records?limit=7")
    assert len(body["records"]) == 7
    rest = call(base, "GET", f"/v1/topics/{topic_name}/records?from={body['next']}")[1]["records"]
    assert len(rest) == 13
    assert call(base, "GET", "/v1/topics/no-such-topic/records")[0] == 404


def test_key_streams_read_the_same_from_index_copies_and_from_batches(make_broker, topic_name):
    """Records up to shale.key.index.copy.max.bytes are served from their index entries,
    bigger ones from their batches: a reader cannot tell which."""
    broker, base = http_broker(make_broker)
    copied, uncopied = topic_name + "-copied", topic_name + "-batches"
    create_topic(broker.bootstrap, copied, partitions=2)
    create_topic(broker.bootstrap, uncopied, partitions=2, config={"shale.key.index.copy.max.bytes": "0"})
    values = [f"v{i}".encode() * (1 + i * 3) for i in range(30)]
    for topic in (copied, uncopied):
        sent = [(None, b"key", value, [("n", str(i).encode()), ("empty", None)], 1_700_000_000_000 + i)
                for i, value in enumerate(values)]
        codec = {"compression.type": "zstd" if topic == copied else "none"}
        assert all(err is None for *_, err in produce(broker.bootstrap, topic, sent, **codec))
    pages = {}
    for topic in (copied, uncopied):
        status, body = call(base, "GET", f"/v1/topics/{topic}/keys/key/records?limit=100")
        assert status == 200 and body["next"] == 30
        pages[topic] = body["records"]
    for a, b in zip(pages[copied], pages[uncopied], strict=True):
        for field in ("partition", "offset", "timestamp", "key", "value", "headers"):
            assert a[field] == b[field], (field, a, b)
    assert [r["value"].encode() for r in pages[copied]] == values
    assert [r["timestamp"] for r in pages[copied]] == [1_700_000_000_000 + i for i in range(30)]
    assert pages[copied][4]["headers"] == {"n": "4", "empty": None}


def test_key_streams_of_large_appends_give_each_record_its_offset(make_broker, topic_name):
    """Large appends go to batch objects as received, each batch still carrying the
    producer's base offset of 0; their key-index entries must have the offsets the broker
    assigned, whether the entry holds a copy of the record or points at its batch."""
    broker, base = http_broker(make_broker)
    pointed, copied = topic_name + "-pointed", topic_name + "-copied"
    create_topic(broker.bootstrap, pointed)
    create_topic(broker.bootstrap, copied, config={"shale.key.index.copy.max.bytes": "65536"})
    for topic in (pointed, copied):
        by_key = {}
        for round_ in range(3):
            keys = [f"k{i % 3}" for i in range(8)]
            sent = [(0, k.encode(), f"{round_}-{i}".encode().ljust(16 << 10, b"."), None, None)
                    for i, k in enumerate(keys)]
            reports = produce(broker.bootstrap, topic, sent, **{"linger.ms": 50})
            assert all(err is None for *_, err in reports)
            key_of = {value: k for (_, _, value, _, _), k in zip(sent, keys)}
            for _, offset, value, _ in reports:
                by_key.setdefault(key_of[value], []).append((offset, value.decode()))
        for key, expected in by_key.items():
            status, body = call(base, "GET", f"/v1/topics/{topic}/keys/{key}/records?limit=100")
            assert status == 200
            assert [(r["offset"], r["value"]) for r in body["records"]] == sorted(expected)
        assert sum(len(records) for records in by_key.values()) == 24
    batch_objects = [p for p in (broker.data_dir / "shale" / "batches").rglob("*") if p.is_file()]
    assert len(batch_objects) >= 6, "each round of 128 KiB is at least one object per topic"


def test_a_key_spread_over_many_batches_is_read_without_holding_them(make_broker, topic_name):
    """A key with one record in each of 300 batches of ~512 KB: a page of its records reads
    all 150 MB of them, and must not hold them at once."""
    broker, base = http_broker(make_broker)
    create_topic(broker.bootstrap, topic_name)
    producer = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 1000, "batch.size": 600_000})
    filler = b"f" * 1024
    for batch in range(300):
        producer.produce(topic_name, key=b"spread", value=b"%d" % batch + filler)
        for i in range(500):
            producer.produce(topic_name, key=b"k%d" % i, value=filler)
        producer.flush(30)
    with open(f"/proc/{broker.proc.pid}/clear_refs", "w") as refs:
        refs.write("5")  # restarts the peak RSS count (VmHWM) from the RSS now
    before_mb = broker.memory_mb()
    status, body = call(base, "GET", f"/v1/topics/{topic_name}/keys/spread/records?limit=1000")
    assert status == 200 and body["next"] == 300
    assert [r["value"] for r in body["records"]] == [f"{b}".ljust(len(filler) + len(str(b)), "f") for b in range(300)]
    assert [r["offset"] for r in body["records"]] == [501 * b for b in range(300)]
    held_mb = broker.memory_mb("VmHWM") - before_mb
    assert held_mb < 50, f"the read held {held_mb} MB"


def test_key_streams_and_the_global_log_show_committed_transactions_only(make_broker, topic_name):
    from confluent_kafka import Producer

    broker, base = http_broker(make_broker)
    create_topic(broker.bootstrap, topic_name, partitions=2)
    producer = Producer({"bootstrap.servers": broker.bootstrap, "transactional.id": "http-" + topic_name})
    producer.init_transactions(15)

    def in_transaction(values, commit):
        producer.begin_transaction()
        for value in values:
            producer.produce(topic_name, key=b"acct", value=value.encode())
        producer.flush(10)
        if commit:
            producer.commit_transaction(15)
        elif commit is False:
            producer.abort_transaction(15)

    in_transaction(["a1", "a2"], commit=False)
    in_transaction(["c1", "c2"], commit=True)
    in_transaction(["open"], commit=None)  # left open: nothing after it may show yet

    def key_values():
        return [r["value"] for r in call(base, "GET", f"/v1/topics/{topic_name}/keys/acct/records")[1]["records"]]

    def log_values(limit):
        seen, start = [], 0
        while True:
            body = call(base, "GET", f"/v1/log?from={start}&limit={limit}")[1]
            if not body["records"]:
                return seen, start
            seen += [r["value"] for r in body["records"]]
            start = body["next"]

    assert key_values() == ["c1", "c2"]
    # One record per page: pages of aborted records and markers alone still move on.
    assert log_values(1)[0] == ["c1", "c2"]
    # The key's version leaves out aborted records and counts the open one: it may commit.
    assert call(base, "GET", f"/v1/topics/{topic_name}/keys/acct/count")[1]["count"] == 3
    status, body = call(base, "POST", f"/v1/topics/{topic_name}/keys/acct/records", {"value": "x", "expected_version": 5})
    assert (status, body.get("current_version")) == (409, 3)

    producer.commit_transaction(15)
    assert key_values() == ["c1", "c2", "open"]
    seen, end = log_values(1)
    assert seen == ["c1", "c2", "open"]
    # Following the log's tail from its end: the next committed record wakes the reader.
    waiter = {}
    thread = threading.Thread(
        target=lambda: waiter.update(body=call(base, "GET", f"/v1/log?from={end}&wait_ms=10000")[1])
    )
    thread.start()
    time.sleep(0.3)
    in_transaction(["late"], commit=True)
    thread.join(15)
    assert [r["value"] for r in waiter["body"]["records"]] == ["late"]
