"""Older releases of the Python clients, still widely deployed: kafka-python 2.0.2 and
aiokafka 0.8.1, in a venv of their own (SHALE_TEST_OLDER_PYTHON, set by scripts/test.sh).
Each test runs one scenario of older/scenarios.py and asserts on what the client saw."""

import json
import os
import subprocess
from pathlib import Path

SCENARIOS = Path(__file__).parent / "older" / "scenarios.py"
PYTHON = os.environ.get(
    "SHALE_TEST_OLDER_PYTHON", str(Path.home() / ".cache" / "shale-venv-older" / "bin" / "python")
)


def run(scenario, broker, topic):
    done = subprocess.run([PYTHON, str(SCENARIOS), scenario, broker.bootstrap, topic], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{scenario} failed:\n{done.stderr[-3000:]}\nbroker log:\n{broker.log()[-3000:]}"
    return json.loads(done.stdout)


def test_kafka_python_2_0_2(broker, topic_name):
    seen = run("kafka_python", broker, topic_name)
    assert seen["cleanup"] == ["delete"]
    # Each key keeps to one partition, with dense offsets.
    per_partition = {}
    for partition, offset in seen["offsets"]:
        per_partition.setdefault(partition, []).append(offset)
    assert all(offsets == list(range(len(offsets))) for offsets in per_partition.values())
    assert sum(len(o) for o in per_partition.values()) == 30
    assert seen["values"] == sorted(f"v{i}" for i in range(30))
    assert [(p, o) for p, o in seen["committed"] if o] == sorted((p, len(o)) for p, o in per_partition.items())
    assert seen["group"] == "consumer"
    assert seen["listed_after_delete"] is False


def test_aiokafka_0_8_1_transactions(broker, topic_name):
    seen = run("aiokafka", broker, topic_name)
    # 0-2 committed, 3 marker, 4 aborted, 5 marker, 6 committed, 7 marker.
    assert seen["seen"] == [[0, "kept0"], [1, "kept1"], [2, "kept2"], [6, "last"]]
    assert seen["committed"] == 8
