"""PNG figures of a simulation (matplotlib, the ``sim`` extra), one column per variant.

* ``connected.png``: connected clients per region over time;
* ``attempts.png``: connection attempts per second per region (the thundering-herd picture);
* ``reconnect.png``: the distribution of time to reconnect after a broken connection (CDF);
* ``overview.png``: the three above plus clients in degraded mode, in one figure (the README's).

The regions drawn are those that matter: every region that failed, then the busiest by peak
attempt rate and peak connections (at most ``MAX_REGIONS``), with the same colour in every
column. When a region fails, the attempts panel is zoomed on the 2 minutes around the first
failure (where the herd is). Vertical lines mark the timeline: a failure (red), a recovery (green), a drain or
undrain on the server (grey).
"""

from __future__ import annotations

import os

MAX_REGIONS = 6
ZOOM_BEFORE, ZOOM_AFTER = 15, 105  # the attempts panel shows this window around the first failure


def _mpl():
    try:
        import matplotlib
    except ImportError as e:  # pragma: no cover - the CLI reports this
        raise RuntimeError("plots need matplotlib: pip install 'filterdns[sim]'") from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def pick_regions(runs: list[dict]) -> list[str]:
    failed: list[str] = []
    score: dict[str, float] = {}
    for run in runs:
        for c in run["summary"]["control"]:
            if str(c["what"]).startswith("fail") and c["region"] not in failed:
                failed.append(c["region"])
        for r, v in run["summary"]["regions"].items():
            score[r] = max(score.get(r, 0), v["peak_attempts_per_s"] * 50 + v["peak_connections"])
    rest = [r for r in sorted(score, key=lambda r: (-score[r], r)) if r not in failed and score[r] > 0]
    return (failed + rest)[:MAX_REGIONS]


def _marks(ax, summary: dict) -> None:
    for c in summary["control"]:
        w = str(c["what"])
        color = "tab:red" if w.startswith("fail") else "tab:green" if w.startswith("recover") else "0.6"
        if "refused" in w or "skipped" in w:
            continue
        ax.axvline(c["t"], color=color, lw=0.8, ls="--" if color != "0.6" else ":", zorder=0)


def _first_failure(summary: dict) -> float | None:
    ts = [c["t"] for c in summary["control"] if str(c["what"]).startswith("fail")]
    return min(ts) if ts else None


def _cdf(values: list[float]):
    s = sorted(values)
    n = len(s)
    return s, [(i + 1) / n for i in range(n)]


def _draw(axes_rows: list[str], runs: list[dict], regions: list[str], colors: dict, path: str,
          title: str) -> dict:
    plt = _mpl()
    ncols = len(runs)
    fig, axes = plt.subplots(len(axes_rows), ncols, figsize=(6.2 * ncols, 2.9 * len(axes_rows)),
                             squeeze=False, sharey="row")
    nseries = 0
    for j, run in enumerate(runs):
        ser, summ = run["series"], run["summary"]
        secs = list(range(len(ser["degraded"])))
        for i, what in enumerate(axes_rows):
            ax = axes[i][j]
            if what in ("connected", "attempts"):
                for r in regions:
                    ax.plot(secs, ser[what][r], color=colors[r], lw=1.2, label=r)
                    nseries += 1
                ax.set_ylabel("connected clients" if what == "connected" else "attempts / s")
                _marks(ax, summ)
            elif what == "degraded":
                ax.plot(secs, ser["degraded"], color="tab:purple", lw=1.4, label="degraded (API only)")
                nseries += 1
                ax.set_ylabel("clients in degraded mode")
                _marks(ax, summ)
            elif what == "reconnect":
                vals = run["reconnect"]
                if vals:
                    x, y = _cdf(vals)
                    ax.step(x, y, where="post", color="tab:blue", lw=1.4,
                            label=f"{len(vals):,} reconnects")
                    nseries += 1
                    f = summ["failure"]
                    for q, name in ((f["reconnect_p50"], "p50"), (f["reconnect_p99"], "p99")):
                        if q is not None:
                            ax.axvline(q, color="0.5", lw=0.8, ls=":")
                            ax.annotate(f"{name} {q:.0f} s", (q, 0.05 if name == "p50" else 0.15),
                                        xytext=(3, 0), textcoords="offset points", fontsize=8)
                ax.set_ylabel("share reconnected")
                ax.set_xlabel("seconds from broken connection to reconnected")
                ax.set_ylim(0, 1.02)
            if what != "reconnect":
                lo, hi = 0, secs[-1] if secs else 1
                t_fail = _first_failure(summ)
                if what == "attempts" and t_fail is not None:  # zoom on the herd
                    lo, hi = max(0, t_fail - ZOOM_BEFORE), min(hi, t_fail + ZOOM_AFTER)
                    ax.set_title(f"attempts / s per region, {lo:.0f}-{hi:.0f} s", fontsize=9)
                ax.set_xlim(lo, hi)
                ax.set_xlabel("simulated seconds")
            if i == 0:
                ax.set_title(run["summary"]["variant"], fontsize=11, fontweight="bold")
                if what == "attempts" and _first_failure(summ) is not None:
                    ax.set_title(f"{run['summary']['variant']}\n(attempts zoomed on the failure)",
                                 fontsize=10, fontweight="bold")
            ax.grid(True, alpha=0.3)
            if j == ncols - 1 or what in ("reconnect", "degraded"):
                ax.legend(fontsize=7, loc="upper right")
    fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return {"path": path, "series": nseries, "bytes": os.path.getsize(path)}


def write_plots(runs: list[dict], out_dir: str, title: str) -> dict[str, dict]:
    """Write the PNGs for ``runs`` (each {summary, series, reconnect}); return what was written."""
    plt = _mpl()
    regions = pick_regions(runs)
    cmap = plt.get_cmap("tab10")
    colors = {r: cmap(i % 10) for i, r in enumerate(regions)}
    out = {}
    for name, rows in (("connected", ["connected"]), ("attempts", ["attempts"]), ("reconnect", ["reconnect"]),
                       ("overview", ["connected", "attempts", "degraded", "reconnect"])):
        out[name] = _draw(rows, runs, regions, colors, os.path.join(out_dir, f"{name}.png"), title)
    return out
