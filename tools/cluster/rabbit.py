"""The three-node RabbitMQ cluster of deploy/cluster/rabbitmq-cluster.sh, seen from Python:
start it, stop one node, and ask it where each queue leads and where each client is."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "cluster" / "rabbitmq-cluster.sh"
NODES = ("c1", "c2", "c3")  # the script's names; the Erlang node of cN is cdrflow-cN@localhost


def node_of(erlang_name: str) -> str:
    """c2 for cdrflow-c2@localhost."""
    return erlang_name.removeprefix("cdrflow-").partition("@")[0]


def amqp_port(node: str) -> int:
    return 5710 + int(node.removeprefix("c"))


@dataclass(frozen=True)
class Placement:
    """Where a queue's replicas are, by node."""

    kind: str
    leader: str
    members: frozenset[str]
    online: frozenset[str]


@dataclass(frozen=True)
class Client:
    """A client connection: the name the client gave it, and the node it is on."""

    name: str
    node: str


class RabbitCluster:
    def __init__(self, workdir: Path) -> None:
        self.env = {**os.environ, "CLUSTER_DIR": str(workdir / "rabbitmq")}
        self.stopped: set[str] = set()

    def _script(self, *args: str) -> str:
        done = subprocess.run(
            [str(SCRIPT), *args], env=self.env, capture_output=True, text=True, timeout=600
        )
        if done.returncode != 0:
            raise RuntimeError(f"{SCRIPT.name} {' '.join(args)}: {done.stderr[-2000:]}")
        return done.stdout

    def start(self) -> None:
        self._script("start")

    def stop_node(self, node: str) -> None:
        self.stopped.add(node)
        self._script("stop", node)

    def crash_node(self, node: str) -> float:
        """SIGKILL the node's Erlang VM: no goodbye to clients or to the other nodes.
        Returns the wall-clock time of the kill."""
        command = ["rabbitmqctl", "-q", "-n", f"cdrflow-{node}@localhost", "eval", "os:getpid()."]
        done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True)
        self.stopped.add(node)
        killed = time.time()
        os.kill(int(done.stdout.strip().strip('"')), signal.SIGKILL)
        return killed

    def remove(self) -> None:
        """Stop every node and delete the cluster's data."""
        self._script("clean")

    def url(self, node: str) -> str:
        return f"amqp://guest:guest@127.0.0.1:{amqp_port(node)}/"

    def all_urls(self) -> str:
        """CDRFLOW_AMQP_URL naming every node."""
        return ",".join(self.url(node) for node in NODES)

    def live_node(self) -> str:
        return next(node for node in NODES if node not in self.stopped)

    def _list(self, *args: str) -> list[dict[str, Any]]:
        command = ["rabbitmqctl", "-q", "-n", f"cdrflow-{self.live_node()}@localhost", *args]
        done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True)
        listed: list[dict[str, Any]] = json.loads(done.stdout or "[]")
        return listed

    def placements(self) -> dict[str, Placement]:
        return {
            q["name"]: Placement(
                kind=q["type"],
                leader=node_of(str(q.get("leader") or "")),
                members=frozenset(node_of(m) for m in q.get("members") or ()),
                online=frozenset(node_of(m) for m in q.get("online") or ()),
            )
            for q in self._list(
                "list_queues", "name", "type", "leader", "members", "online", "--formatter", "json"
            )
        }

    def clients(self) -> list[Client]:
        found = []
        for c in self._list("list_connections", "port", "client_properties", "--formatter", "json"):
            properties = {entry[0]: entry[2] for entry in c["client_properties"]}
            node = next(n for n in NODES if amqp_port(n) == c["port"])
            found.append(Client(str(properties.get("connection_name", "?")), node))
        return found
