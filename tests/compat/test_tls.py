"""TLS on the Kafka listener (`--tls-cert`, `--tls-key`): Kafka's SSL security protocol,
SASL_SSL with `--sasl-users`, and client certificates with `--tls-client-ca` (Kafka's
ssl.client.auth=required), on the Kafka listener and the HTTP API alike. Certificates come
from a throwaway CA (trustme)."""

import asyncio
import base64
import http.client
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request

import pytest
import trustme
from aiokafka.helpers import create_ssl_context
from confluent_kafka import Consumer, Producer
from kafka import KafkaProducer

import wire
from clients import aiokafka_round_trip, confluent_round_trip, kafka_python_values
from conftest import SHALE_BIN
from test_http import http_base
from test_sasl import kafkajs_connected, logged

SCRAM_USERS = "alice:alice-secret"


class Certificates:
    """A CA, the broker's certificate for 127.0.0.1, and a client certificate, as PEM files."""

    def __init__(self, folder):
        self.folder = folder
        ca = trustme.CA()
        self.ca = self.write("ca.pem", ca.cert_pem.bytes())
        server = ca.issue_cert("127.0.0.1", "localhost")
        self.cert = self.write("broker.pem", b"".join(blob.bytes() for blob in server.cert_chain_pems))
        self.key = self.write("broker.key", server.private_key_pem.bytes())
        client = ca.issue_cert("client.shale.test")
        self.client_cert = self.write("client.pem", client.cert_chain_pems[0].bytes())
        self.client_key = self.write("client.key", client.private_key_pem.bytes())
        stranger = trustme.CA().issue_cert("stranger.shale.test")
        self.stranger_cert = self.write("stranger.pem", stranger.cert_chain_pems[0].bytes())
        self.stranger_key = self.write("stranger.key", stranger.private_key_pem.bytes())

    def write(self, name, data):
        path = self.folder / name
        path.write_bytes(data)
        return str(path)

    def flags(self):
        return ["--tls-cert", self.cert, "--tls-key", self.key]


@pytest.fixture
def certs(tmp_path):
    folder = tmp_path / "certs"
    folder.mkdir()
    return Certificates(folder)


@pytest.fixture
def tls_broker(make_broker, certs):
    return make_broker(*certs.flags())


def ssl_config(broker, certs, **extra):
    return {
        "bootstrap.servers": broker.bootstrap,
        "security.protocol": "SSL",
        "ssl.ca.location": certs.ca,
        **extra,
    }


def first_error(config, topic):
    """The first error a producer reports when it cannot get through."""
    errors = []
    producer = Producer({**config, "error_cb": errors.append, "message.timeout.ms": 5000})
    producer.produce(topic, value=b"lost")
    deadline = time.monotonic() + 15
    while not errors and time.monotonic() < deadline:
        producer.poll(0.2)
    return errors[0] if errors else None


def test_confluent_kafka_produces_and_consumes_in_a_group_over_tls(tls_broker, certs, topic_name):
    values, committed = confluent_round_trip(ssl_config(tls_broker, certs), topic_name)
    assert values == [f"m{i}".encode() for i in range(5)]
    assert committed == [(0, 5)]
    assert "Shale listening on" in tls_broker.log() and "(TLS, advertised as" in tls_broker.log()


