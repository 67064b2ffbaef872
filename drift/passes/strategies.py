"""Offsets in one arena for buffers with known sizes and lifetimes.

The strategies are those of TensorFlow Lite's GPU delegate, which ML Drift's memory manager
follows (Pisarchyk & Lee, "Efficient Memory Management for Deep Neural Net Inference", 2020):

    naive              every buffer its own memory: the sum of all sizes
    equality           a buffer reuses a free object of exactly its size, else a new object
    greedy_in_order    in order of first use, the smallest free object that fits; if none
                       fits, the largest free object grows; if none is free, a new object
    greedy_by_breadth  steps by how many bytes they touch, largest first; each step's buffers
                       by size, into the best object whose users do not overlap them in time
    greedy_by_size     buffers by size, largest first, each at the best-fitting gap among the
                       buffers already placed that overlap it in time (offsets, not objects)

The first four assign buffers to shared objects and lay the objects end to end; the last
places each buffer at an offset directly, so it can also pack small buffers into the gaps
between large ones. Every size and offset is a multiple of the alignment.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass

from drift.passes.lifetimes import Buffer

STRATEGIES: dict[str, Callable[[list[Buffer]], dict[int, int]]] = {}


def strategy(name: str):
    def wrap(fn):
        STRATEGIES[name] = fn
        return fn

    return wrap


@dataclass
class _Object:
    size: int
    users: list[Buffer]

    def free_for(self, b: Buffer) -> bool:
        return all(not u.overlaps(b) for u in self.users)


def _objects_to_offsets(objects: list[_Object]) -> dict[int, int]:
    offsets, at = {}, 0
    for o in objects:
        for u in o.users:
            offsets[u.id] = at
        at += o.size
    return offsets


def _by_first_use(bufs: list[Buffer]) -> list[Buffer]:
    return sorted(bufs, key=lambda b: (b.first, b.id))


@strategy("naive")
def naive(bufs: list[Buffer]) -> dict[int, int]:
    return _objects_to_offsets([_Object(b.size, [b]) for b in _by_first_use(bufs)])


@strategy("equality")
def equality(bufs: list[Buffer]) -> dict[int, int]:
    objects: list[_Object] = []
    for b in _by_first_use(bufs):
        same = [o for o in objects if o.size == b.size and o.free_for(b)]
        if same:
            same[0].users.append(b)
        else:
            objects.append(_Object(b.size, [b]))
    return _objects_to_offsets(objects)


def _best_object(objects: list[_Object], b: Buffer) -> _Object | None:
    """The smallest free object that holds b; else the largest free one, grown to fit."""
    free = [o for o in objects if o.free_for(b)]
    if not free:
        return None
    fits = [o for o in free if o.size >= b.size]
    if fits:
        return min(fits, key=lambda o: o.size)
    best = max(free, key=lambda o: o.size)
    best.size = b.size
    return best


def _share_or_add(objects: list[_Object], b: Buffer) -> None:
    """Put `b` in the best object free over its lifetime, or in a new one of its size."""
    o = _best_object(objects, b)
    if o is None:
        objects.append(_Object(b.size, [b]))
    else:
        o.users.append(b)


@strategy("greedy_in_order")
def greedy_in_order(bufs: list[Buffer]) -> dict[int, int]:
    objects: list[_Object] = []
    for b in _by_first_use(bufs):
        _share_or_add(objects, b)
    return _objects_to_offsets(objects)


@strategy("greedy_by_breadth")
def greedy_by_breadth(bufs: list[Buffer]) -> dict[int, int]:
    if not bufs:
        return {}
    steps = max(b.last for b in bufs) + 1
    alive: list[list[Buffer]] = [[] for _ in range(steps)]
    for b in bufs:
        for t in range(b.first, b.last + 1):
            alive[t].append(b)
    breadth = [sum(b.size for b in a) for a in alive]
    objects: list[_Object] = []
    done: set[int] = set()
    for t in sorted(range(steps), key=lambda t: (-breadth[t], t)):
        for b in sorted(alive[t], key=lambda b: (-b.size, b.id)):
            if b.id in done:
                continue
            done.add(b.id)
            _share_or_add(objects, b)
    return _objects_to_offsets(objects)


@strategy("greedy_by_size")
def greedy_by_size(bufs: list[Buffer]) -> dict[int, int]:
    placed: list[tuple[int, int, Buffer]] = []  # (offset, id, buffer), kept sorted by offset
    offsets: dict[int, int] = {}
    for b in sorted(bufs, key=lambda b: (-b.size, b.first, b.id)):
        best_gap, best_at, prev_end = None, None, 0
        for at, _, p in placed:
            if not p.overlaps(b):
                continue
            gap = at - prev_end
            if gap >= b.size and (best_gap is None or gap < best_gap):
                best_gap, best_at = gap, prev_end
            prev_end = max(prev_end, at + p.size)
        at = prev_end if best_at is None else best_at
        offsets[b.id] = at
        bisect.insort(placed, (at, b.id, b), key=lambda x: (x[0], x[1]))
    return offsets


def arena_size(bufs: list[Buffer], offsets: dict[int, int]) -> int:
    return max((offsets[b.id] + b.size for b in bufs), default=0)


def plan_offsets(bufs: list[Buffer], name: str) -> tuple[dict[int, int], int]:
    if name not in STRATEGIES:
        raise KeyError(f"unknown memory strategy {name!r} (known: {', '.join(STRATEGIES)})")
    offsets = STRATEGIES[name](bufs)
    return offsets, arena_size(bufs, offsets)
