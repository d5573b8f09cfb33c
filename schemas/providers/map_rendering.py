"""Java's `Map.toString()` rendering, `{key=value, key=value}`, read back.

The rendering is ambiguous: nothing is escaped, so a value holding `, name=` or braces
looks like more fields. It is read with three aids:

- anchors: a field boundary is a comma before a name the provider's document defines
  (spaces around `=` and after the comma tolerated, as some senders write them), or a
  comma before any other name in exactly Java's own form (`, name=`); a name met twice was
  inside a value the first time (the real field follows, in Java's sorted rendering);
- the key order, when the body shows it: a TreeMap renders its keys sorted, so when the
  keys no value can fake (the first, and the documented names met once) are sorted, a
  boundary whose name would break that order is inside a value (`callData=x, name=y`
  before `callSerialNo`); a body whose keys are not sorted keeps the readings above;
- balanced braces and brackets: a comma inside `{...}` or `[...]` of a value (a nested map
  or list) is never a boundary; when a body's braces do not balance they are ignored;
- the signature, when the source signs: `splits` yields every reading in a fixed order,
  the deterministic one first, and the ingress accepts the first that verifies.

Reading is linear in the text (the key order is weighed for at most
`MAX_FIELDS_TO_MERGE` boundaries)."""

from __future__ import annotations

import functools
import itertools
import re
from collections import Counter
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

from schemas.keys import put_keeping
from schemas.providers.errors import Reason, Reject

_BOUNDARY = re.compile(r",(\s*)([A-Za-z_][A-Za-z0-9_.]*)(\s*)=")
# So many keys no value can fake, in sorted order, make a body a TreeMap's rendering: two
# unrelated keys are sorted by chance one time in two, three one time in six.
MIN_SORTED_KEYS = 3
_OPENING, _CLOSING = "{[", "}]"
_BRACKET = re.compile(r"[{}\[\]]")
# Beyond this many fields (an event has 21), no reading merges two fields: each would cost
# a pass over the text.
MAX_FIELDS_TO_MERGE = 64


def splits(text: str, documented: frozenset[str]) -> Iterator[dict[str, Any]]:
    """The distinct readings of `text`, lazily: the deterministic one (`read`) first, then
    the documented names alone, then every name, then, for a rendering of at most
    `MAX_FIELDS_TO_MERGE` fields, the deterministic one with one boundary fewer each (a
    value holding `, caller=`). Each reading is linear in the text."""
    found = _boundaries(text, documented)
    for cuts in _cut_sets(found):
        yield _fields(found.inner, cuts)


def reading(text: str, documented: frozenset[str], index: int) -> dict[str, Any]:
    """`list(splits(text, documented))[index]` (the first reading when there is no such
    index), without building the ~20 readings a rendering has. Like building them all, it
    refuses the text when any reading cannot be read, with that reading's message. Only a
    reading's first pair can fail (every later pair starts at a boundary, `name=`), so
    only first pairs are checked."""
    found = _boundaries(text, documented)
    inner = found.inner
    if inner.strip():  # an empty rendering reads as {} whatever the boundaries
        for cut in _first_cuts(found):
            _pair(inner[:cut])
    if index == 0:  # the deterministic reading (the usual case): the others are not needed
        return _fields(inner, found.first)
    readings = list(_cut_sets(found))
    return _fields(inner, readings[index] if 0 <= index < len(readings) else readings[0])


def read(text: str, documented: frozenset[str]) -> dict[str, Any]:
    """The deterministic reading (see the module doc); `null` is None."""
    return next(splits(text, documented))


def render(fields: Mapping[str, Any]) -> str:
    return "{" + ", ".join(f"{k}={render_value(v)}" for k, v in fields.items()) + "}"


def render_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)  # a Decimal keeps its own text: 0.50 stays 0.50, 1e9 is never expanded


def _inside_braces(text: str) -> str:
    inner = text.strip()
    if not (inner.startswith("{") and inner.endswith("}")):
        raise Reject(Reason.UNPARSEABLE_BODY, "body is neither JSON, form data nor {k=v, ...}")
    return inner[1:-1]


class _Boundary(NamedTuple):
    """A `,name=` the text could be cut at: the comma's place, and the spaces around."""

    start: int
    space_before: str
    name: str
    space_after: str


def _candidates(inner: str) -> list[_Boundary]:
    """Every `,name=` outside the braces and brackets of a value (read once: a match's
    groups cost a call each)."""
    if not _BRACKET.search(inner):  # the common body: flat values
        return [_Boundary(m.start(), *m.groups()) for m in _BOUNDARY.finditer(inner)]
    depth = _depths(inner)
    return [
        _Boundary(m.start(), *m.groups()) for m in _BOUNDARY.finditer(inner) if not depth[m.start()]
    ]


def _anchored(candidates: list[_Boundary], documented: frozenset[str]) -> list[_Boundary]:
    """Boundaries before documented names and in Java's own `, name=` form."""
    return [
        b
        for b in candidates
        if b.name in documented or (b.space_before == " " and not b.space_after)
    ]


def _last_of_each_name(anchored: list[_Boundary]) -> list[int]:
    """A name that appears twice was inside a value the first time (in Java's sorted
    rendering the real field comes later): only its last boundary counts."""
    last = {b.name: b.start for b in anchored}
    return [b.start for b in anchored if last[b.name] == b.start]


@functools.lru_cache(maxsize=1024)  # the documented names, over and over
def _java_order(name: str) -> bytes:
    """Java's String.compareTo order (UTF-16 code units), the order a TreeMap renders."""
    return name.encode("utf-16-be", "surrogatepass")


