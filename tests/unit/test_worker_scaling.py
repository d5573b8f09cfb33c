"""The workers' autoscaling (deploy/k8s/base/worker-autoscaling.yaml), simulated against a
steady and a bursty load: KEDA feeds the HorizontalPodAutoscaler its triggers every 15 s,
the HPA takes the largest count any trigger asks for (within 10% it keeps the count),
scales up at once (its default: double or 4 pods per 15 s) and down only after its
stabilization window, one pod at a time.

The queue model: callbacks arrive in messages of a few; each worker stores about 2,000
callbacks/s and holds up to its prefetch of messages unacked, so RabbitMQ reports as ready
only what is beyond every worker's prefetch. On ready messages alone, a steady load reads
as "idle": the count falls to the minimum, a backlog builds, it climbs again. The rate
trigger keeps the count the load needs."""

from __future__ import annotations

import itertools
import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cdrflow.settings import Settings

SCALED_OBJECT = Path(__file__).resolve().parents[2] / "deploy/k8s/base/worker-autoscaling.yaml"
STEP = 15  # seconds: KEDA's pollingInterval and the HPA's sync period
CALLBACKS_PER_WORKER = 2000  # per second, stored by one worker
CALLBACKS_PER_MESSAGE = 4  # the ingress coalesces a handful of callbacks per message
PREFETCH = Settings().effective_prefetch  # messages a worker holds unacked
STARTUP_STEPS = 2  # a new worker consumes about 30 s after it is asked for
RATE_WINDOW_STEPS = 8  # rate(...[2m])
TOLERANCE = 0.1  # the HPA's: within 10% of the target it keeps the count


@dataclass(frozen=True)
class Scaling:
    minimum: int
    maximum: int
    ready_per_worker: float  # the rabbitmq trigger's value
    rate_per_worker: float | None  # the prometheus trigger's threshold
    down_window_steps: int
    down_pods: int
    down_period_steps: int

    @classmethod
    def from_manifest(cls, *, with_rate: bool = True) -> Scaling:
        spec = _scaled_object()["spec"]
        by_type = {t["type"]: t["metadata"] for t in spec["triggers"]}
        down = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]
        (policy,) = down["policies"]
        assert policy["type"] == "Pods"
        return cls(
            minimum=spec["minReplicaCount"],
            maximum=spec["maxReplicaCount"],
            ready_per_worker=float(by_type["rabbitmq"]["value"]),
            rate_per_worker=float(by_type["prometheus"]["threshold"]) if with_rate else None,
            down_window_steps=down["stabilizationWindowSeconds"] // STEP,
            down_pods=policy["value"],
            down_period_steps=policy["periodSeconds"] // STEP,
        )


def _scaled_object() -> dict[str, Any]:
    docs = yaml.safe_load_all(SCALED_OBJECT.read_text(encoding="utf-8"))
    (found,) = [d for d in docs if d["kind"] == "ScaledObject"]
    return dict(found)


@dataclass
class Cluster:
    scaling: Scaling
    replicas: int
    queue: float = 0.0  # messages in cdr.raw, ready and unacked
    starting: deque[int] = field(default_factory=deque)  # steps left for each new pod
    delivered: deque[float] = field(default_factory=lambda: deque(maxlen=RATE_WINDOW_STEPS))
    recommendations: deque[int] = field(default_factory=deque)
    last_scale_down: int = -(10**9)

    @property
    def serving(self) -> int:
        return self.replicas - len(self.starting)

    def step(self, now: int, load: float) -> None:
        self.starting = deque(left - 1 for left in self.starting if left > 1)
        self.queue += load * STEP / CALLBACKS_PER_MESSAGE
        taken = min(self.queue, self.serving * CALLBACKS_PER_WORKER * STEP / CALLBACKS_PER_MESSAGE)
        self.queue -= taken
        self.delivered.append(taken * CALLBACKS_PER_MESSAGE / STEP)
        self._autoscale(now)

    @property
    def ready(self) -> float:
        return max(0.0, self.queue - self.serving * PREFETCH)

    def _autoscale(self, now: int) -> None:
        rate = sum(self.delivered) / len(self.delivered)
        wanted = [self._count(self.ready, self.scaling.ready_per_worker)]
        if self.scaling.rate_per_worker is not None:
            wanted.append(self._count(rate, self.scaling.rate_per_worker))
        desired = min(self.scaling.maximum, max(self.scaling.minimum, *wanted))
        self.recommendations.append(desired)
        while len(self.recommendations) > self.scaling.down_window_steps:
            self.recommendations.popleft()
        if desired > self.replicas:
            added = min(desired, self.replicas + max(4, self.replicas)) - self.replicas
            self.starting.extend([STARTUP_STEPS] * added)
            self.replicas += added
            return
        stable = max(self.recommendations)
        if stable < self.replicas and now - self.last_scale_down >= self.scaling.down_period_steps:
            self.replicas -= min(self.scaling.down_pods, self.replicas - stable)
            self.last_scale_down = now

    def _count(self, metric: float, per_worker: float) -> int:
        ratio = metric / (per_worker * self.replicas)
        if abs(ratio - 1) <= TOLERANCE:
            return self.replicas
        return math.ceil(metric / per_worker)


