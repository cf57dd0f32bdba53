"""Consumer groups: rebalancing across members, committed offsets that survive restarts,
admin views of groups and lag, and the coordinator's error codes."""

import os
import signal
import struct
import subprocess
import sys
import threading
import time

import pytest
from confluent_kafka import (
    Consumer,
    ConsumerGroupState,
    ConsumerGroupTopicPartitions,
    KafkaError,
    KafkaException,
    TopicPartition,
)

from clients import admin, create_topic, produce
import wire


class Member:
    """A consumer-group member that keeps every message it polls."""

    def __init__(self, broker, group, **config):
        settings = {
            "bootstrap.servers": broker.bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 300,
            **config,
        }
        self.consumer = Consumer(settings)
        self.received = []
        self.closed = False
        OPEN.append(self)

    def poll(self):
        msg = self.consumer.poll(0.05)
        if msg is not None and msg.error() is None:
            self.received.append(msg)

    def assigned(self):
        return sorted(tp.partition for tp in self.consumer.assignment())

    def close(self):
        if not self.closed:
            self.closed = True
            self.consumer.close()


OPEN = []


@pytest.fixture(autouse=True)
def close_members(make_broker):
    """Closes members a failed test left open (before its brokers stop)."""
    yield
    while OPEN:
        OPEN.pop().close()


def pump(members, until, timeout=30):
    """Polls every member until `until()` holds."""
    deadline = time.monotonic() + timeout
    while not until():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out; assignments {[m.assigned() for m in members]}")
        for m in members:
            m.poll()


def fill(broker, topic, partitions, per_partition):
    messages = [
        (p, f"k{p}".encode(), f"p{p}-m{i}".encode(), None, None)
        for p in range(partitions)
        for i in range(per_partition)
    ]
    produce(broker.bootstrap, topic, messages)


def values(members):
    return sorted(msg.value() for m in members for msg in m.received)


def expected(partitions, per_partition):
    return sorted(f"p{p}-m{i}".encode() for p in range(partitions) for i in range(per_partition))


@pytest.mark.parametrize("strategy", ["range", "roundrobin", "cooperative-sticky"])
def test_members_split_partitions_and_take_over_when_one_leaves(broker, topic_name, strategy):
    create_topic(broker.bootstrap, topic_name, partitions=4)
    fill(broker, topic_name, 4, 25)
    options = {"partition.assignment.strategy": strategy}
    first = Member(broker, "split", **options)
    second = Member(broker, "split", **options)
    first.consumer.subscribe([topic_name])
    second.consumer.subscribe([topic_name])
    pump([first, second], lambda: len(first.received) + len(second.received) >= 100)
    pump([first, second], lambda: first.assigned() and second.assigned())
    assert sorted(first.assigned() + second.assigned()) == [0, 1, 2, 3]
    assert values([first, second]) == expected(4, 25)

    second.close()
    pump([first], lambda: first.assigned() == [0, 1, 2, 3])
    before = len(first.received)
    fill(broker, topic_name, 4, 1)
    pump([first], lambda: len(first.received) >= before + 4)
    assert sorted(m.partition() for m in first.received[before:]) == [0, 1, 2, 3]


CRASHING_MEMBER = """
import sys
from confluent_kafka import Consumer
c = Consumer({"bootstrap.servers": sys.argv[1], "group.id": sys.argv[2], "session.timeout.ms": 2000,
              "heartbeat.interval.ms": 300, "auto.offset.reset": "earliest"})
c.subscribe([sys.argv[3]])
announced = False
while True:
    c.poll(0.1)
    if c.assignment() and not announced:
        print("assigned", flush=True)
        announced = True
"""


