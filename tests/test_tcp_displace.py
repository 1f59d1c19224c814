"""Which TCP connection a new client displaces when every slot is taken (serve/tcp.py):
a table of connections, in-process, with a fake transport and a fixed clock."""

from __future__ import annotations

import pytest


class FakeTransport:
    def __init__(self, buffered=0):
        self.buffered = buffered
        self.aborted = False

    def get_write_buffer_size(self):
        return self.buffered

    def abort(self):
        self.aborted = True

    def close(self):
        self.aborted = True


@pytest.mark.unit
@pytest.mark.parametrize("rows,victim", [
    # (opened, last answer, answers, bytes we hold for it, closing) per connection
    ([(0, 0, 0, 0, False), (0, 9.9, 5, 0, False)], 0),  # never completed a query
    ([(0, 9.9, 5, 0, False), (0, 9.9, 5, 5000, False)], 1),  # leaves its answers unread
    ([(0, 9.9, 5, 0, False), (0, 8.0, 5, 0, False)], 1),  # longest without an answer
    ([(0, 9.9, 5, 0, False), (0, 9.5, 5, 0, False)], None),  # all recently active: refuse
    ([(0, 9.9, 5, 0, False), (0, 9.9, 5, 0, True)], 1),  # already closing: its slot first
    ([(9.9, 9.9, 0, 0, False), (0, 9.9, 5, 0, False)], None),  # silent, but just connected
], ids=["silent", "unread", "idle", "all-active", "closing", "silent-but-new"])
def test_which_connection_a_new_client_displaces(rows, victim):
    from filterdns.ops.metrics import Metrics
    from filterdns.serve import tcp

    state = tcp.TcpServerState(None, Metrics(), max_connections=len(rows))
    protos = []
    for opened, last, answers, held, closing in rows:
        p = tcp.TcpProtocol(state)
        p.transport = FakeTransport(held)
        p.opened, p.last_progress, p.answered = opened, last, answers
        p.closing = 9.0 if closing else None
        state.protocols.add(p)
        protos.append(p)
    state.open = len(protos)
    for p in protos:  # the sweeper has seen the backlog since t=9.5
        p.unread_since(9.5)
    got = state._victim(10.0)
    assert got is (None if victim is None else protos[victim])
