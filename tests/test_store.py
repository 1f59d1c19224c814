"""State store pieces that need no server: --state parsing, the fleet health policy, the saved
document's validation, and the file store's commit contract."""

from __future__ import annotations

import asyncio
import json

import pytest

from filterdns.ops.store import NotDurable, StateUnreadable, effective_health, parse_state_spec
from filterdns.ops.store import doc as sdoc
from filterdns.ops.store.file import FileStore

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("spec,expected", [
    (None, {"kind": "file"}),
    ("file", {"kind": "file"}),
    ("etcd://127.0.0.1:2379/fleet", {"kind": "etcd", "endpoints": [("127.0.0.1", 2379)], "prefix": "/fleet", "tls": False}),
    ("etcd://a:1,b:2,[::1]:3/x/y/", {"kind": "etcd", "endpoints": [("a", 1), ("b", 2), ("::1", 3)],
                                     "prefix": "/x/y", "tls": False}),
    ("etcds://h", {"kind": "etcd", "endpoints": [("h", 2379)], "prefix": "/filterdns", "tls": True}),
], ids=["default", "file", "one", "three-and-v6", "tls-default-port-and-prefix"])
def test_parse_state_spec(spec, expected):
    assert parse_state_spec(spec) == expected


@pytest.mark.parametrize("spec,message", [
    ("redis://x", "expected 'file' or etcd://"),
    ("etcd:///p", "no etcd endpoint"),
    ("etcd://h:99999/p", "bad endpoint"),
    ("etcd://h:x/p", "bad endpoint"),
], ids=["scheme", "no-host", "port-range", "port-text"])
def test_parse_state_spec_errors(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_state_spec(spec)


U, D = True, False


@pytest.mark.parametrize("votes,policy,expected", [
    ([], "quorum", None),
    ([U, U, D], "quorum", True),
    ([U, D, D], "quorum", False),
    ([U, D], "quorum", True),  # a tie is not a majority down
    ([D], "quorum", False),
    ([U, U, D], "any", False),
    ([U, U, U], "any", True),
    ([U, D, D], "all", True),
    ([D, D, D], "all", False),
    ([], "any", None),
], ids=lambda x: str(x))
def test_effective_health(votes, policy, expected):
    assert effective_health(votes, policy) is expected


@pytest.mark.parametrize("raw,why", [
    (b"\xff", "not valid UTF-8"),
    (b"{", "not valid JSON"),
    (b"null", "not an object"),
    (b'"drains"', "not an object"),
], ids=["utf8", "json", "null", "string"])
def test_decode_unreadable(raw, why):
    with pytest.raises(StateUnreadable, match=why):
        sdoc.decode(raw)


def test_decode_keeps_valid_entries_and_names_bad_ones():
    good = {"region": "fra", "service": None, "reason": "r", "actor": "a", "cause": "operator", "since": 5}
    data = {"drains": [good, "x", {**good, "region": ""}, {**good, "cause": "gremlins"}, good],
            "feeds": [{"region": "fra", "service": "wss", "values": {"loadavg": 1}}, {"region": "fra"}]}
    clean, problems = sdoc.decode(json.dumps(data).encode())
    assert clean["drains"] == [{**good, "since": 5.0}]
    assert clean["feeds"] == [{"region": "fra", "service": "wss", "values": {"loadavg": 1.0}}]
    assert [p.split(":")[0] for p in problems] == ["drains[1]", "drains[2]", "drains[3] (fra)", "drains[4]",
                                                   "feeds[1] (fra)"]


def test_file_store_commit_fails_without_changing_the_file(tmp_path, monkeypatch):
    import errno
    import os

    store = FileStore(tmp_path, clock=lambda: 7.0)
    doc = {"drains": [], "feeds": [{"region": "fra", "service": None, "values": {"up": False}}]}
    assert asyncio.run(store.commit(0, doc)) == 1
    before = (tmp_path / "state.json").read_bytes()

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr("filterdns.ops.store.file.os.fsync", full)
    with pytest.raises(NotDurable, match="cannot save the state.*No space left on device"):
        asyncio.run(store.commit(1, {"drains": [], "feeds": []}))
    assert (tmp_path / "state.json").read_bytes() == before
    assert not list(tmp_path.glob(".state.json.*"))  # no temp file left behind
    assert store.revision == 1
