"""KafkaJS 2.2 (Node.js): its own protocol implementation, not librdkafka's. Each test runs
one scenario of kafkajs/scenarios.js against the broker and asserts on what KafkaJS saw.

scripts/test.sh installs KafkaJS into SHALE_TEST_NODE_MODULES (a cache outside the checkout).
"""

import json
import os
import subprocess
from pathlib import Path

SCENARIOS = Path(__file__).parent / "kafkajs" / "scenarios.js"
NODE_MODULES = os.environ.get("SHALE_TEST_NODE_MODULES", str(Path.home() / ".cache" / "shale-node" / "node_modules"))


def run(scenario, broker, topic):
    done = subprocess.run(
        ["node", str(SCENARIOS), scenario, broker.bootstrap, topic],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, NODE_PATH=NODE_MODULES),
    )
    assert done.returncode == 0, f"{scenario} failed:\n{done.stderr}\nbroker log:\n{broker.log()[-3000:]}"
    return json.loads(done.stdout)


def test_kafkajs_round_trips_keyed_records_with_headers(broker, topic_name):
    seen = run("roundTrip", broker, topic_name)
    assert seen["created"] is True
    assert all(s["errorCode"] == 0 for s in seen["sent"])
    by_partition = {}
    for record in seen["consumed"]:
        by_partition.setdefault(record["partition"], []).append(record)
    # Each key stays on one partition, in order, with dense offsets and its headers.
    for records in by_partition.values():
        assert [r["offset"] for r in records] == list(range(len(records)))
        assert len({r["key"] for r in records if r["key"] != "nulls"}) == 1
    values = sorted(r["value"] for r in seen["consumed"] if r["value"] is not None)
    assert values == sorted(f"value-{c}-{i}" for c in (0, 1) for i in range(10))
    for record in seen["consumed"]:
        if record["key"] == "nulls":
            assert record["value"] is None and record["headers"] == {}
        else:
            n = record["value"].rsplit("-", 1)[1]
            assert record["headers"] == {"source": "kafkajs", "n": n}
    assert {o["partition"]: o["high"] for o in seen["offsets"]} == {
        p: len(records) for p, records in by_partition.items()
    }
    assert all(o["low"] == 0 for o in seen["offsets"])


def test_kafkajs_group_members_share_partitions_and_resume_from_commits(broker, topic_name):
    seen = run("group", broker, topic_name)
    assert sorted(seen["assignments"][0] + seen["assignments"][1]) == [0, 1, 2, 3]
    assert set(seen["assignments"][0]).isdisjoint(seen["assignments"][1])
    for member, assigned in zip(seen["seen"], seen["assignments"]):
        assert {r["partition"] for r in member} <= set(assigned)
    values = sorted(r["value"] for member in seen["seen"] for r in member)
    assert values == sorted(f"m{i}" for i in range(40))
    assert seen["committed"] == [{"partition": p, "offset": 10} for p in range(4)]
    assert seen["state"] == "Empty"
    assert [(r["partition"], r["offset"], r["value"]) for r in seen["resumed"]] == [(2, 10, "after")]
    assert seen["listed"] == ["consumer"]


def test_kafkajs_admin_client(broker, topic_name):
    seen = run("admin", broker, topic_name)
    assert seen["created"] is True and seen["again"] is False
    assert seen["partitions"] == [0, 1, 2]
    assert seen["createdConfig"] == "3600000"
    # AlterConfigs replaces the topic's whole set: retention.ms goes back to its default.
    assert seen["configs"] == {"cleanup.policy": "delete", "retention.bytes": "1048576", "retention.ms": "604800000"}
    assert seen["brokers"] == 1 and seen["controller"] == 0 and seen["clusterId"]
    assert seen["afterDelete"] == {"low": 4, "high": 10}
    assert seen["fetched"] == 7
    assert seen["resumed"] == [7, 8, 9]
    assert seen["deletedGroups"] == [0]
    assert seen["listedBefore"] is True and seen["listedAfter"] is False
    assert seen["badTopic"] == "INVALID_TOPIC_EXCEPTION"


def test_kafkajs_sees_kafka_errors_and_auto_created_topics(broker, topic_name):
    seen = run("errors", broker, topic_name)
    assert seen["tooLarge"] == "MESSAGE_TOO_LARGE"
    assert seen["fits"] == [0]
    assert seen["autoCreated"] == [[f"{topic_name}-auto", 0]]
    assert seen["autoListed"] is True
    assert seen["badName"] == "INVALID_TOPIC_EXCEPTION"


def test_kafkajs_transactions_and_idempotent_producer(broker, topic_name):
    seen = run("transactions", broker, topic_name)
    assert seen["plain"] == [0]
    assert seen["sentOffsets"] == [2]
    # 0-1 idempotent, 2-3 committed, 4 marker, 5 aborted, 6 marker, 7 committed, 8 marker.
    assert seen["high"] == 9
    assert seen["readCommitted"] == [[0, "idem-0"], [1, "idem-1"], [2, "kept-0"], [3, "kept-1"], [7, "kept-2"]]
    assert seen["readUncommitted"] == [
        [0, "idem-0"],
        [1, "idem-1"],
        [2, "kept-0"],
        [3, "kept-1"],
        [5, "dropped"],
        [7, "kept-2"],
    ]