def test_a_killed_member_is_expelled_after_its_session_timeout(broker, topic_name):
    create_topic(broker.bootstrap, topic_name, partitions=2)
    doomed = subprocess.Popen(
        [sys.executable, "-c", CRASHING_MEMBER, broker.bootstrap, "crash", topic_name],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert doomed.stdout.readline().strip() == "assigned"
        survivor = Member(broker, "crash", **{"session.timeout.ms": 2000})
        survivor.consumer.subscribe([topic_name])
        pump([survivor], lambda: len(survivor.assigned()) == 1)
        doomed.send_signal(signal.SIGKILL)
        pump([survivor], lambda: survivor.assigned() == [0, 1], timeout=20)
    finally:
        doomed.kill()


def test_static_member_restart_keeps_its_partitions_without_rebalance(broker, topic_name):
    create_topic(broker.bootstrap, topic_name, partitions=2)
    revoked = []
    steady = Member(broker, "static", **{"group.instance.id": "steady"})
    steady.consumer.subscribe([topic_name], on_revoke=lambda c, parts: revoked.append(parts))
    restarting = Member(broker, "static", **{"group.instance.id": "restarting"})
    restarting.consumer.subscribe([topic_name])
    pump([steady, restarting], lambda: len(steady.assigned()) == 1 and len(restarting.assigned()) == 1)
    before = (steady.assigned(), restarting.assigned())
    revoked.clear()
    restarting.close()  # static members do not leave the group on close
    again = Member(broker, "static", **{"group.instance.id": "restarting"})
    again.consumer.subscribe([topic_name])
    pump([steady, again], lambda: len(again.assigned()) == 1)
    for _ in range(20):
        steady.poll()
    assert (steady.assigned(), again.assigned()) == before
    assert revoked == [], "the other member must not be rebalanced"


def test_committed_offsets_survive_kill_and_consumers_resume_there(make_broker, topic_name):
    broker = make_broker()
    create_topic(broker.bootstrap, topic_name, partitions=1)
    fill(broker, topic_name, 1, 100)
    first = Member(broker, "resume", **{"enable.auto.commit": False})
    first.consumer.subscribe([topic_name])
    pump([first], lambda: len(first.received) >= 60)
    first.consumer.commit(
        offsets=[TopicPartition(topic_name, 0, 60, metadata="checkpoint-60")], asynchronous=False
    )
    first.close()

    broker.kill()
    broker.start()
    second = Member(broker, "resume", **{"enable.auto.commit": False})
    committed = second.consumer.committed([TopicPartition(topic_name, 0)], timeout=10)[0]
    assert (committed.offset, committed.metadata) == (60, "checkpoint-60")
    second.consumer.subscribe([topic_name])
    pump([second], lambda: len(second.received) >= 40)
    assert [m.offset() for m in second.received] == list(range(60, 100))


def test_auto_commit_and_async_commit_are_stored(broker, topic_name):
    create_topic(broker.bootstrap, topic_name)
    fill(broker, topic_name, 1, 10)
    auto = Member(broker, "auto", **{"auto.commit.interval.ms": 100})
    auto.consumer.subscribe([topic_name])
    tp = [TopicPartition(topic_name, 0)]
    pump([auto], lambda: len(auto.received) >= 10)
    pump([auto], lambda: auto.consumer.committed(tp, timeout=5)[0].offset == 10)
    auto.consumer.commit(offsets=[TopicPartition(topic_name, 0, 7)], asynchronous=True)
    pump([auto], lambda: auto.consumer.committed(tp, timeout=5)[0].offset == 7)


def test_manually_assigned_consumer_commits_without_membership(broker, topic_name):
    create_topic(broker.bootstrap, topic_name)
    fill(broker, topic_name, 1, 5)
    manual = Member(broker, "manual", **{"enable.auto.commit": False})
    manual.consumer.assign([TopicPartition(topic_name, 0, 0)])
    pump([manual], lambda: len(manual.received) >= 5)
    manual.consumer.commit(offsets=[TopicPartition(topic_name, 0, 5)], asynchronous=False)
    assert manual.consumer.committed([TopicPartition(topic_name, 0)], timeout=10)[0].offset == 5
    fresh = Member(broker, "never-committed")
    assert fresh.consumer.committed([TopicPartition(topic_name, 0)], timeout=10)[0].offset == -1001


class KcatMember:
    """A `kcat -G` balanced consumer whose output is read as it arrives."""

    def __init__(self, broker, group, topic):
        self.proc = subprocess.Popen(
            ["kcat", "-b", broker.bootstrap, "-G", group, "-u", "-o", "beginning", "-f", "%p %s\n", topic],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines, self.log = [], []
        threading.Thread(target=self._read, args=(self.proc.stdout, self.lines), daemon=True).start()
        threading.Thread(target=self._read, args=(self.proc.stderr, self.log), daemon=True).start()

    @staticmethod
    def _read(stream, into):
        for line in stream:
            into.append(line.rstrip("\n"))

    def assignments(self):
        return [line for line in self.log if "assigned:" in line]

    def stop(self):
        self.proc.terminate()
        self.proc.wait(15)


def wait_for(condition, timeout=30):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_kcat_balanced_consumers_share_the_topic(broker, topic_name):
    create_topic(broker.bootstrap, topic_name, partitions=4)
    first = KcatMember(broker, "kcat-group", topic_name)
    second = None
    try:
        wait_for(lambda: first.assignments())
        second = KcatMember(broker, "kcat-group", topic_name)
        # The first member is rebalanced down to a share once the second joins.
        wait_for(lambda: second.assignments() and len(first.assignments()) >= 2)
        fill(broker, topic_name, 4, 10)
        wait_for(lambda: len(first.lines) + len(second.lines) >= 40)
    finally:
        first.stop()
        if second:
            second.stop()
    assert first.lines and second.lines, "both members should get partitions"
    assert sorted(first.lines + second.lines) == sorted(f"{p} p{p}-m{i}" for p in range(4) for i in range(10))
    assert not {line.split()[0] for line in first.lines} & {line.split()[0] for line in second.lines}


def test_kafka_python_group_consumes_and_resumes(broker, topic_name):
    from kafka import KafkaConsumer

    create_topic(broker.bootstrap, topic_name, partitions=2)
    fill(broker, topic_name, 2, 20)

    def group_consumer():
        return KafkaConsumer(
            topic_name,
            bootstrap_servers=broker.bootstrap,
            group_id="kp-group",
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            consumer_timeout_ms=10_000,
            session_timeout_ms=6000,
            heartbeat_interval_ms=500,
        )

    first = group_consumer()
    seen = []
    for record in first:
        seen.append(record)
        if len(seen) == 30:
            break
    first.commit()
    first.close()
    second = group_consumer()
    rest = []
    for record in second:
        rest.append(record)
        if len(seen) + len(rest) == 40:
            break
    second.close()
    assert sorted(r.value for r in seen + rest) == expected(2, 20)


def test_admin_lists_describes_reports_lag_and_deletes_groups(broker, topic_name):
    create_topic(broker.bootstrap, topic_name, partitions=2)
    fill(broker, topic_name, 2, 10)
    member = Member(broker, "observed", **{"enable.auto.commit": False, "client.id": "observer-1"})
    member.consumer.subscribe([topic_name])
    pump([member], lambda: member.assigned() == [0, 1])
    member.consumer.commit(
        offsets=[TopicPartition(topic_name, 0, 4), TopicPartition(topic_name, 1, 10)], asynchronous=False
    )
    client = admin(broker.bootstrap)

    stable = client.list_consumer_groups(states={ConsumerGroupState.STABLE}).result(15)
    assert "observed" in [g.group_id for g in stable.valid]
    empty = client.list_consumer_groups(states={ConsumerGroupState.EMPTY}).result(15)
    assert "observed" not in [g.group_id for g in empty.valid]

    described = client.describe_consumer_groups(["observed"])["observed"].result(15)
    assert described.state == ConsumerGroupState.STABLE
    assert described.partition_assignor == "range"
    [m] = described.members
    assert m.client_id == "observer-1"
    assert sorted(tp.partition for tp in m.assignment.topic_partitions) == [0, 1]

    committed = client.list_consumer_group_offsets([ConsumerGroupTopicPartitions("observed")])["observed"]
    offsets = {tp.partition: tp.offset for tp in committed.result(15).topic_partitions}
    assert offsets == {0: 4, 1: 10}
    ends = {p: member.consumer.get_watermark_offsets(TopicPartition(topic_name, p), timeout=10)[1] for p in (0, 1)}
    assert {p: ends[p] - offsets[p] for p in (0, 1)} == {0: 6, 1: 0}

    with pytest.raises(KafkaException) as raised:
        client.delete_consumer_groups(["observed"])["observed"].result(15)
    assert raised.value.args[0].code() == KafkaError.NON_EMPTY_GROUP
    member.close()
    client.delete_consumer_groups(["observed"])["observed"].result(15)
    gone = client.list_consumer_group_offsets([ConsumerGroupTopicPartitions("observed")])["observed"]
    assert all(tp.offset < 0 for tp in gone.result(15).topic_partitions)
    with pytest.raises(KafkaException) as raised:
        client.delete_consumer_groups(["no-such-group"])["no-such-group"].result(15)
    assert raised.value.args[0].code() == KafkaError.GROUP_ID_NOT_FOUND


def test_offset_delete_refuses_subscribed_topics_and_removes_the_rest(broker, topic_name):
    from kafka import KafkaAdminClient
    from kafka import TopicPartition as KafkaTopicPartition
    from kafka.errors import GroupSubscribedToTopicError, NoError

    create_topic(broker.bootstrap, topic_name)
    member = Member(broker, "pruned", **{"enable.auto.commit": False})
    member.consumer.subscribe([topic_name])
    pump([member], lambda: member.assigned() == [0])
    member.consumer.commit(offsets=[TopicPartition(topic_name, 0, 3)], asynchronous=False)
    kadmin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        wanted = [KafkaTopicPartition(topic_name, 0)]
        assert list(kadmin.delete_group_offsets("pruned", wanted).values()) == [GroupSubscribedToTopicError]
        member.close()
        assert list(kadmin.delete_group_offsets("pruned", wanted).values()) == [NoError]
    finally:
        kadmin.close()
    fresh = Member(broker, "pruned")
    assert fresh.consumer.committed([TopicPartition(topic_name, 0)], timeout=10)[0].offset == -1001


def join_group_v0(sock, group, member_id=""):
    body = (
        wire.string(group)
        + struct.pack(">i", 6000)
        + wire.string(member_id)
        + wire.string("consumer")
        + struct.pack(">i", 1)
        + wire.string("range")
        + struct.pack(">i", 4)
        + b"\x00\x00\x00\x00"
    )
    wire.send(sock, wire.header(11, 0) + body)
    response = wire.receive(sock)
    error, generation = struct.unpack_from(">hi", response, 4)
    at = 10
    for _ in range(2):  # protocol name, leader
        (n,) = struct.unpack_from(">h", response, at)
        at += 2 + n
    (n,) = struct.unpack_from(">h", response, at)
    member = response[at + 2 : at + 2 + n].decode()
    return error, generation, member


def test_coordinator_errors_for_bad_members_generations_and_assignments(broker, topic_name):
    create_topic(broker.bootstrap, topic_name)
    sock = wire.connect(broker)
    # FindCoordinator v0 names this broker.
    wire.send(sock, wire.header(10, 0) + wire.string("raw-group"))
    error, node = struct.unpack_from(">hi", wire.receive(sock), 4)
    assert (error, node) == (0, 0)

    error, generation, member = join_group_v0(sock, "raw-group")
    assert error == 0 and generation == 1 and member

    def sync(generation, member, assignment):
        body = (
            wire.string("raw-group")
            + struct.pack(">i", generation)
            + wire.string(member)
            + struct.pack(">i", 1)
            + wire.string(member)
            + struct.pack(">i", len(assignment))
            + assignment
        )
        wire.send(sock, wire.header(14, 0) + body)
        response = wire.receive(sock)
        (error,) = struct.unpack_from(">h", response, 4)
        (n,) = struct.unpack_from(">i", response, 6)
        return error, response[10 : 10 + n]

    # Assignment bytes are the members' business: even garbage is handed back unchanged.
    assert sync(generation, member, b"\xff\x00garbage") == (0, b"\xff\x00garbage")
    assert sync(generation + 5, member, b"")[0] == 22  # ILLEGAL_GENERATION
    assert sync(generation, "nobody", b"")[0] == 25  # UNKNOWN_MEMBER_ID

    def heartbeat(group, generation, member):
        wire.send(sock, wire.header(12, 0) + wire.string(group) + struct.pack(">i", generation) + wire.string(member))
        return struct.unpack_from(">h", wire.receive(sock), 4)[0]

    assert heartbeat("raw-group", generation, member) == 0
    assert heartbeat("raw-group", generation - 1, member) == 22
    assert heartbeat("no-such-group", 1, "x") == 25

    def commit(generation, member, topic, partition):
        body = (
            wire.string("raw-group")
            + struct.pack(">i", generation)
            + wire.string(member)
            + struct.pack(">q", -1)
            + struct.pack(">i", 1)
            + wire.string(topic)
            + struct.pack(">i", 1)
            + struct.pack(">iq", partition, 1)
            + wire.string("")
        )
        wire.send(sock, wire.header(8, 2) + body)
        response = wire.receive(sock)
        (n,) = struct.unpack_from(">h", response, 8)
        return struct.unpack_from(">h", response, 8 + 2 + n + 4 + 4)[0]

    assert commit(generation, member, topic_name, 0) == 0
    assert commit(generation + 1, member, topic_name, 0) == 22
    assert commit(generation, "intruder", topic_name, 0) == 25
    assert commit(generation, member, topic_name, 9) == 3  # UNKNOWN_TOPIC_OR_PARTITION

    # A session timeout below the broker's minimum is refused.
    body = (
        wire.string("raw-group-2")
        + struct.pack(">i", 10)
        + wire.string("")
        + wire.string("consumer")
        + struct.pack(">i", 1)
        + wire.string("range")
        + struct.pack(">i", 0)
    )
    wire.send(sock, wire.header(11, 0) + body)
    assert struct.unpack_from(">h", wire.receive(sock), 4)[0] == 26  # INVALID_SESSION_TIMEOUT


def join_group_v1(sock, group, member_id="", session_ms=10_000, rebalance_ms=1_500):
    body = (
        wire.string(group)
        + struct.pack(">ii", session_ms, rebalance_ms)
        + wire.string(member_id)
        + wire.string("consumer")
        + struct.pack(">i", 1)
        + wire.string("range")
        + struct.pack(">i", 0)
    )
    wire.send(sock, wire.header(11, 1) + body)


def read_join(response):
    error, generation = struct.unpack_from(">hi", response, 4)
    at = 10
    fields = []
    for _ in range(3):  # protocol name, leader, member id
        (n,) = struct.unpack_from(">h", response, at)
        fields.append(response[at + 2 : at + 2 + n].decode())
        at += 2 + n
    return error, generation, fields[1], fields[2]


def test_a_member_that_does_not_rejoin_is_dropped_at_the_rebalance_timeout(broker):
    a, b = wire.connect(broker), wire.connect(broker)
    join_group_v1(a, "slow-rejoin")
    error, generation, _, member_a = read_join(wire.receive(a))
    assert (error, generation) == (0, 1)
    started = time.monotonic()
    join_group_v1(b, "slow-rejoin")  # starts a rebalance; A heartbeats but never rejoins

    def heartbeat():
        wire.send(a, wire.header(12, 0) + wire.string("slow-rejoin") + struct.pack(">i", generation) + wire.string(member_a))
        return struct.unpack_from(">h", wire.receive(a), 4)[0]

    codes = set()
    b.settimeout(0.3)
    while True:
        codes.add(heartbeat())
        try:
            response = wire.receive(b)
            break
        except TimeoutError:
            assert time.monotonic() - started < 10, "the rebalance never completed"
    error, generation, leader, member_b = read_join(response)
    assert 27 in codes  # REBALANCE_IN_PROGRESS told A to rejoin
    assert (error, generation, leader) == (0, 2, member_b), "B alone forms the next generation"
    assert heartbeat() == 25  # A was dropped: UNKNOWN_MEMBER_ID


def test_kafka_python_members_split_and_take_over(broker, topic_name):
    from kafka import KafkaConsumer

    create_topic(broker.bootstrap, topic_name, partitions=2)

    def member():
        return KafkaConsumer(
            topic_name,
            bootstrap_servers=broker.bootstrap,
            group_id="kp-split",
            session_timeout_ms=6000,
            heartbeat_interval_ms=300,
        )

    first, second = member(), member()

    def assigned(c):
        return sorted(tp.partition for tp in c.assignment())

    deadline = time.monotonic() + 30
    while not (assigned(first) and assigned(second)):
        assert time.monotonic() < deadline, (assigned(first), assigned(second))
        first.poll(timeout_ms=50)
        second.poll(timeout_ms=50)
    assert sorted(assigned(first) + assigned(second)) == [0, 1]
    second.close()
    while assigned(first) != [0, 1]:
        assert time.monotonic() < deadline + 30, assigned(first)
        first.poll(timeout_ms=50)
    first.close()


def committed_offsets(client, group):
    """A group's committed offsets as {(topic, partition): offset}, as an admin sees them."""
    listed = client.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])[group].result(15)
    return {(tp.topic, tp.partition): tp.offset for tp in listed.topic_partitions if tp.offset >= 0}