def test_kcat_lists_produces_and_consumes_over_tls(tls_broker, certs, topic_name):
    tls = ["-X", "security.protocol=SSL", "-X", f"ssl.ca.location={certs.ca}"]

    def kcat(*args, stdin=None):
        done = subprocess.run(
            ["kcat", "-b", tls_broker.bootstrap, *tls, *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    kcat("-P", "-t", topic_name, stdin="one\ntwo\n")
    assert kcat("-C", "-t", topic_name, "-e", "-f", "%s@%o\n") == "one@0\ntwo@1\n"
    assert f'topic "{topic_name}" with 1 partitions' in kcat("-L")


def test_kafka_python_and_aiokafka_over_tls(tls_broker, certs, topic_name):
    producer = KafkaProducer(
        bootstrap_servers=tls_broker.bootstrap, security_protocol="SSL", ssl_cafile=certs.ca, acks="all"
    )
    assert producer.send(topic_name, b"from kafka-python").get(30).offset == 0
    producer.close()

    tls = {"security_protocol": "SSL", "ssl_context": create_ssl_context(cafile=certs.ca)}
    sent = asyncio.run(aiokafka_round_trip(tls_broker.bootstrap, topic_name, b"from aiokafka", **tls))
    assert sent == (1, [b"from kafka-python", b"from aiokafka"])

    values = kafka_python_values(tls_broker.bootstrap, topic_name, 2, security_protocol="SSL", ssl_cafile=certs.ca)
    assert values == [b"from kafka-python", b"from aiokafka"]


def test_kafkajs_over_tls(tls_broker, certs, topic_name):
    seen = kafkajs_connected(tls_broker, topic_name, KAFKAJS_TLS_CA=certs.ca)
    assert seen == {"sent": [0], "read": [[0, "a"], [1, "b"]]}


def test_sasl_ssl_authenticates_over_tls(make_broker, certs, topic_name):
    broker = make_broker(*certs.flags(), env={"SHALE_SASL_USERS": SCRAM_USERS})
    sasl = {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-256",
        "sasl.username": "alice",
        "ssl.ca.location": certs.ca,
        "bootstrap.servers": broker.bootstrap,
    }
    values, committed = confluent_round_trip({**sasl, "sasl.password": "alice-secret"}, topic_name)
    assert values == [f"m{i}".encode() for i in range(5)]
    assert committed == [(0, 5)]
    refused = first_error({**sasl, "sasl.password": "wrong"}, topic_name)
    assert refused is not None and refused.name() == "_AUTHENTICATION"


def test_client_certificates_are_required_with_a_client_ca(make_broker, certs, topic_name):
    broker = make_broker(*certs.flags(), "--tls-client-ca", certs.ca, "--http", "127.0.0.1:0")
    config = ssl_config(broker, certs)
    signed = {"ssl.certificate.location": certs.client_cert, "ssl.key.location": certs.client_key}
    values, _ = confluent_round_trip({**config, **signed}, topic_name, count=2)
    assert values == [b"m0", b"m1"]

    without = first_error(config, topic_name + "-x")
    assert without is not None and "certificate required" in without.str(), without
    assert logged(broker, "TLS handshake failed: peer sent no certificates")
    # A certificate from another CA is not one the broker asked for, so none is sent.
    stranger = {"ssl.certificate.location": certs.stranger_cert, "ssl.key.location": certs.stranger_key}
    refused = first_error({**config, **stranger}, topic_name + "-y")
    assert refused is not None and "certificate required" in refused.str(), refused
    # Neither got a topic created.
    topics = Consumer({**config, **signed, "group.id": "lister"}).list_topics(timeout=15).topics
    assert topic_name in topics and topic_name + "-x" not in topics and topic_name + "-y" not in topics

    # The HTTP API asks for a client certificate too.
    https = http_base(broker).replace("http://", "https://") + "/metrics"
    trusted = ssl.create_default_context(cafile=certs.ca)
    with pytest.raises((urllib.error.URLError, ssl.SSLError, OSError)):
        urllib.request.urlopen(https, context=trusted, timeout=10).read()
    trusted.load_cert_chain(certs.client_cert, certs.client_key)
    with urllib.request.urlopen(https, context=trusted, timeout=30) as response:
        assert "shale_topics 1" in response.read().decode()


def test_a_plaintext_client_is_closed_and_tls_clients_go_on(tls_broker, certs, topic_name):
    with socket.create_connection(("127.0.0.1", tls_broker.port), timeout=10) as sock:
        wire.send(sock, wire.header(18, 0))  # ApiVersions v0, in plaintext
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    # No Kafka answer: at most a TLS alert record (content type 21), then the close.
    assert answer == b"" or answer[0] == 21, answer[:16]
    assert logged(tls_broker, "TLS handshake failed")
    values, _ = confluent_round_trip(ssl_config(tls_broker, certs), topic_name, count=1)
    assert values == [b"m0"]


@pytest.mark.parametrize(
    "flags, message",
    [
        (lambda c: ["--tls-cert", c.cert], "--tls-key"),
        (lambda c: ["--tls-key", c.key], "--tls-cert"),
        (lambda c: ["--tls-cert", c.cert, "--tls-key", c.folder / "missing.key"], "--tls-key"),
        (lambda c: ["--tls-cert", c.key, "--tls-key", c.key], "no PEM certificate"),
        (lambda c: ["--tls-cert", c.cert, "--tls-key", c.client_key], "do not make a key pair"),
        (lambda c: [*c.flags(), "--tls-client-ca", c.key], "--tls-client-ca"),
    ],
)
def test_bad_tls_files_stop_the_broker_with_a_message(tmp_path, certs, flags, message):
    done = subprocess.run(
        [SHALE_BIN, "serve", "--listen", "127.0.0.1:0", "--data-dir", str(tmp_path / "data"), *map(str, flags(certs))],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert done.returncode != 0
    assert message in done.stderr, done.stderr


def test_the_http_api_is_served_over_tls_with_the_same_certificate(make_broker, certs, topic_name):
    broker = make_broker(*certs.flags(), "--http", "127.0.0.1:0", env={"SHALE_SASL_USERS": SCRAM_USERS})
    https = http_base(broker).replace("http://", "https://")
    trusted = ssl.create_default_context(cafile=certs.ca)
    credentials = {"Authorization": "Basic " + base64.b64encode(b"alice:alice-secret").decode()}
    request = urllib.request.Request(https + "/metrics", headers=credentials)
    with urllib.request.urlopen(request, context=trusted, timeout=30) as response:
        assert response.status == 200
        assert "shale_topics 0" in response.read().decode()
    # Plain HTTP gets no answer: the broker waits for a TLS handshake and drops the bytes.
    with pytest.raises((urllib.error.URLError, http.client.HTTPException, OSError)):
        plain = https.replace("https://", "http://") + "/metrics"
        urllib.request.urlopen(urllib.request.Request(plain, headers=credentials), timeout=10)
    assert logged(broker, "HTTP TLS handshake failed")


def test_sighup_serves_a_renewed_certificate_and_keeps_the_old_one_on_bad_files(
    make_broker, certs, topic_name, tmp_path
):
    import shutil
    import signal

    broker = make_broker(*certs.flags())
    assert confluent_round_trip(ssl_config(broker, certs), topic_name, count=1)[0] == [b"m0"]
    renewed_folder = tmp_path / "renewed"
    renewed_folder.mkdir()
    renewed = Certificates(renewed_folder)  # another CA

    with open(certs.cert, "w") as broken:
        broken.write("not a certificate\n")
    broker.proc.send_signal(signal.SIGHUP)
    assert logged(broker, "still serving the previous certificate")
    assert confluent_round_trip(ssl_config(broker, certs), topic_name + "-a", count=1)[0] == [b"m0"]

    shutil.copy(renewed.cert, certs.cert)
    shutil.copy(renewed.key, certs.key)
    broker.proc.send_signal(signal.SIGHUP)
    assert logged(broker, "SIGHUP: TLS certificate and key read again")
    assert confluent_round_trip(ssl_config(broker, renewed), topic_name + "-b", count=1)[0] == [b"m0"]
    refused = first_error(ssl_config(broker, certs), topic_name + "-c")
    assert refused is not None and "certificate verify failed" in refused.str(), refused
    assert broker.running()
