"""Starts real Shale brokers for the compat tests.

Each broker is the release binary on a free port (port 0) with its own temporary data
folder; tests drive it with real Kafka clients and assert on what those clients see.
"""

import os
import re
import signal
import subprocess
import threading
import uuid
from pathlib import Path

import pytest

TARGET_DIR = Path(os.environ.get("CARGO_TARGET_DIR", Path.home() / ".cache" / "shale-target"))
SHALE_BIN = os.environ.get("SHALE_BIN", str(TARGET_DIR / "release" / "shale"))
READY = re.compile(r"Shale listening on 127\.0\.0\.1:(\d+)")


class Broker:
    """One `shale serve` process; restartable on the same data folder."""

    def __init__(self, data_dir, *args, env=None):
        self.data_dir = Path(data_dir)
        self.args = list(args)
        self.env = env
        self.proc = None
        self.port = None
        self.lines = []

    def start(self, timeout=20):
        self.port = None
        self.lines = []
        env = dict(os.environ, **(self.env or {}))
        self.proc = subprocess.Popen(
            [SHALE_BIN, "serve", "--listen", "127.0.0.1:0", "--data-dir", str(self.data_dir), *self.args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        ready = threading.Event()

        def pump(proc=self.proc, lines=self.lines):
            for line in proc.stderr:
                lines.append(line)
                match = READY.search(line)
                if match:
                    self.port = int(match.group(1))
                    ready.set()
            ready.set()

        threading.Thread(target=pump, daemon=True).start()
        ready.wait(timeout)
        if self.port is None:
            self.proc.kill()
            raise RuntimeError("broker did not start:\n" + self.log())
        return self

    @property
    def bootstrap(self):
        return f"127.0.0.1:{self.port}"

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout=20):
        """SIGTERM: a clean shutdown that makes everything acknowledged durable."""
        if self.running():
            self.proc.send_signal(signal.SIGTERM)
            return self.proc.wait(timeout)
        return self.proc.returncode if self.proc else None

    def kill(self):
        """SIGKILL: the broker gets no chance to flush anything."""
        if self.running():
            self.proc.kill()
            self.proc.wait(10)

    def restart(self):
        self.stop()
        return self.start()

    def log(self):
        return "".join(self.lines)

    def memory_mb(self, field="VmRSS"):
        """The process's memory in MB: `VmRSS` now, or `VmHWM`, its peak."""
        with open(f"/proc/{self.proc.pid}/status") as status:
            return next(int(line.split()[1]) >> 10 for line in status if line.startswith(field + ":"))


@pytest.fixture
def make_broker(tmp_path):
    """Factory for brokers with extra flags; all are stopped at the end of the test."""
    started = []

    def make(*args, data_dir=None, env=None):
        broker = Broker(data_dir or tmp_path / f"data-{len(started)}", *args, env=env)
        started.append(broker)
        return broker.start()

    yield make
    for broker in started:
        broker.kill()


@pytest.fixture
def broker(make_broker):
    return make_broker()


@pytest.fixture
def topic_name():
    return f"t-{uuid.uuid4().hex[:12]}"