def listed_groups(client):
    return {g.group_id for g in client.list_consumer_groups().result(15).valid}


def test_committed_offsets_expire_after_offsets_retention(make_broker, topic_name):
    """`--offsets-retention-ms` (Kafka's offsets.retention.minutes): an empty group's offsets
    go that long after it emptied, and the group with them; a live group keeps its
    subscribed topics' offsets and loses the others' that long after their commit; a
    manually assigned consumer's offsets go that long after their commit."""
    broker = make_broker("--offsets-retention-ms", "3000")
    subscribed, other, manual_topic = f"{topic_name}-a", f"{topic_name}-b", f"{topic_name}-c"
    for name in (subscribed, other, manual_topic):
        create_topic(broker.bootstrap, name)
    client = admin(broker.bootstrap)

    left = Member(broker, "left", **{"enable.auto.commit": False})
    left.consumer.subscribe([subscribed])
    pump([left], lambda: left.assigned() == [0])
    left.consumer.commit(offsets=[TopicPartition(subscribed, 0, 5)], asynchronous=False)
    left.close()

    live = Member(broker, "live", **{"enable.auto.commit": False})
    live.consumer.subscribe([subscribed])
    pump([live], lambda: live.assigned() == [0])
    live.consumer.commit(
        offsets=[TopicPartition(subscribed, 0, 3), TopicPartition(other, 0, 4)], asynchronous=False
    )

    manual = Member(broker, "manual", **{"enable.auto.commit": False})
    manual.consumer.assign([TopicPartition(manual_topic, 0, 0)])
    manual.consumer.commit(offsets=[TopicPartition(manual_topic, 0, 2)], asynchronous=False)
    manual.close()

    assert committed_offsets(client, "left") == {(subscribed, 0): 5}
    assert committed_offsets(client, "live") == {(subscribed, 0): 3, (other, 0): 4}
    assert committed_offsets(client, "manual") == {(manual_topic, 0): 2}
    assert {"left", "live", "manual"} <= listed_groups(client)

    pump([live], lambda: committed_offsets(client, "live") != {(subscribed, 0): 3, (other, 0): 4})
    assert committed_offsets(client, "live") == {(subscribed, 0): 3}
    pump([live], lambda: not {"left", "manual"} & listed_groups(client))
    assert committed_offsets(client, "left") == {}
    assert committed_offsets(client, "manual") == {}
    for _ in range(40):  # two more retention periods: the subscribed topic's offset stays
        live.poll()
        time.sleep(0.1)
    assert committed_offsets(client, "live") == {(subscribed, 0): 3}
    live.close()

    broker.args = ["--offsets-retention-ms", "3600000"]
    broker.restart()
    client = admin(broker.bootstrap)
    assert committed_offsets(client, "left") == {}
    assert committed_offsets(client, "manual") == {}
    assert committed_offsets(client, "live") == {(subscribed, 0): 3}
    assert listed_groups(client) == {"live"}