@dataclass(frozen=True)
class Minute:
    replicas: int  # at its end
    fewest: int  # the fewest replicas during the minute
    waiting_callbacks: float  # the most in cdr.raw during the minute, ready or held


def simulate(scaling: Scaling, load: Callable[[int], float], minutes: int) -> list[Minute]:
    """The state at the end of each minute; `load(minute)` in callbacks per second."""
    cluster = Cluster(scaling, replicas=scaling.minimum)
    steps_per_minute = 60 // STEP
    history = []
    for minute in range(minutes):
        fewest, most_waiting = cluster.replicas, 0.0
        for step in range(steps_per_minute):
            cluster.step(minute * steps_per_minute + step, load(minute))
            fewest = min(fewest, cluster.replicas)
            most_waiting = max(most_waiting, cluster.queue * CALLBACKS_PER_MESSAGE)
        history.append(Minute(cluster.replicas, fewest, most_waiting))
    return history


def downs_then_ups(history: list[Minute]) -> int:
    """How many times the count fell and then rose again: the sawtooth's teeth."""
    teeth, falling = 0, False
    for before, after in itertools.pairwise(history):
        if after.fewest < before.replicas:
            falling = True
        elif after.replicas > before.replicas and falling:
            teeth, falling = teeth + 1, False
    return teeth


STEADY = 5000.0  # callbacks/s: 2.5 workers' worth


def test_on_ready_messages_alone_a_steady_load_saws() -> None:
    """What the rate trigger fixes (the manifest without it)."""
    history = simulate(Scaling.from_manifest(with_rate=False), lambda _: STEADY, minutes=180)
    settled = history[30:]
    assert downs_then_ups(settled) >= 5
    assert min(m.fewest for m in settled) < math.ceil(STEADY / CALLBACKS_PER_WORKER)
    assert max(m.waiting_callbacks for m in settled) > 2 * STEADY  # seconds behind, again and again


def test_with_the_delivery_rate_a_steady_load_keeps_a_steady_count() -> None:
    scaling = Scaling.from_manifest()
    history = simulate(scaling, lambda _: STEADY, minutes=180)
    settled = history[30:]
    assert downs_then_ups(settled) == 0
    steady_count = math.ceil(STEADY / (scaling.rate_per_worker or 1))
    assert {m.fewest for m in settled} == {m.replicas for m in settled} == {steady_count}
    assert max(m.waiting_callbacks for m in settled) < STEADY  # under a second behind


def test_a_bursty_load_is_followed_up_and_down() -> None:
    """Ten minutes at 12,000 callbacks/s, twenty at 1,000, for three hours."""

    def bursts(minute: int) -> float:
        return 12_000.0 if minute % 30 < 10 else 1_000.0

    scaling = Scaling.from_manifest()
    history = simulate(scaling, bursts, minutes=180)
    needed = math.ceil(12_000 / CALLBACKS_PER_WORKER)
    for start in range(0, 180, 30):
        burst, lull = history[start : start + 10], history[start + 10 : start + 30]
        assert max(m.replicas for m in burst[2:]) >= needed  # up within two minutes
        assert burst[-1].waiting_callbacks < 12_000  # no backlog left by its end
        assert lull[-1].replicas <= 2  # and down again before the next one
        assert min(m.fewest for m in lull) >= scaling.minimum
