"""The s3:// store against a local S3-compatible server (moto): records survive kill -9, and a
second broker on the same bucket fences the first through conditional writes."""

import os
import socket
import subprocess
import sys
import time
import urllib.request

import boto3
import pytest

from clients import consume, create_topic, produce
from conftest import SHALE_BIN
from test_batch_objects import big_values, produce_big
from test_confluent import SMALL_FETCHES, consume_partitions


@pytest.fixture
def s3_env(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    moto = subprocess.Popen(
        [os.path.join(os.path.dirname(sys.executable), "moto_server"), "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            urllib.request.urlopen(urllib.request.Request(f"{endpoint}/shale-test", method="PUT"))
            break
        except OSError:
            assert time.monotonic() < deadline, "moto did not start"
            time.sleep(0.1)
    yield {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT": endpoint,
        "AWS_ALLOW_HTTP": "true",
    }
    moto.kill()
    moto.wait()


def test_s3_store_keeps_acked_records_and_fences_a_second_broker(make_broker, s3_env, topic_name):
    store = ("--store", "s3://shale-test/cluster-a")
    first = make_broker(*store, env=s3_env)
    assert "data in s3://shale-test/cluster-a" in first.log()
    create_topic(first.bootstrap, topic_name)
    reports = produce(first.bootstrap, topic_name, [(0, None, f"s3-{i}".encode(), None, None) for i in range(20)])
    assert all(err is None for *_, err in reports)

    first.kill()
    first.start()
    got = consume(first.bootstrap, topic_name, 0, 20)
    assert [m.value() for m in got] == [f"s3-{i}".encode() for i in range(20)]

    second = make_broker(*store, env=s3_env)
    assert first.proc.wait(30) != 0
    assert "Fenced" in first.log()
    after = produce(second.bootstrap, topic_name, [(0, None, b"second", None, None)])
    assert after[0][3] is None and after[0][1] == 20


@pytest.mark.parametrize(
    "case, store, overrides, expected",
    [
        ("no such bucket", "s3://no-such-bucket/p", {}, "NoSuchBucket"),
        ("http endpoint not allowed", "s3://shale-test/p", {"AWS_ALLOW_HTTP": "false"}, "builder error"),
    ],
)
def test_a_start_on_a_bucket_it_cannot_reach_stops_at_once_and_says_what_to_check(
    s3_env, tmp_path, case, store, overrides, expected
):
    started = time.monotonic()
    done = subprocess.run(
        [SHALE_BIN, "serve", "--listen", "127.0.0.1:0", "--store", store],
        env={**os.environ, **s3_env, **overrides},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0, case
    assert time.monotonic() - started < 30, case
    assert f"cannot reach {store}" in done.stderr and expected in done.stderr, done.stderr[-2000:]
    assert "AWS_ALLOW_HTTP=true for an http:// one" in done.stderr


def bucket(s3_env):
    """A client for the test bucket, with the broker's credentials."""
    return boto3.client(
        "s3",
        endpoint_url=s3_env["AWS_ENDPOINT"],
        aws_access_key_id=s3_env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=s3_env["AWS_SECRET_ACCESS_KEY"],
        region_name=s3_env["AWS_REGION"],
    )


def bucket_keys(s3_env, prefix):
    listing = bucket(s3_env).list_objects_v2(Bucket="shale-test", Prefix=prefix)
    assert not listing["IsTruncated"], "a listing past one page"
    return {entry["Key"] for entry in listing.get("Contents", [])}


def test_large_appends_on_s3_read_back_cold_and_from_recent_objects(make_broker, s3_env, topic_name):
    first = make_broker("--store", "s3://shale-test/cluster-b", env=s3_env)
    create_topic(first.bootstrap, topic_name)
    produce_big(first, topic_name, 0, 40)
    old = bucket_keys(s3_env, "cluster-b/batches/")
    assert old, "large appends should be in batch objects in the bucket"

    # After a restart nothing is kept in memory: every object is read from the bucket.
    first.kill()
    first.start()
    got = consume(first.bootstrap, topic_name, 0, 40)
    assert [m.value() for m in got] == big_values(0, 40)

    # Objects just written are read from memory: take them out of the bucket behind the
    # broker's back, and a consumer at the tail still gets every record.
    produce_big(first, topic_name, 40, 40)
    new = bucket_keys(s3_env, "cluster-b/batches/") - old
    assert new
    for key in new:
        bucket(s3_env).delete_object(Bucket="shale-test", Key=key)
    got = consume(first.bootstrap, topic_name, 0, 40, offset=40)
    assert [m.offset() for m in got] == list(range(40, 80))
    assert [m.value() for m in got] == big_values(40, 40)


def test_a_backlog_on_s3_reads_back_whole_and_in_order_while_objects_load_ahead(
    make_broker, s3_env, topic_name
):
    """A consumer catching up from the bucket, one batch per fetch: the broker loads the
    objects after each fetch's several at a time, and every record comes back once and in
    order, also for a consumer that starts in the middle of the log."""
    broker = make_broker("--store", "s3://shale-test/cluster-c", env=s3_env)
    create_topic(broker.bootstrap, topic_name)
    for flush in range(12):
        produce_big(broker, topic_name, 20 * flush, 20)
    # A flush the producer splits into requests under 256 KiB stays in SlateDB instead.
    assert len(bucket_keys(s3_env, "cluster-c/batches/")) >= 6

    broker.kill()
    broker.start()
    small_fetches = {"max.partition.fetch.bytes": 65536}
    got = consume(broker.bootstrap, topic_name, 0, 240, **small_fetches)
    assert [m.offset() for m in got] == list(range(240))
    assert [m.value() for m in got] == big_values(0, 240)

    got = consume(broker.bootstrap, topic_name, 0, 100, offset=130, **small_fetches)
    assert [m.offset() for m in got] == list(range(130, 230))
    assert [m.value() for m in got] == big_values(130, 100)


@pytest.mark.parametrize("fetches", [{}, SMALL_FETCHES], ids=["limits-fit", "limits-exceed"])
def test_partitions_of_one_fetch_on_s3_each_get_their_own_records(make_broker, s3_env, topic_name, fetches):
    """On S3 the partitions of a fetch whose limits fit in the response's are read at once
    (each read may be a GET); each still gets its own records, whole and in order."""
    broker = make_broker("--store", "s3://shale-test/many", "--object-cache-mb", "0", env=s3_env)
    partitions, count = 6, 20
    create_topic(broker.bootstrap, topic_name, partitions=partitions)
    for p in range(partitions):
        produce_big(broker, topic_name, 100 * p, count, partition=p)
    # After a restart every object is read from the bucket.
    broker.kill()
    broker.start()
    got = consume_partitions(broker.bootstrap, topic_name, partitions, count, **fetches)
    for p in range(partitions):
        assert got[p] == list(enumerate(big_values(100 * p, count)))

