"""The timeline picture: requests per second by status, latency, worker memory; faults marked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

COLOURS = {"2xx/404 allowed": "#2ca02c", "401": "#ff7f0e", "403": "#9467bd", "503": "#d62728", "other": "#7f7f7f"}


def _group(status: int) -> str:
    if status in (200, 404):
        return "2xx/404 allowed"
    if status in (401, 403, 503):
        return str(status)
    return "other"


def timeline(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tl = result["timeline"]
    end = max(tl["t"], default=1.0)
    bins = int(end) + 1
    counts = {name: [0] * bins for name in COLOURS}
    for t, status in zip(tl["t"], tl["status"], strict=True):
        counts[_group(status)][int(t)] += 1
    fig, (ax1, ax2, ax3) = plt.subplots(3, 1, figsize=(12, 8), sharex=True, height_ratios=[3, 3, 1.5])
    xs = list(range(bins))
    ax1.stackplot(xs, *counts.values(), labels=list(counts), colors=list(COLOURS.values()), step="post")
    ax1.set_ylabel("requests / s")
    ax1.legend(loc="upper right", fontsize=8, ncol=5)
    step = max(1, len(tl["t"]) // 30000)
    ax2.scatter(tl["t"][::step], tl["ms"][::step], s=2, c="#1f77b4", alpha=0.3, linewidths=0)
    bad = tl["bad"]
    ax2.scatter([tl["t"][i] for i in bad], [tl["ms"][i] for i in bad], s=30, c="red", marker="x", label="judged wrong")
    ax2.set_yscale("log")
    ax2.set_ylabel("latency (ms)")
    hung = 1000 * result["windows"]["review_timeout"] + 1000
    ax2.axhline(hung, color="red", lw=0.8, ls=":", label="hung: review timeout + 1 s")
    ax2.legend(loc="upper right", fontsize=8)
    rss: dict[str, list[tuple[float, float]]] = {}
    for sample in result["rss_samples"]:
        for pid, mib in sample["rss_mib"].items():
            rss.setdefault(pid, []).append((sample["t"], mib))
    for pid, points in rss.items():
        ax3.plot([p[0] for p in points], [p[1] for p in points], label=f"worker {pid}")
    ax3.set_ylabel("RSS (MiB)")
    ax3.set_xlabel("seconds since the load started")
    for ax in (ax1, ax2, ax3):
        for o in result["outages"]:
            ax.axvspan(o["start"], o["end"], color="#d62728", alpha=0.12)
        for c in result["changes"]:
            ax.axvline(c["start"], color="#444", lw=0.8, ls="--")
    for o in result["outages"]:
        ax1.text(o["start"], ax1.get_ylim()[1] * 0.97, o["kind"], fontsize=7, va="top", color="#d62728")
    for c in result["changes"]:
        ax1.text(c["start"], ax1.get_ylim()[1] * 0.80, c["what"], fontsize=7, va="top", rotation=90, color="#444")
    totals = result["totals"]
    fig.suptitle(
        f"flask-bindcar soak ({result['mode']}, {result['load_seconds']:.0f} s, {totals['requests']} requests, "
        f"wrong allows {totals['verdicts'].get('wrong_allow', 0)}, "
        f"wrong denies {totals['verdicts'].get('wrong_deny', 0)}, "
        f"undocumented {totals['verdicts'].get('undocumented', 0)}, hung {totals['verdicts'].get('hung', 0)}; "
        "red spans: outages, dashed: changes)",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
