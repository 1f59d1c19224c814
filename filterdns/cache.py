"""The one bounded cache of the query path: a two-generation swap table.

Every cache between a packet and its answer (rendered static answers, rendered dynamic
bodies, the query plans, signed answers, geo lookups, ECS options, chain memos) is a
``Cache(cap)``. It holds two dicts, ``new`` and ``old``:

* ``get`` looks in ``new``; on a miss it looks in ``old`` and moves a hit to ``new``;
* ``put`` inserts into ``new``; when ``new`` holds ``cap`` entries it becomes ``old`` and a
  fresh ``new`` starts. The previous ``old`` is dropped - not at once (freeing 20,000 entries
  costs about 2 ms, which one query would pay) but a few entries per later ``put``.

Why this and not an LRU: a hit costs one dict lookup, exactly what an unbounded dict costs,
with no bookkeeping per hit (an ``OrderedDict`` LRU pays ``move_to_end`` on every hit, and
``functools.lru_cache`` cannot be filled or keyed from outside the function). What it keeps is
what an LRU keeps to within a factor of two: an entry used at least once in every ``cap``
insertions is never dropped (each use in ``old`` moves it to ``new``), so a flood of
one-off keys (random names, random subnets) cycles the generations without pushing out the
hot keys for longer than one miss, and the whole never holds more than ``3 * cap`` entries
(``new``, ``old`` and what is left of the generation being freed). No cache is ever cleared
wholesale while serving, and none stops inserting when full.

Values must not be ``None`` (``None`` means "not cached").
"""

from __future__ import annotations

from typing import Any, Hashable


class Cache:
    """A bounded mapping (see the module docstring). ``cap`` entries per generation."""

    __slots__ = ("new", "old", "cap", "_dying")

    def __init__(self, cap: int):
        if cap < 1:
            raise ValueError("cache capacity must be >= 1")
        self.cap = cap
        self.new: dict = {}
        self.old: dict = {}
        self._dying: dict = {}

    def get(self, key: Hashable) -> Any:
        """The cached value, or None."""
        v = self.new.get(key)
        if v is None:
            v = self.old.pop(key, None)
            if v is not None:
                self.put(key, v)
        return v

    def put(self, key: Hashable, value: Any) -> Any:
        """Insert (or replace) ``key``; returns ``value``."""
        new = self.new
        if len(new) >= self.cap and key not in new:
            dying = self._dying
            if dying:  # not freed yet: free the rest now (only when puts outran the frees)
                dying.clear()
            self._dying = self.old
            self.old = new
            self.new = new = {}
        new[key] = value
        dying = self._dying
        if dying:
            # two entries freed per insertion: gone well before the next swap
            dying.popitem()
            if dying:
                dying.popitem()
        return value

    def clear(self) -> None:
        """Forget everything (a new config generation; never while serving one)."""
        self.new = {}
        self.old = {}
        self._dying = {}

    def __len__(self) -> int:
        """Entries held, counting the generation not yet freed."""
        return len(self.new) + len(self.old) + len(self._dying)

    def __contains__(self, key: Hashable) -> bool:
        return key in self.new or key in self.old

    def __repr__(self) -> str:
        return f"Cache(cap={self.cap}, new={len(self.new)}, old={len(self.old)})"
