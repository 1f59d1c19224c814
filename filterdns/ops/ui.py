"""The operator page (``GET /ui`` on the control API) and the country map view it reads.

The page is one HTML file with its CSS and JavaScript inline (``filterdns/data/ui.html``), the
world map (``filterdns/data/worldmap.svg``, Natural Earth 1:110m countries, public domain,
made by ``tools/worldmap.py``) put in its place when the page is first served: no build step,
nothing fetched from elsewhere. It is read-only: it only GETs the JSON endpoints (``/regions``,
``/audit``, ``/countries``), once a second, and shows what they say; no state is derived in
the browser.

The response carries a Content-Security-Policy that allows exactly the page's own inline
script (by its SHA-256) and same-origin fetches, so nothing the page displays can run as code
or load from elsewhere, and it may not be framed.
"""

from __future__ import annotations

import base64
import hashlib
import re
from functools import lru_cache
from importlib import resources
from typing import Any

from filterdns.routing.country_routes import country_routes

_MAP_SLOT = "<!--WORLDMAP-->"


def _data(name: str) -> str:
    return resources.files("filterdns").joinpath("data", name).read_text(encoding="utf-8")


@lru_cache(maxsize=1)
def page() -> tuple[bytes, dict[str, str]]:
    """The page's bytes and its response headers (read from the package data once)."""
    html = _data("ui.html")
    svg = _data("worldmap.svg")
    assert _MAP_SLOT in html, "ui.html lost its world map slot"
    html = html.replace(_MAP_SLOT, svg)
    scripts = re.findall(r"<script>(.*?)</script>", html, flags=re.S)
    hashes = " ".join("'sha256-" + base64.b64encode(hashlib.sha256(s.encode()).digest()).decode() + "'"
                      for s in scripts)
    csp = ("default-src 'none'; " f"script-src {hashes}; style-src 'unsafe-inline'; connect-src 'self'; "
           "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
    headers = {"Content-Type": "text/html; charset=utf-8", "Content-Security-Policy": csp,
               "X-Frame-Options": "DENY",
               "Referrer-Policy": "no-referrer"}
    return html.encode("utf-8"), headers


def records_view(state: Any) -> list[dict]:
    """The dynamic records a map can be drawn for, in config order."""
    recs = getattr(state, "records", None) or {}
    return [{"name": name, "service": rec.service, "chain": rec.chain_name} for name, rec in recs.items()]


def countries_view(state: Any, status: Any, record: str | None) -> dict:
    """``GET /countries``: where each country's clients are sent now for ``record`` (default:
    the first dynamic record of the config). KeyError for an unknown record."""
    records = records_view(state)
    if record is None:
        if not records:
            return {"record": None, "records": [], "countries": {},
                    "config_generation": getattr(state, "generation", None),
                    "status_generation": status.generation}
        record = records[0]["name"]
    name = record if record.endswith(".") else record + "."
    routes = country_routes(state, status, name.lower())
    return {"record": name.lower(), "service": state.records[name.lower()].service, "records": records,
            "countries": routes, "config_generation": getattr(state, "generation", None),
            "status_generation": status.generation}
