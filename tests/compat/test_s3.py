"""The s3:// store against a local S3-compatible server (moto): records survive kill -9, and a
second broker on the same bucket fences the first through conditional writes."""

import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from clients import consume, create_topic, produce


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
