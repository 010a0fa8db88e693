"""PNGs of a run (matplotlib, no display): the latency timeline with control events marked
by kind, and the latency distributions. (`sim.plots` draws a simulator's per-replica
state, which an HTTP client does not see; this draws what the client measured.)"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from bench.loadgen.client import RequestResult  # noqa: E402
from bench.loadgen.events import MarkedEvent  # noqa: E402
from sim.metrics import SLO  # noqa: E402

# One color per event kind; kinds not listed get the next color of the cycle.
EVENT_COLORS = {"migrate": "tab:purple", "drop": "tab:brown", "clock": "tab:olive", "replace": "tab:red",
                "scale": "tab:cyan", "adopt": "tab:gray"}
SPARE_COLORS = ("tab:pink", "tab:orange", "tab:blue", "tab:green")
# Events labelled with their replica when there are at most this many.
MAX_LABELLED_EVENTS = 15


def event_colors(events: list[MarkedEvent]) -> dict[str, str]:
    colors, spare = {}, iter(SPARE_COLORS * 10)
    for kind in sorted({e.kind for e in events}):
        colors[kind] = EVENT_COLORS.get(kind) or next(spare)
    return colors


def in_flight_curve(results: list[RequestResult], end_s: float) -> tuple[np.ndarray, np.ndarray]:
    """(times, requests in flight) as a step curve."""
    changes = sorted([(r.sent_s, 1) for r in results if r.sent] +
                     [(r.ended_s if r.ended_s >= 0 else end_s, -1) for r in results if r.sent])
    times, counts, level = [0.0], [0], 0
    for at, step in changes:
        level += step
        if at == times[-1]:  # simultaneous changes: one step
            counts[-1] = level
        else:
            times.append(at)
            counts.append(level)
    return np.array(times), np.array(counts)


def plot_timeline(results: list[RequestResult], events: list[MarkedEvent], slo: SLO, path: Path, title: str,
                  duration_s: float) -> None:
    """TTFT, TPOT and E2E of each request at its send time, requests in flight, failed
    requests (x) and control events (a line when the action ended, shaded while it ran)."""
    done = [r for r in results if r.ok]
    failed = [r for r in results if r.failed]
    fig, axes = plt.subplots(4, 1, figsize=(11, 10), sharex=True)
    ttft_ax, tpot_ax, e2e_ax, load_ax = axes
    sent = np.array([r.sent_s for r in done])
    ttft = np.array([r.chunk_s[0] - r.sent_s if r.chunk_s else np.nan for r in done])
    e2e = np.array([r.finish_s - r.sent_s for r in done])
    multi = [r for r in done if r.output_tokens > 1 and r.chunk_s]
    tpot = np.array([(r.finish_s - r.chunk_s[0]) / (r.output_tokens - 1) for r in multi])
    ttft_ax.scatter(sent, ttft, s=6, color="tab:blue")
    ttft_ax.axhline(slo.ttft_s, color="black", linestyle="--", linewidth=0.8, label=f"SLO: TTFT {slo.ttft_s:g}s")
    ttft_ax.set_ylabel("TTFT (s)")
    tpot_ax.scatter([r.sent_s for r in multi], tpot, s=6, color="tab:green")
    tpot_ax.axhline(slo.tpot_s, color="black", linestyle=":", linewidth=0.8, label=f"SLO: TPOT {slo.tpot_s:g}s")
    tpot_ax.set_ylabel("TPOT (s)")
    e2e_ax.scatter(sent, e2e, s=6, color="tab:orange")
    e2e_ax.set_ylabel("E2E (s)")
    times, counts = in_flight_curve(results, duration_s)
    load_ax.step(times, counts, where="post", color="tab:gray", linewidth=0.9, label="in flight")
    if failed:
        load_ax.scatter([r.sent_s for r in failed], np.zeros(len(failed)), marker="x", color="tab:red", s=18,
                        label=f"failed ({len(failed)}), at send", zorder=3)
    load_ax.set_ylabel("requests in flight")
    load_ax.set_xlabel("time since the run started (s)")
    _mark_events(axes, events)
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.margins(y=0.1)
        ax.set_ylim(bottom=0)
    handles = [h for ax in axes for h in ax.get_legend_handles_labels()[0]]
    labels = [label for ax in axes for label in ax.get_legend_handles_labels()[1]]
    fig.legend(handles, labels, loc="upper center", ncol=min(len(labels), 6) or 1, fontsize=7,
               bbox_to_anchor=(0.5, 0.965), frameon=False)
    load_ax.set_xlim(0, max(duration_s, max((e.at_s for e in events), default=0.0)) * 1.01 or 1.0)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _mark_events(axes, events: list[MarkedEvent]) -> None:
    colors = event_colors(events)
    labelled: set[str] = set()
    for event in events:
        color = colors[event.kind]
        for i, ax in enumerate(axes):
            label = f"event: {event.kind}" if i == 0 and event.kind not in labelled else None
            ax.axvline(event.at_s, color=color, linewidth=1.0, alpha=0.8, label=label)
            if event.duration_s > 0:
                ax.axvspan(event.at_s - event.duration_s, event.at_s, color=color, alpha=0.12)
        labelled.add(event.kind)
        if len(events) <= MAX_LABELLED_EVENTS:
            axes[0].annotate(f"{event.kind} {event.replica}".strip(), (event.at_s, 1.0), xycoords=("data", "axes fraction"),
                             rotation=90, fontsize=6, va="top", ha="right", color=color)


def plot_distributions(results: list[RequestResult], path: Path, title: str) -> None:
    """Empirical CDFs of TTFT, TPOT, ITL and E2E."""
    done = [r for r in results if r.ok and r.chunk_s]
    series = {
        "TTFT": [r.chunk_s[0] - r.sent_s for r in done],
        "TPOT": [(r.finish_s - r.chunk_s[0]) / (r.output_tokens - 1) for r in done if r.output_tokens > 1],
        "ITL": [gap for r in done for gap in np.diff(r.chunk_s)],
        "E2E": [r.finish_s - r.sent_s for r in done],
    }
    fig, axes = plt.subplots(2, 2, figsize=(9, 6))
    for ax, (name, values) in zip(axes.flat, series.items()):
        values = np.sort(np.array(values, dtype=float))
        if len(values):
            ax.plot(values, np.arange(1, len(values) + 1) / len(values), drawstyle="steps-post")
        ax.set_xlabel(f"{name} (s)")
        ax.set_ylabel("fraction of requests" if name != "ITL" else "fraction of gaps")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
