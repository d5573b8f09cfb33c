"""Every cdrflow_* metric that the alert rules and the dashboard use is one the code
defines, every dashboard query parses (promtool checks them as recording rules), and every
series a dashboard query selects is scoped by the dashboard's variables: cdrflow's by
$namespace, RabbitMQ's by $vhost.

Usage (from the repository root): python deploy/check/metrics_used.py OUT_RULES.yaml
Writes the dashboard's queries to OUT_RULES.yaml for `promtool check rules`."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import yaml

ALERTS = Path("deploy/prometheus/alerts.yaml")
DASHBOARD = Path("deploy/grafana/cdrflow.json")
CODE = ("cdrflow", "ingress", "workers", "reconciler")
METRIC = re.compile(r"\bcdrflow_[a-z0-9_]+")
# What prometheus_client appends to the name a metric is defined with.
SUFFIXES = ("_total", "_bucket", "_sum", "_count", "_created")
SELECTOR = re.compile(r"\b(?P<name>(?:cdrflow|rabbitmq)_[a-z0-9_]+|up)\b(?P<matchers>\{[^}]*\})?")
SCOPES = {"cdrflow": 'namespace=~"$namespace"', "up": 'namespace=~"$namespace"'}
SCOPES["rabbitmq"] = 'vhost=~"$vhost"'


def alert_queries() -> Iterator[str]:
    for group in yaml.safe_load(ALERTS.read_text(encoding="utf-8"))["groups"]:
        for rule in group["rules"]:
            yield rule["expr"]


def dashboard_queries() -> Iterator[str]:
    def panels(items: list[dict[str, object]]) -> Iterator[dict[str, object]]:
        for item in items:
            yield item
            yield from panels(item.get("panels", []))  # type: ignore[arg-type]

    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    for panel in panels(dashboard["panels"]):
        for target in panel.get("targets", []):  # type: ignore[attr-defined]
            yield target["expr"]


def defined_names() -> str:
    return "\n".join(
        path.read_text(encoding="utf-8") for root in CODE for path in Path(root).rglob("*.py")
    )


def base_name(metric: str) -> str:
    for suffix in SUFFIXES:
        if metric.endswith(suffix):
            return metric.removesuffix(suffix)
    return metric


def unscoped(query: str) -> Iterator[str]:
    for match in SELECTOR.finditer(query):
        scope = SCOPES[match["name"].split("_", 1)[0]]
        if scope not in (match["matchers"] or ""):
            yield f"{match['name']}: no {scope}"


def main(out: str) -> int:
    code = defined_names()
    queries = [*alert_queries(), *dashboard_queries()]
    used = {base_name(m) for query in queries for m in METRIC.findall(query)}
    # cdrflow_build_info is an Info/Gauge whose name may be given without the _info suffix.
    missing = sorted(
        m for m in used if f'"{m}"' not in code and f'"{m.removesuffix("_info")}"' not in code
    )
    for metric in missing:
        print(f"{metric}: used by the alerts or the dashboard, defined nowhere in the code")
    problems = [f"dashboard: {p}" for q in dashboard_queries() for p in unscoped(q)]
    for problem in problems:
        print(problem)
    # $__rate_interval and the variables are Grafana's; promtool needs real values.
    grafana = {"$__rate_interval": "5m", "$namespace": ".*", "$vhost": ".*"}
    rules = [
        {"record": f"dashboard:query_{i}", "expr": substitute(q, grafana)}
        for i, q in enumerate(dashboard_queries())
    ]
    Path(out).write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    if not missing:
        print(f"{len(used)} cdrflow metrics used by the alerts and the dashboard, all defined")
    if not problems:
        print("every dashboard query scoped by $namespace (cdrflow) and $vhost (RabbitMQ)")
    return 1 if missing or problems else 0


def substitute(query: str, values: dict[str, str]) -> str:
    for name, value in values.items():
        query = query.replace(name, value)
    return query


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
