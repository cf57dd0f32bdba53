"""Sarama (Go), the version Debian packages (1.22, set to speak Kafka 2.1): its own protocol
implementation, which picks request versions from its configuration, not from ApiVersions. Each test runs one scenario of sarama/main.go, built by scripts/test.sh into
SHALE_TEST_SARAMA, and asserts on what Sarama saw.
"""

import json
import os
import subprocess
from pathlib import Path

SCENARIOS = os.environ.get("SHALE_TEST_SARAMA", str(Path.home() / ".cache" / "shale-go" / "sarama-scenarios"))


def run(scenario, broker, topic):
    done = subprocess.run([SCENARIOS, scenario, broker.bootstrap, topic], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{scenario} failed:\n{done.stderr}\nbroker log:\n{broker.log()[-3000:]}"
    return json.loads(done.stdout)


def test_sarama_round_trips_records_and_manages_topics(broker, topic_name):
    seen = run("roundTrip", broker, topic_name)
    assert seen["sent"] == list(range(10))
    assert seen["read"] == [
        {"partition": 1, "offset": i, "key": f"k{i % 5}", "value": f"v{i // 5}-{i % 5}", "headers": {"h": str(i % 5)}}
        for i in range(10)
    ]
    assert seen["newest"] == 10
    assert seen["partitions"] == 2 and seen["grown"] == 3
    # ListTopics and DescribeConfig speak DescribeConfigs v0, which Shale still serves.
    assert seen["listed"] == 2
    assert seen["configs"] == {
        "cleanup.policy": {"value": "delete", "default": True},
        "retention.ms": {"value": "3600000", "default": False},
    }
    assert seen["oldest"] == 4


def test_sarama_consumer_group_commits_and_resumes(broker, topic_name):
    # With its default configuration Sarama 1.22 commits with OffsetCommit v1.
    seen = run("group", broker, topic_name)
    assert [(r["partition"], r["offset"], r["value"]) for r in seen["first"]] == [
        (p, o, f"m{o * 3 + p}") for p in range(3) for o in range(4)
    ]
    assert seen["committed"] == {"0": 4, "1": 4, "2": 4}
    assert [(r["partition"], r["offset"], r["value"]) for r in seen["resumed"]] == [(1, 4, "after")]
    assert seen["listed"] == "consumer"
