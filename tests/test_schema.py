"""One schema: the field tables of filterdns.config.schema drive config meta loading, the feed
API, the health section, filter options and the option tables of docs/chains.md."""

from __future__ import annotations

import ast
import math

import pytest

from conftest import ROOT
from filterdns.config import schema
from filterdns.config.chains import load_chains
from filterdns.errors import ConfigError
from filterdns.ops.controller import BadRequest, validate_feed_values
from filterdns.routing.filters import REGISTRY
from filterdns.routing.filters.base import Option

pytestmark = pytest.mark.unit


def test_docs_tables_are_generated_from_the_schema():
    path = ROOT / "docs" / "chains.md"
    text = path.read_text(encoding="utf-8")
    assert schema.update_docs(text) == text, (
        "docs/chains.md is stale: run `python -m filterdns.config.schema docs/chains.md`")


def test_docs_check_fails_when_a_table_changes(monkeypatch):
    text = (ROOT / "docs" / "chains.md").read_text(encoding="utf-8")
    changed = schema.Field("rise", "int", 7, min=1, max=100, doc="consecutive successes to go up")
    monkeypatch.setattr(schema, "HEALTH", schema.table(*[changed if f.name == "rise" else f
                                                         for f in schema.HEALTH.values()]))
    assert schema.update_docs(text) != text


def test_one_field_type_everywhere():
    assert Option is schema.Field
    for cls in REGISTRY.values():
        assert all(isinstance(o, schema.Field) for o in cls.OPTIONS), cls.name
    assert set(schema.FEED) == {"up", "connections", "requests", "loadavg"}
    assert all(f is schema.META[k] for k, f in schema.FEED.items())


def _config_accepts(tmp_path, key, yaml_value) -> bool:
    (tmp_path / "c.yaml").write_text(
        "regions:\n  r1:\n    country: GB\n"
        f"    meta: {{{key}: {yaml_value}}}\n"
        "    services: {web: {v4: [192.0.2.1]}}\n")
    try:
        load_chains(tmp_path, ["example.com."])
    except ConfigError:
        return False
    return True


def _feed_accepts(key, value) -> bool:
    try:
        validate_feed_values({key: value})
    except BadRequest:
        return False
    return True


# (key, value as YAML, the same value in JSON/Python, accepted)
ROWS = [
    ("up", "true", True, True), ("up", "1", 1, True), ("up", "0", 0, True), ("up", "2", 2, False),
    ("up", "'yes'", "yes", False),
    ("connections", "9000", 9000, True), ("connections", ".inf", math.inf, False),
    ("connections", ".nan", math.nan, False), ("connections", "-1", -1, False),
    ("connections", "true", True, False), ("loadavg", "0.5", 0.5, True), ("requests", "'3'", "3", False),
]


@pytest.mark.parametrize("key,yaml_value,value,ok", ROWS, ids=[f"{r[0]}={r[1]}" for r in ROWS])
def test_config_and_feed_api_agree(tmp_path, key, yaml_value, value, ok):
    assert _config_accepts(tmp_path, key, yaml_value) is ok
    assert _feed_accepts(key, value) is ok


def test_config_does_not_import_ops():
    for path in (ROOT / "filterdns" / "config").glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n.startswith("filterdns.ops") for n in names), (path.name, names)


def test_health_errors_carry_yaml_positions(tmp_path):
    (tmp_path / "c.yaml").write_text(
        "regions:\n  r1: {country: GB, services: {web: {v4: [192.0.2.1]}}}\n"
        "health:\n  defaults: {rise: 0}\n  checks:\n"
        "    - {region: r1, service: web, port: 80, colour: red}\n"
        "    - {region: r2, service: web, port: 80}\n")
    with pytest.raises(ConfigError) as e:
        load_chains(tmp_path, ["example.com."])
    got = [(p.line, p.col, p.message) for p in e.value.problems]
    assert (4, 20, "health.defaults: rise must be an integer in 1..100, got 0") in got
    assert (6, 44, "health.checks[0].colour: unknown option (options: " + ", ".join(schema.HEALTH) + ")") in got
