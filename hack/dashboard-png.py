#!/usr/bin/env python3
"""Draws the README's picture of lbpool's Grafana dashboard from a test run.

tests/tests/e2e_monitoring.rs writes every panel's queries over its run
(Prometheus range queries, one point a second) to
target/test-artifacts/dashboard-data.json; this plots them, panel by panel
as the dashboard lays them out, to docs/dashboard.png. Needs matplotlib
(pip install matplotlib); not part of the test run.

    python3 hack/dashboard-png.py [DATA] [PNG]
"""

import json
import math
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

root = Path(__file__).resolve().parent.parent
data_path = Path(sys.argv[1]) if len(sys.argv) > 1 else root / "target/test-artifacts/dashboard-data.json"
png_path = Path(sys.argv[2]) if len(sys.argv) > 2 else root / "docs/dashboard.png"
dashboard = json.loads((root / "manifests/components/monitoring/dashboard.json").read_text())
data = json.loads(data_path.read_text())

# The panels in the dashboard's order, with their queries' legends.
legends = {}
for panel in dashboard["panels"]:
    for target in panel["targets"]:
        legends[(panel["title"], target["expr"])] = target.get("legendFormat", "")
order = [p["title"] for p in dashboard["panels"]]
by_panel = {}
for entry in data["panels"]:
    by_panel.setdefault(entry["panel"], []).append(entry)

start = data["start"]
cols = 3
rows = math.ceil(len(order) / cols)
fig, axes = plt.subplots(rows, cols, figsize=(18, 3.2 * rows), squeeze=False)
fig.suptitle(
    "lbpool dashboard, from the e2e monitoring tier (namespace demo, pool webapp; "
    "InPlace, webapp scaled 2 → 6 → 2 under load)",
    fontsize=13,
)
for ax, title in zip(axes.flat, order):
    ax.set_title(title if len(title) <= 60 else title[:57] + "…", fontsize=9)
    ax.tick_params(labelsize=7)
    ax.set_xlabel("seconds into the run", fontsize=7)
    for entry in by_panel.get(title, []):
        for series in entry["series"]:
            points = [(float(t) - start, float(v)) for t, v in series["values"]]
            points = [(t, v) for t, v in points if math.isfinite(v)]
            if not points:
                continue
            legend = next(
                (legends[k] for k in legends if k[0] == title and k[1].replace("$__rate_interval", "5s")
                 .replace("$namespace", "demo").replace("$pool", "webapp") == entry["expr"]),
                "",
            )
            for label, value in series["metric"].items():
                legend = legend.replace("{{" + label + "}}", value)
            xs, ys = zip(*points)
            ax.plot(xs, ys, linewidth=1, label=legend or None)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=6, loc="upper left")
for ax in list(axes.flat)[len(order):]:
    ax.axis("off")
fig.tight_layout(rect=(0, 0, 1, 0.97))
png_path.parent.mkdir(parents=True, exist_ok=True)
fig.savefig(png_path, dpi=80)
print(png_path)
