"""YAML loading that keeps ``file:line:col`` for every mapping, sequence and scalar.

``load(path)`` returns plain-looking Python values: mappings are ``LocDict`` (a ``dict``),
sequences ``LocList`` (a ``list``), scalars the usual ``str``/``int``/``float``/``bool``/``None``.
Containers know where they start (``.loc``) and where each key and value is
(``.key_loc(k)``, ``.value_loc(k)``; for lists ``.item_loc(i)``), so a validator can point at
the exact bad item even for scalars (which cannot carry attributes). Lines and columns are
1-based. Duplicate keys are errors (pyyaml silently keeps the last one).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from filterdns.errors import ConfigError, Problem


@dataclass(frozen=True, slots=True)
class Loc:
    """A position in a file (1-based line and column)."""

    file: str
    line: int
    col: int

    def problem(self, message: str) -> Problem:
        return Problem(self.file, self.line, self.col, message)

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


class LocDict(dict):
    """A mapping that remembers where it, each key and each value came from."""

    loc: Loc
    _klocs: dict
    _vlocs: dict

    def key_loc(self, key: Any) -> Loc:
        return self._klocs.get(key, self.loc)

    def value_loc(self, key: Any) -> Loc:
        return self._vlocs.get(key, self.loc)


class LocList(list):
    """A sequence that remembers where it and each item came from."""

    loc: Loc
    _ilocs: list

    def item_loc(self, i: int) -> Loc:
        return self._ilocs[i] if 0 <= i < len(self._ilocs) else self.loc


def _mark(file: str, mark: Any) -> Loc:
    return Loc(file, mark.line + 1, mark.column + 1)


class _Loader(yaml.SafeLoader):
    """SafeLoader that builds LocDict / LocList and records duplicate keys."""

    file: str = "<yaml>"

    def __init__(self, stream: Any, file: str):
        super().__init__(stream)
        self.file = file
        self.dupes: list[Problem] = []

    def construct_mapping(self, node, deep=False):  # type: ignore[override]
        if not isinstance(node, yaml.MappingNode):
            raise yaml.constructor.ConstructorError(None, None, "expected a mapping", node.start_mark)
        self.flatten_mapping(node)
        out = LocDict()
        out.loc = _mark(self.file, node.start_mark)
        out._klocs, out._vlocs = {}, {}
        for knode, vnode in node.value:
            key = self.construct_object(knode, deep=True)
            try:
                hash(key)
            except TypeError:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark, "found unhashable key", knode.start_mark
                ) from None
            kl = _mark(self.file, knode.start_mark)
            if key in out:
                self.dupes.append(kl.problem(f"duplicate key {key!r} (first at line {out._klocs[key].line})"))
                continue
            out[key] = self.construct_object(vnode, deep=True)
            out._klocs[key] = kl
            out._vlocs[key] = _mark(self.file, vnode.start_mark)
        return out

    def construct_sequence(self, node, deep=False):  # type: ignore[override]
        out = LocList()
        out.loc = _mark(self.file, node.start_mark)
        out._ilocs = []
        for child in node.value:
            out.append(self.construct_object(child, deep=True))
            out._ilocs.append(_mark(self.file, child.start_mark))
        return out


def _map(loader: _Loader, node: Any) -> LocDict:
    return loader.construct_mapping(node, deep=True)


def _seq(loader: _Loader, node: Any) -> LocList:
    return loader.construct_sequence(node, deep=True)


_Loader.add_constructor("tag:yaml.org,2002:map", _map)
_Loader.add_constructor("tag:yaml.org,2002:seq", _seq)
_Loader.add_constructor("tag:yaml.org,2002:omap", _seq)


def _syntax_problem(file: str, e: yaml.MarkedYAMLError) -> Problem:
    """pyyaml's error, placed where the mistake is. An unclosed ``{`` or ``[`` is found only
    where the parser gives up (lines later, or at the end of the file); it is reported at the
    bracket that was opened, saying where the parser stopped."""
    ctx, problem = e.context or "", e.problem or ""
    if (e.context_mark is not None and e.problem_mark is not None
            and ctx.startswith("while parsing a flow ") and problem.startswith("expected ','")
            and e.problem_mark.line > e.context_mark.line):  # on one line: a missing comma, as said
        opened, closer = ("{", "}") if "mapping" in ctx else ("[", "]")
        found = problem.partition("but got ")[2] or "something else"
        found = {"'<scalar>'": "a value", "'<stream end>'": "the end of the file",
                 "'<block end>'": "the end of the block"}.get(found, found)
        pm, cm = e.problem_mark, e.context_mark
        return Problem(file, cm.line + 1, cm.column + 1,
                       f"YAML syntax: this {opened!r} is never closed: expected ',' or {closer!r}, "
                       f"found {found} at line {pm.line + 1}, column {pm.column + 1}")
    mark = e.problem_mark or e.context_mark
    line = mark.line + 1 if mark else None
    col = mark.column + 1 if mark else None
    msg = " ".join(x for x in (ctx, problem) if x) or str(e)
    return Problem(file, line, col, f"YAML syntax: {msg}")


def load_text(text: str, file: str) -> Any:
    """Parse one YAML document; raise ``ConfigError`` (with position) on syntax errors."""
    loader = _Loader(text, file)
    try:
        data = loader.get_single_data()
    except yaml.MarkedYAMLError as e:
        raise ConfigError([_syntax_problem(file, e)]) from None
    except yaml.YAMLError as e:
        raise ConfigError([Problem(file, None, None, f"YAML: {e}")]) from None
    finally:
        loader.dispose()
    if loader.dupes:
        raise ConfigError(loader.dupes)
    return data


def load(path: str, display: str | None = None) -> Any:
    """Read and parse ``path``; positions name ``display`` (default: the path)."""
    name = display or str(path)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError([Problem(name, None, None, f"cannot read: {e.strerror or e}")]) from None
    except UnicodeDecodeError as e:
        raise ConfigError([Problem(name, None, None, f"not UTF-8: {e}")]) from None
    return load_text(text, name)
