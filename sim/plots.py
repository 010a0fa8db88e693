"""PNG plots of simulation results (matplotlib, no display)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from sim.cluster import SimResult  # noqa: E402


def plot_timeline(result: SimResult, path: Path, title: str) -> None:
    """Running requests and KV usage per replica over time."""
    rows = result.timeline.rows
    if not rows:
        return
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    for replica in sorted({r[1] for r in rows}):
        mine = [r for r in rows if r[1] == replica]
        top.plot([r[0] for r in mine], [r[2] + r[3] for r in mine], label=replica, linewidth=0.8)
        bottom.plot([r[0] for r in mine], [r[4] * 100 for r in mine], linewidth=0.8)
    top.set_ylabel("requests (running + waiting)")
    bottom.set_ylabel("KV usage (%)")
    bottom.set_xlabel("simulated time (s)")
    top.legend(fontsize=6, ncol=4)
    fig.suptitle(f"{title}\ncalibration: {result.calibration}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_curves(curves: dict[str, list[tuple[float, float]]], path: Path, title: str, xlabel: str, ylabel: str,
                note: str = "", log_y: bool = False) -> None:
    """One line per label: [(x, y), ...]."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, points in curves.items():
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if log_y:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title + (f"\n{note}" if note else ""), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