def _sorted_reading(
    inner: str, anchored: list[_Boundary], documented: frozenset[str]
) -> list[int] | None:
    """The boundaries of a TreeMap's rendering, or None when the body does not show it is
    one. The keys no value can fake (the first; documented names met once) must be sorted;
    between two of them, the other boundaries kept are the most whose names stay in order
    (the documented ones preferred on a tie): a name out of order was inside a value."""
    if not anchored or len(anchored) > MAX_FIELDS_TO_MERGE:
        return None
    first_key = inner[: anchored[0].start].partition("=")[0].strip()
    # The first key is no value's; a name met twice can be either.
    met = Counter(b.name for b in anchored)
    met[first_key] += 1
    fixed = [b for b in anchored if b.name in documented and met[b.name] == 1]
    keys = [_java_order(first_key), *(_java_order(b.name) for b in fixed)]
    if len(keys) < MIN_SORTED_KEYS or keys != sorted(set(keys)):
        return None
    # Only the other boundaries are weighed, segment by segment. The usual body (every name
    # documented and met once) has none: its cuts are the fixed keys'.
    fixed_starts = {b.start for b in fixed}
    loose = [b for b in anchored if b.start not in fixed_starts]
    if not loose:
        return [b.start for b in fixed]
    cuts: list[int] = []
    bounds = [*fixed, None]
    for low, high, segment_end in zip(keys, [*keys[1:], None], bounds, strict=True):
        stop = len(inner) if segment_end is None else segment_end.start
        after = cuts[-1] if cuts else -1
        between = [b for b in loose if after < b.start < stop]
        cuts += _longest_in_order(between, low, high, documented)
        if segment_end is not None:
            cuts.append(segment_end.start)
    return cuts


def _longest_in_order(
    boundaries: list[_Boundary], low: bytes, high: bytes | None, documented: frozenset[str]
) -> list[int]:
    """The most boundaries whose names rise strictly between `low` and `high`, the most
    documented names among them on a tie (at most `MAX_FIELDS_TO_MERGE`: quadratic)."""
    fits = [
        b
        for b in boundaries
        if low < _java_order(b.name) and (high is None or _java_order(b.name) < high)
    ]
    best: list[tuple[int, int, int]] = []  # (boundaries, documented ones, previous index)
    for i, b in enumerate(fits):
        score = (1, int(b.name in documented), -1)
        for j in range(i):
            if _java_order(fits[j].name) < _java_order(b.name):
                length, known, _ = best[j]
                score = max(score, (length + 1, known + int(b.name in documented), j))
        best.append(score)
    if not best:
        return []
    at = max(range(len(best)), key=lambda i: best[i][:2])
    chosen: list[int] = []
    while at >= 0:
        chosen.append(fits[at].start)
        at = best[at][2]
    return chosen[::-1]


class _Boundaries(NamedTuple):
    """Where the readings of a rendering (`splits`) cut the text inside its braces."""

    inner: str
    first: list[int]  # the deterministic reading's
    documented: list[int]  # before documented names only
    every: list[int]  # before every name
    anchored: list[int]  # what the merged readings drop one of, each in turn


def _boundaries(text: str, documented: frozenset[str]) -> _Boundaries:
    inner = _inside_braces(text)
    candidates = _candidates(inner)
    anchored = _anchored(candidates, documented)
    sorted_cuts = _sorted_reading(inner, anchored, documented)
    return _Boundaries(
        inner,
        _last_of_each_name(anchored) if sorted_cuts is None else sorted_cuts,
        [b.start for b in candidates if b.name in documented],
        [b.start for b in candidates],
        [b.start for b in anchored],
    )


def _cut_sets(found: _Boundaries) -> Iterator[list[int]]:
    """The boundaries of each distinct reading, lazily, in `splits`' order."""
    starts = found.anchored
    merged = (
        (starts[:dropped] + starts[dropped + 1 :] for dropped in range(len(starts)))
        if len(starts) <= MAX_FIELDS_TO_MERGE
        else iter(())
    )
    return _distinct(itertools.chain([found.first, found.documented, found.every], merged))


def _first_cuts(found: _Boundaries) -> Iterator[int]:
    """Where the first pair of each reading `_cut_sets` yields ends, in its order (repeats
    left out): the end of the text for a reading without boundaries."""
    end = len(found.inner)
    for cuts in (found.first, found.documented, found.every):
        yield cuts[0] if cuts else end
    starts = found.anchored
    if starts and len(starts) <= MAX_FIELDS_TO_MERGE:
        yield starts[1] if len(starts) > 1 else end  # the merged reading without the first
        if len(starts) > 1:
            yield starts[0]  # every other merged reading


def _distinct(cut_sets: Iterator[list[int]]) -> Iterator[list[int]]:
    seen: set[tuple[int, ...]] = set()
    for cuts in cut_sets:
        if tuple(cuts) not in seen:
            seen.add(tuple(cuts))
            yield cuts


def _fields(inner: str, cuts: list[int]) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    if not inner.strip():
        return fields
    for start, end in zip([-1, *cuts], [*cuts, len(inner)], strict=True):
        key, value = _pair(inner[start + 1 : end])
        put_keeping(fields, key, None if value == "null" else value)
    return fields


def _pair(pair: str) -> tuple[str, str]:
    key, sep, value = pair.partition("=")
    if not sep or not key.strip():
        raise Reject(Reason.UNPARSEABLE_BODY, f"{pair.strip()[:40]!r} is not key=value")
    return key.strip(), value.strip()


def _depths(text: str) -> list[int]:
    """Brace and bracket depth at each character; all 0 when they do not balance."""
    depths, depth = [], 0
    for char in text:
        if char in _CLOSING:
            depth -= 1
            if depth < 0:
                return [0] * len(text)
        depths.append(depth)
        if char in _OPENING:
            depth += 1
    return depths if depth == 0 else [0] * len(text)
