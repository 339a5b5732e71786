"""Draw a line plot from a JSON spec (run with bench/.envs/plot, which has matplotlib):
{"title", "xlabel", "ylabel", "out", "series": [{"label", "x": [...], "y": [...]}],
 "hlines": [{"label", "y"}], "logx": false, "logy": false}

`draw(spec)` (main venv) runs this file in the plot venv, or returns None when it is missing.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any


def draw(spec: dict[str, Any]) -> str | None:
    from bench.lib import peer_python

    py = peer_python("plot")
    if py is None:
        print("(no plot: run bench/setup_peers.sh plot for matplotlib)")
        return None
    subprocess.run([py, __file__], input=json.dumps(spec), text=True, check=True, timeout=120)
    print(f"(plot written to {spec['out']})")
    return str(spec["out"])


def _render(spec: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for s in spec.get("series", []):
        ax.plot(s["x"], s["y"], marker="o", label=s["label"])
        for x, y in zip(s["x"], s["y"], strict=True):
            ax.annotate(
                f"{y:,.0f}",
                (x, y),
                textcoords="offset points",
                xytext=(0, 6),
                ha="center",
                fontsize=8,
            )
    styles = ["--", ":", "-."]
    for i, h in enumerate(spec.get("hlines", [])):
        ax.axhline(
            h["y"],
            linestyle=styles[i % 3],
            color=f"C{i + 3}",
            label=f"{h['label']} ({h['y']:,.0f})",
        )
    if spec.get("logx"):
        ax.set_xscale("log")
    if spec.get("logy"):
        ax.set_yscale("log")
    if spec.get("xticks"):
        ax.set_xticks(spec["xticks"])
    ax.set_title(spec["title"], fontsize=10)
    ax.set_xlabel(spec["xlabel"])
    ax.set_ylabel(spec["ylabel"])
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    Path(spec["out"]).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(spec["out"])


if __name__ == "__main__":
    _render(json.loads(sys.stdin.read()))
