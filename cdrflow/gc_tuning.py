"""Keeping Python's cyclic garbage collector from costing a sizeable share of a process's CPU.

Both long-running processes free nearly everything by reference counting. Under load, the
default young collections find almost nothing, yet each scans the requests in flight (the
ingress) or the records of the batch in hand (a worker), and the full collections every
object of the process (figures in docs/benchmarks.md, "Smaller choices"). A young
collection after 10,000 net allocations instead of 700 makes collections rare, and bounds
new cyclic garbage waiting for a collection to ~10,000 objects (a few MB). (`gc.freeze`
would also save the full collections' work, but frozen objects that become garbage, such
as a lost broker connection's, are never freed.)"""

from __future__ import annotations

import gc

# A young collection after this many more allocations than deallocations, instead of 700.
YOUNG_GC_THRESHOLD = 10_000


def tune_gc() -> None:
    gc.set_threshold(YOUNG_GC_THRESHOLD, *gc.get_threshold()[1:])
