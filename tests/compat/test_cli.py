"""`shale serve` flags and SHALE_* variables, including bad values."""

import os
import subprocess
import time

import pytest
from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import NewTopic

from clients import admin, consume, produce
from conftest import SHALE_BIN


@pytest.mark.parametrize(
    "args, message",
    [
        (["--listen", "not-an-address"], "invalid value 'not-an-address' for '--listen"),
        (["--default-partitions", "0"], "--default-partitions"),
        (["--auto-create-topics", "maybe"], "--auto-create-topics"),
        (["--store", "gs://bucket/x"], "unsupported store URL"),
        (["--advertise", "no-port"], "--advertise must be host:port"),
        (["--log", "shale=[[["], "invalid --log filter"),
        (["--object-min-kb", "0"], "--object-min-kb"),
        (["--direct-io", "sometimes"], "--direct-io"),
        (["--queued-max-request-bytes", "100"], "--queued-max-request-bytes"),
        (["--connections-max-idle-ms", "0"], "--connections-max-idle-ms"),
    ],
)
def test_bad_flags_fail_with_a_clear_message(tmp_path, args, message):
    result = subprocess.run(
        [SHALE_BIN, "serve", "--data-dir", str(tmp_path), *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=dict(os.environ, SHALE_LISTEN="127.0.0.1:0"),
    )
    assert result.returncode != 0
    assert message in result.stderr


def test_a_port_in_use_is_reported(broker, tmp_path):
    result = subprocess.run(
        [SHALE_BIN, "serve", "--listen", broker.bootstrap, "--data-dir", str(tmp_path / "other")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    assert f"cannot listen on {broker.bootstrap}" in result.stderr


def test_environment_variables_configure_the_broker(make_broker, topic_name):
    broker = make_broker(env={"SHALE_DEFAULT_PARTITIONS": "3", "SHALE_AUTO_CREATE_TOPICS": "false"})
    client = admin(broker.bootstrap)
    metadata = client.list_topics(topic_name, timeout=10)
    assert metadata.topics[topic_name].error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART
    client.create_topics([NewTopic(topic_name)])[topic_name].result(15)
    assert len(client.list_topics(timeout=10).topics[topic_name].partitions) == 3


def test_advertise_sets_the_address_in_metadata(make_broker):
    broker = make_broker("--advertise", "kafka.example:19999")
    brokers = admin(broker.bootstrap).list_topics(timeout=10).brokers
    assert [(b.host, b.port) for b in brokers.values()] == [("kafka.example", 19999)]


def test_memory_store_serves_without_touching_the_data_dir(make_broker, tmp_path, topic_name):
    data_dir = tmp_path / "never-created"
    broker = make_broker("--store", "memory://", data_dir=data_dir)
    assert "memory (not persisted)" in broker.log()
    produce(broker.bootstrap, topic_name, [(0, None, b"in memory", None, None)])
    assert consume(broker.bootstrap, topic_name, 0, 1)[0].value() == b"in memory"
    assert not data_dir.exists()


def test_file_url_store_uses_that_folder(make_broker, tmp_path, topic_name):
    folder = tmp_path / "via-url"
    broker = make_broker("--store", f"file://{folder}")
    produce(broker.bootstrap, topic_name, [(0, None, b"on disk", None, None)])
    assert any(folder.rglob("*.sst")), "SlateDB objects should be in the --store folder"


def test_clients_reconnect_after_an_idle_connection_is_closed(make_broker, topic_name):
    broker = make_broker("--connections-max-idle-ms", "1000")
    producer = Producer({"bootstrap.servers": broker.bootstrap, "acks": "all"})
    producer.produce(topic_name, b"before")
    assert producer.flush(15) == 0
    time.sleep(2.5)
    assert "idle for 1000 ms" in broker.log()
    producer.produce(topic_name, b"after")
    assert producer.flush(15) == 0
    assert [m.value() for m in consume(broker.bootstrap, topic_name, 0, 2)] == [b"before", b"after"]


def test_connections_beyond_the_limit_wait_for_a_free_slot(make_broker):
    import struct
    import wire

    broker = make_broker("--max-connections", "2")

    def api_versions(sock):
        wire.send(sock, wire.header(18, 0, correlation_id=9))
        return struct.unpack_from(">ih", wire.receive(sock))

    first, second = wire.connect(broker), wire.connect(broker)
    assert api_versions(first) == (9, 0) and api_versions(second) == (9, 0)
    third = wire.connect(broker)
    wire.send(third, wire.header(18, 0, correlation_id=9))
    third.settimeout(1.0)
    try:
        third.recv(1)
        raise AssertionError("a connection beyond the limit was served")
    except TimeoutError:
        pass
    first.close()
    third.settimeout(10)
    assert struct.unpack_from(">ih", wire.receive(third)) == (9, 0)
