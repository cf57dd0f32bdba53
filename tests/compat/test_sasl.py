"""SASL_PLAINTEXT: PLAIN and SCRAM-SHA-256/512 with `--sasl-users`, and an open broker that
lets clients configured for SASL PLAIN in whatever their credentials."""

import asyncio
import base64
import json
import os
import struct
import subprocess
import time

import pytest
from aiokafka.errors import KafkaConnectionError
from confluent_kafka import Producer
from kafka import KafkaProducer
from kafka.errors import KafkaError

import wire
from clients import aiokafka_round_trip, confluent_round_trip, kafka_python_values
from test_kafkajs import NODE_MODULES, SCENARIOS

USERS = "alice:alice-secret,bob:pass:with:colons"


def logged(broker, text, timeout=5):
    """Whether the broker logs `text` within `timeout` seconds (its log is read by a thread)."""
    deadline = time.monotonic() + timeout
    while text not in broker.log():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.fixture
def secured(make_broker):
    """A broker that requires SASL; the users come from the environment, as advised."""
    return make_broker(env={"SHALE_SASL_USERS": USERS})


def kcat(broker, mechanism, user, password, *args, stdin=None):
    return subprocess.run(
        [
            "kcat",
            "-b",
            broker.bootstrap,
            "-X",
            "security.protocol=SASL_PLAINTEXT",
            "-X",
            f"sasl.mechanisms={mechanism}",
            "-X",
            f"sasl.username={user}",
            "-X",
            f"sasl.password={password}",
            *args,
        ],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_kcat_authenticates_with_each_mechanism(secured, topic_name, mechanism):
    produced = kcat(secured, mechanism, "bob", "pass:with:colons", "-P", "-t", topic_name, "-K:", stdin="k:v\n")
    assert produced.returncode == 0, produced.stderr
    consumed = kcat(secured, mechanism, "alice", "alice-secret", "-C", "-t", topic_name, "-e", "-f", "%k=%s @%o\n")
    assert consumed.returncode == 0, consumed.stderr
    assert consumed.stdout == "k=v @0\n"


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_kcat_with_a_wrong_password_or_user_is_refused(secured, topic_name, mechanism):
    refused = kcat(secured, mechanism, "alice", "wrong", "-P", "-t", topic_name, stdin="lost\n")
    assert f"invalid credentials with SASL mechanism {mechanism}" in refused.stderr
    unknown = kcat(secured, mechanism, "mallory", "alice-secret", "-P", "-t", topic_name, stdin="lost\n")
    assert "invalid credentials" in unknown.stderr
    assert logged(secured, "SASL authentication failed")


def test_a_client_without_sasl_is_disconnected_before_any_request(secured):
    sock = wire.connect(secured)
    # ApiVersions is answered, and lists the SASL APIs.
    wire.send(sock, wire.header(18, 0))
    response = wire.receive(sock)
    (count,) = struct.unpack(">i", response[6:10])
    apis = {struct.unpack(">hhh", response[10 + 6 * i : 16 + 6 * i]) for i in range(count)}
    assert (17, 0, 1) in apis and (36, 0, 2) in apis
    # Metadata before authentication closes the connection, as Kafka's SASL listener does.
    wire.send(sock, wire.header(3, 1) + struct.pack(">i", -1))
    assert wire.receive(sock) is None
    assert logged(secured, "Metadata before SASL authentication")


def test_requests_before_authentication_are_limited_to_512_kib(secured, topic_name):
    # A client that has not authenticated cannot start a large request (Kafka's
    # sasl.server.max.receive.size): the broker closes the connection on the length alone.
    sock = wire.connect(secured)
    sock.sendall(struct.pack(">i", 600_000) + bytes(100))
    sock.settimeout(5)
    assert sock.recv(1) == b""
    assert logged(secured, "a frame of 600000 bytes; the limit is 524288")
    # Once authenticated, large requests are read as usual.
    big = "x" * 900_000
    produced = kcat(secured, "SCRAM-SHA-256", "alice", "alice-secret", "-P", "-t", topic_name, stdin=big + "\n")
    assert produced.returncode == 0, produced.stderr
    consumed = kcat(secured, "PLAIN", "alice", "alice-secret", "-C", "-t", topic_name, "-e", "-f", "%S\n")
    assert consumed.stdout == "900000\n", consumed.stderr


def test_sasl_state_errors_on_the_wire(secured):
    # SaslAuthenticate without a handshake: ILLEGAL_SASL_STATE, then the connection closes.
    sock = wire.connect(secured)
    wire.send(sock, wire.header(36, 0) + struct.pack(">i", 3) + b"abc")
    response = wire.receive(sock)
    assert struct.unpack(">h", response[4:6])[0] == 34
    assert wire.receive(sock) is None
    # A v0 handshake (raw tokens to follow) is refused with UNSUPPORTED_VERSION.
    sock = wire.connect(secured)
    wire.send(sock, wire.header(17, 0) + wire.string("PLAIN"))
    response = wire.receive(sock)
    assert struct.unpack(">h", response[4:6])[0] == 35
    assert wire.receive(sock) is None
    # An unknown mechanism: UNSUPPORTED_SASL_MECHANISM with the ones offered.
    sock = wire.connect(secured)
    wire.send(sock, wire.header(17, 1) + wire.string("GSSAPI"))
    response = wire.receive(sock)
    assert struct.unpack(">h", response[4:6])[0] == 33
    assert b"PLAIN" in response and b"SCRAM-SHA-256" in response and b"SCRAM-SHA-512" in response
    assert wire.receive(sock) is None


def confluent_config(broker, mechanism, user, password):
    return {
        "bootstrap.servers": broker.bootstrap,
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanisms": mechanism,
        "sasl.username": user,
        "sasl.password": password,
    }


def test_confluent_kafka_scram_producer_and_group_consumer(secured, topic_name):
    config = confluent_config(secured, "SCRAM-SHA-512", "alice", "alice-secret")
    values, committed = confluent_round_trip(config, topic_name)
    assert values == [f"m{i}".encode() for i in range(5)]
    assert committed == [(0, 5)]


def test_confluent_kafka_reports_an_authentication_error(secured, topic_name):
    errors = []
    producer = Producer(
        {**confluent_config(secured, "SCRAM-SHA-256", "alice", "wrong"), "error_cb": errors.append}
    )
    producer.produce(topic_name, value=b"lost")
    deadline = time.monotonic() + 15
    while not errors and time.monotonic() < deadline:
        producer.poll(0.2)
    assert errors, "no error reported"
    assert "invalid credentials" in errors[0].str()
    assert errors[0].name() == "_AUTHENTICATION"


def test_kafka_python_plain_and_scram(secured, topic_name, caplog):
    for mechanism in ("PLAIN", "SCRAM-SHA-256"):
        producer = KafkaProducer(
            bootstrap_servers=secured.bootstrap,
            security_protocol="SASL_PLAINTEXT",
            sasl_mechanism=mechanism,
            sasl_plain_username="bob",
            sasl_plain_password="pass:with:colons",
            acks="all",
        )
        producer.send(topic_name, mechanism.encode()).get(30)
        producer.close()
    values = kafka_python_values(
        secured.bootstrap,
        topic_name,
        2,
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_plain_username="alice",
        sasl_plain_password="alice-secret",
    )
    assert values == [b"PLAIN", b"SCRAM-SHA-256"]
    # kafka-python logs the broker's reason and gives up bootstrapping.
    with pytest.raises(KafkaError):
        KafkaProducer(
            bootstrap_servers=secured.bootstrap,
            security_protocol="SASL_PLAINTEXT",
            sasl_mechanism="SCRAM-SHA-256",
            sasl_plain_username="alice",
            sasl_plain_password="wrong",
            bootstrap_timeout_ms=3000,
        ).send(topic_name, b"lost").get(10)
    assert "invalid credentials with SASL mechanism SCRAM-SHA-256" in caplog.text


def aiokafka_scram(bootstrap, topic, password):
    return asyncio.run(
        aiokafka_round_trip(
            bootstrap,
            topic,
            b"aio",
            security_protocol="SASL_PLAINTEXT",
            sasl_mechanism="SCRAM-SHA-256",
            sasl_plain_username="alice",
            sasl_plain_password=password,
        )
    )


def test_aiokafka_scram(secured, topic_name, caplog):
    assert aiokafka_scram(secured.bootstrap, topic_name, "alice-secret") == (0, [b"aio"])
    # aiokafka logs the broker's reason and gives up bootstrapping.
    with pytest.raises(KafkaConnectionError):
        aiokafka_scram(secured.bootstrap, topic_name, "wrong")
    assert "SaslAuthenticationFailed: Authentication failed: invalid credentials" in caplog.text


def kafkajs_connected(broker, topic, **env):
    """KafkaJS's `sasl` scenario (produce, then consume in a group) with its connection
    settings from `env` (KAFKAJS_SASL, KAFKAJS_TLS_CA): what it read, or why it was refused."""
    done = subprocess.run(
        ["node", str(SCENARIOS), "sasl", broker.bootstrap, topic],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, NODE_PATH=NODE_MODULES, **env),
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def kafkajs_sasl(broker, topic, sasl):
    return kafkajs_connected(broker, topic, KAFKAJS_SASL=sasl)


@pytest.mark.parametrize("mechanism", ["plain", "scram-sha-256", "scram-sha-512"])
def test_kafkajs_sasl(secured, topic_name, mechanism):
    seen = kafkajs_sasl(secured, topic_name, f"{mechanism}:bob:pass:with:colons")
    assert seen == {"sent": [0], "read": [[0, "a"], [1, "b"]]}
    refused = kafkajs_sasl(secured, topic_name + "-x", f"{mechanism}:bob:wrong")
    assert refused["refused"] == "KafkaJSSASLAuthenticationError"
    assert "invalid credentials" in refused["message"]


def test_an_open_broker_lets_sasl_plain_clients_in_with_any_credentials(broker, topic_name):
    produced = kcat(broker, "PLAIN", "anyone", "anything", "-P", "-t", topic_name, stdin="v\n")
    assert produced.returncode == 0, produced.stderr
    assert kafkajs_sasl(broker, topic_name + "-js", "plain:someone:else") == {
        "sent": [0],
        "read": [[0, "a"], [1, "b"]],
    }
    consumed = subprocess.run(
        ["kcat", "-b", broker.bootstrap, "-C", "-t", topic_name, "-e", "-f", "%s @%o\n"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert consumed.stdout == "v @0\n"
    # SCRAM needs the password to prove the broker to the client, so it is not offered.
    scram = kcat(broker, "SCRAM-SHA-256", "anyone", "anything", "-P", "-t", topic_name, stdin="lost\n")
    assert "Unsupported SASL mechanism: broker's supported mechanisms: PLAIN" in scram.stderr


def test_bad_sasl_users_stop_the_broker_with_a_message(tmp_path):
    from conftest import SHALE_BIN

    done = subprocess.run(
        [SHALE_BIN, "serve", "--listen", "127.0.0.1:0", "--data-dir", str(tmp_path), "--sasl-users", "alice"],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert done.returncode != 0
    assert "--sasl-users" in done.stderr and "`alice` is not name:password" in done.stderr
    # The message never repeats a password.
    done = subprocess.run(
        [SHALE_BIN, "serve", "--listen", "127.0.0.1:0", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=20,
        env=dict(os.environ, SHALE_SASL_USERS="bob:b-pass,:hunter2"),
    )
    assert done.returncode != 0
    assert "an entry has a password but no name" in done.stderr
    assert "hunter2" not in done.stderr and "b-pass" not in done.stderr


def test_the_http_api_asks_the_same_users_for_basic_credentials(make_broker, topic_name):
    from test_http import call, http_base

    broker = make_broker("--http", "127.0.0.1:0", env={"SHALE_SASL_USERS": USERS})
    base = http_base(broker)
    path = f"/v1/topics/{topic_name}/keys/k/records"

    def basic(user, password):
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}

    assert call(base, "POST", path, {"value": "v"})[0] == 401
    assert call(base, "POST", path, {"value": "v"}, headers=basic("alice", "wrong"))[0] == 401
    assert call(base, "GET", "/v1/log", headers=basic("mallory", "alice-secret"))[0] == 401
    status, body = call(base, "POST", path, {"value": "v"}, headers=basic("bob", "pass:with:colons"))
    assert status == 200, body
    status, body = call(base, "GET", path, headers=basic("alice", "alice-secret"))
    assert status == 200 and [r["value"] for r in body["records"]] == ["v"]


def authenticates(broker, mechanism, user, password):
    """Whether a confluent-kafka producer with these credentials gets a record acknowledged;
    False when the broker refuses them."""
    errors = []
    producer = Producer({**confluent_config(broker, mechanism, user, password), "error_cb": errors.append})
    delivered = []
    producer.produce("scram-check", value=b"v", on_delivery=lambda err, msg: delivered.append(err))
    deadline = time.monotonic() + 15
    while not delivered and not errors and time.monotonic() < deadline:
        producer.poll(0.1)
    if errors:
        assert errors[0].name() == "_AUTHENTICATION", errors[0]
        return False
    assert delivered == [None], delivered
    return True


def test_scram_credentials_are_added_changed_and_deleted_without_a_restart(secured):
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import (
        AdminClient,
        ScramCredentialInfo,
        ScramMechanism,
        UserScramCredentialDeletion,
        UserScramCredentialUpsertion,
    )

    def admin():
        return AdminClient(confluent_config(secured, "SCRAM-SHA-512", "alice", "alice-secret"))

    def alter(*alterations):
        outcome, client = {}, admin()
        for user, future in client.alter_user_scram_credentials(list(alterations)).items():
            try:
                future.result(15)
                outcome[user] = None
            except KafkaException as e:
                outcome[user] = (e.args[0].name(), e.args[0].str())
        return outcome

    def infos(description):
        return sorted((i.mechanism.name, i.iterations) for i in description.scram_credential_infos)

    def described(users=None):
        client = admin()
        if users is None:  # one future for all users
            return {u: infos(d) for u, d in client.describe_user_scram_credentials().result(15).items()}
        found = {}
        for user, future in client.describe_user_scram_credentials(users).items():
            try:
                found[user] = infos(future.result(15))
            except KafkaException as e:
                found[user] = e.args[0].name()
        return found

    both_4096 = [("SCRAM_SHA_256", 4096), ("SCRAM_SHA_512", 4096)]
    assert described() == {"alice": both_4096, "bob": both_4096}
    sha256, sha512 = ScramMechanism.SCRAM_SHA_256, ScramMechanism.SCRAM_SHA_512
    assert alter(
        UserScramCredentialUpsertion("carol", ScramCredentialInfo(sha256, 8192), b"carol-pw"),
        UserScramCredentialUpsertion("carol", ScramCredentialInfo(sha512, 4096), b"carol-pw"),
        UserScramCredentialUpsertion("dave", ScramCredentialInfo(sha256, 1000), b"dave-pw"),
        UserScramCredentialDeletion("erin", sha256),
        UserScramCredentialUpsertion("frank", ScramCredentialInfo(sha256, 4096), b"pw", b"s" * 70_000),
        UserScramCredentialUpsertion("gina", ScramCredentialInfo(sha256, 4096), b"pw"),
        UserScramCredentialDeletion("gina", sha256),
    ) == {
        "carol": None,
        "dave": ("UNACCEPTABLE_CREDENTIAL", "Too few iterations"),
        "erin": ("RESOURCE_NOT_FOUND", "Attempt to delete a user credential that does not exist"),
        "frank": ("UNACCEPTABLE_CREDENTIAL", "The salt is too long"),
        "gina": ("DUPLICATE_RESOURCE", "A user credential cannot be altered twice in the same request"),
    }
    assert described(["carol", "dave", "gina"]) == {
        "carol": [("SCRAM_SHA_256", 8192), ("SCRAM_SHA_512", 4096)],
        "dave": "RESOURCE_NOT_FOUND",
        "gina": "RESOURCE_NOT_FOUND",
    }
    assert authenticates(secured, "SCRAM-SHA-256", "carol", "carol-pw")
    assert authenticates(secured, "SCRAM-SHA-512", "carol", "carol-pw")
    assert not authenticates(secured, "SCRAM-SHA-256", "dave", "dave-pw")

    # Stored durably: a restart keeps them.
    secured.kill()
    secured.start()
    assert authenticates(secured, "SCRAM-SHA-256", "carol", "carol-pw")

    # A new password replaces the old one; a deleted mechanism no longer authenticates,
    # the other one still does.
    assert alter(UserScramCredentialUpsertion("carol", ScramCredentialInfo(sha256, 4096), b"new-pw")) == {"carol": None}
    assert not authenticates(secured, "SCRAM-SHA-256", "carol", "carol-pw")
    assert authenticates(secured, "SCRAM-SHA-256", "carol", "new-pw")
    assert alter(UserScramCredentialDeletion("carol", sha256)) == {"carol": None}
    assert not authenticates(secured, "SCRAM-SHA-256", "carol", "new-pw")
    assert authenticates(secured, "SCRAM-SHA-512", "carol", "carol-pw")
    # The flag's users keep their passwords.
    assert authenticates(secured, "SCRAM-SHA-256", "bob", "pass:with:colons")
