"""The one table `make bench` prints: each figure under a stable key (the smoke test checks
that every key is there and every figure positive), with its ratio to a same-run limit."""

from __future__ import annotations

from dataclasses import dataclass, field

# Every row a table may have, in the order it is printed; `--smoke` fills all of them but
# NOT_ALWAYS.
ROWS = (
    "bare.64.keepalive",
    "bare.64.close",
    "bare.256.keepalive",
    "bare.256.close",
    "ingress.64.keepalive",
    "ingress.64.close",
    "ingress.256.keepalive",
    "ingress.256.close",
    "ingress.rss",
    "limit.publish",
    "limit.database",
    "limit.design",
    "limit.design.cpu",
    "end_to_end",
    "end_to_end.cpu",
    "end_to_end.postgres",
    "limit.design.2",
    "limit.design.2.cpu",
    "end_to_end.2",
    "end_to_end.2.cpu",
    "end_to_end.2.postgres",
    "drain.rate",
    "drain.cpu",
    "drain.rss",
    "storage.bytes_per_call",
    "storage.bytes_per_call.vacuumed",
    "lag.1",
    "lag.2",
    "lag.3",
    "lag.4",
    "lag.5",
    "lag.grows_from",
    "hostile.typical",
    "hostile.versions",
    "hostile.deep",
    "hostile.array",
    "hostile.string",
    "hostile.numbers",
)
OPTIONAL_ROWS = ("drain.rss_million",)
# Only in some runs: a second end-to-end worker count, lag rates past the smoke run's three,
# PostgreSQL's own CPU (measured only on the bench's private PostgreSQL, not with --shared).
NOT_ALWAYS = frozenset(
    {
        *("limit.design.2", "limit.design.2.cpu", "end_to_end.2", "end_to_end.2.cpu"),
        *("end_to_end.postgres", "end_to_end.2.postgres"),
        *("lag.4", "lag.5", *OPTIONAL_ROWS),
    }
)


@dataclass
class Row:
    key: str
    what: str
    value: float
    unit: str
    detail: str = ""  # latencies, ratios to the same-run limits


@dataclass
class Table:
    header: list[str] = field(default_factory=list)
    rows: dict[str, Row] = field(default_factory=dict)

    def add(self, key: str, what: str, value: float, unit: str, detail: str = "") -> Row:
        row = Row(key, what, value, unit, detail)
        self.rows[key] = row
        return row

    def render(self) -> str:
        lines = [*self.header, ""]
        lines.append("| measure | value | detail |")
        lines.append("|---|---:|---|")
        for key in (*ROWS, *OPTIONAL_ROWS):
            row = self.rows.get(key)
            if row is not None:
                lines.append(f"| {row.what} | {_number(row.value)} {row.unit} | {row.detail} |")
        return "\n".join(lines)

    def as_json(self) -> dict[str, object]:
        return {
            "header": self.header,
            "rows": {
                k: {"value": r.value, "unit": r.unit, "detail": r.detail}
                for k, r in self.rows.items()
            },
        }


def _number(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def ratio(value: float, limit: float) -> str:
    return f"{value / limit:.2f}" if limit > 0 else "n/a"


def median_round(ratios: list[float]) -> int:
    """The index of the round whose ratio is the median (the upper one of an even count):
    the row shows that round's runs, side by side, and lists every round's ratio."""
    if not ratios:
        raise ValueError("a row needs at least one round")
    return sorted(range(len(ratios)), key=ratios.__getitem__)[len(ratios) // 2]


def spread(ratios: list[float]) -> str:
    """Every round's ratio, for a row's detail; nothing for a single round."""
    return f" (rounds {', '.join(f'{r:.2f}' for r in ratios)})" if len(ratios) > 1 else ""
