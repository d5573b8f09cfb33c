"""The `cdrflow` processes under test: one ingress on a fixed port and a few workers, each
started as an operator would, with its log in the run's directory."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

COMMAND = (sys.executable, "-m", "cdrflow.cli")
INGRESS_PORT = 5709  # in the fault suite's range (5701-5709)
# (urlopen below only ever opens http://127.0.0.1: S310's file: worry does not apply.)


class Pipeline:
    def __init__(self, workdir: Path, env: dict[str, str], port: int = INGRESS_PORT) -> None:
        self.workdir = workdir
        self.logs = workdir / "logs"
        self.logs.mkdir(exist_ok=True)
        # Only what this run sets: a CDRFLOW_* of the caller's shell must not leak in.
        base = {k: v for k, v in os.environ.items() if not k.startswith("CDRFLOW_")}
        self.env = {**base, **env}
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.ingress: subprocess.Popen[bytes] | None = None
        self.workers: list[subprocess.Popen[bytes]] = []
        self._serial = itertools.count(1)
        self._all: list[subprocess.Popen[bytes]] = []

    def _start(self, name: str, *args: str, **env: str) -> subprocess.Popen[bytes]:
        log = (self.logs / f"{name}-{next(self._serial):02d}.log").open("wb")
        process = subprocess.Popen(
            [*COMMAND, *args], env={**self.env, **env}, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        self._all.append(process)
        return process

    def migrate(self) -> None:
        done = subprocess.run(
            [*COMMAND, "migrate"], env=self.env, capture_output=True, text=True, timeout=120
        )
        if done.returncode != 0:
            raise RuntimeError(f"cdrflow migrate failed: {done.stdout}{done.stderr}")

    # The ingress.

    def start_ingress(self, spool: Path, timeout: float = 30) -> None:
        """An ingress on the fixed port, with `spool` as its spool directory."""
        self.ingress = self._start(
            *("ingress", "ingress", "--host", "127.0.0.1", "--port", str(self.port)),
            CDRFLOW_SPOOL_DIR=str(spool),
        )
        deadline = time.monotonic() + timeout
        while not self.ingress_ready():
            if self.ingress.poll() is not None:
                raise RuntimeError(f"the ingress exited {self.ingress.returncode}: see {self.logs}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the ingress is not ready after {timeout} s: see {self.logs}")
            time.sleep(0.1)

    def ingress_ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/readyz", timeout=2) as answer:  # noqa: S310
                return bool(answer.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def ingress_metric(self, name: str) -> float | None:
        """A metric of the running ingress, summed over its labels; None when unreachable."""
        try:
            with urllib.request.urlopen(self.url + "/metrics", timeout=5) as answer:  # noqa: S310
                text = answer.read().decode()
        except (urllib.error.URLError, OSError):
            return None
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def signal_ingress(self, signum: signal.Signals) -> subprocess.Popen[bytes]:
        assert self.ingress is not None
        old = self.ingress
        old.send_signal(signum)
        return old

    # Workers.

    def start_worker(self) -> subprocess.Popen[bytes]:
        worker = self._start("worker", "worker")
        self.workers.append(worker)
        return worker

    def signal_worker(self, index: int, signum: signal.Signals) -> subprocess.Popen[bytes]:
        worker = self.workers.pop(index)
        worker.send_signal(signum)
        return worker

    def check_alive(self) -> list[str]:
        """The processes that should run and do not."""
        expected = [p for p in [self.ingress, *self.workers] if p is not None]
        return [f"pid {p.pid} exited {p.returncode}" for p in expected if p.poll() is not None]

    def stop_all(self) -> None:
        for process in self._all:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        for process in self._all:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
