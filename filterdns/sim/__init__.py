"""``filterdns simulate``: what clients do when a region fails, against a real server.

A time-compressed, seeded, reproducible simulation of websocket clients, their resolvers and
the edge regions, whose every DNS answer comes from a real running filterdns (started on a
loopback port, or given with ``--server``): nothing about routing is re-implemented here.

Modules (each documents its part of the model and its scenario options):

* ``scenario``: the scenario file, its schema as data, errors with file:line:col;
* ``population``: clients per country with real /24s from the geo database, and resolvers;
* ``model``: the simulated clock, clients (failure detection, retries with full-jitter
  backoff, degraded mode), resolver caches (TTL and ECS scope), regions (capacity), the
  timeline, the health checker and the load feeds that drive the server's control API;
* ``dnsclient``: many ECS queries at once over one UDP socket;
* ``backend``: starting the server, variant chains directories, the control API client;
* ``report``: the summary, computed from the event log; ``plots``: the PNGs (matplotlib);
* ``runner``: ``simulate()``, the Python API, and the ``filterdns simulate`` command.

Python API::

    from filterdns.sim import simulate
    runs = simulate("scenarios/dublin-fails.yaml", compare=True, out="sim-out")
    runs[0]["summary"]["failure"]["reconnect_p99"]
"""

from filterdns.sim.runner import simulate
from filterdns.sim.scenario import load_scenario

__all__ = ["simulate", "load_scenario"]
