"""kcat, from Debian (librdkafka 2.0.2): metadata, produce, consume, tail-follow."""

import subprocess

import pytest


def kcat(broker, *args, stdin=None, timeout=30):
    result = subprocess.run(
        ["kcat", "-b", broker.bootstrap, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_kcat_lists_the_broker_and_an_auto_created_topic(broker, topic_name):
    out = kcat(broker, "-L", "-t", topic_name)
    assert f"broker 0 at {broker.bootstrap} (controller)" in out
    assert f'topic "{topic_name}" with 1 partitions' in out
    assert "partition 0, leader 0, replicas: 0, isrs: 0" in out
    assert topic_name in kcat(broker, "-L")


def test_kcat_round_trips_keys_values_and_headers(broker, topic_name):
    kcat(broker, "-P", "-t", topic_name, "-K", ":", "-H", "trace=abc", "-H", "n=1", stdin="k1:hello\nk2:world\n:no key\n")
    out = kcat(broker, "-C", "-t", topic_name, "-e", "-f", "%k|%s|%h|%o\n")
    assert out.splitlines() == [
        "k1|hello|trace=abc,n=1|0",
        "k2|world|trace=abc,n=1|1",
        "|no key|trace=abc,n=1|2",
    ]


@pytest.mark.parametrize("codec", ["none", "gzip", "snappy", "lz4", "zstd"])
def test_kcat_round_trips_every_compression_codec(broker, topic_name, codec):
    values = [f"{codec}-message-{i}-" + "x" * (i % 50) for i in range(200)]
    kcat(broker, "-P", "-t", topic_name, "-z", codec, stdin="\n".join(values) + "\n")
    out = kcat(broker, "-C", "-t", topic_name, "-e", "-f", "%s\n")
    assert out.splitlines() == values


def test_kcat_consumer_waiting_at_the_end_gets_the_next_message(broker, topic_name):
    kcat(broker, "-P", "-t", topic_name, stdin="first\n")
    follower = subprocess.Popen(
        ["kcat", "-b", broker.bootstrap, "-C", "-t", topic_name, "-o", "1", "-c", "1", "-f", "%o:%s\n"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        kcat(broker, "-P", "-t", topic_name, stdin="second\n")
        out, err = follower.communicate(timeout=30)
    finally:
        follower.kill()
    assert out == "1:second\n", err


def test_kcat_reading_an_empty_topic_reaches_the_end(broker, topic_name):
    kcat(broker, "-L", "-t", topic_name)
    result = subprocess.run(
        ["kcat", "-b", broker.bootstrap, "-C", "-t", topic_name, "-e"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0
    assert result.stdout == ""
    assert "Reached end of topic" in result.stderr
