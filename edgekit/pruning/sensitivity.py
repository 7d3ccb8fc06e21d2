"""Per-layer sensitivity: prune one coupled group at a time at several ratios, measure the
metric drop on the eval set, and spend a global parameter budget where it hurts least."""
from __future__ import annotations

import csv
import io
from pathlib import Path

from ..fsutil import write_bytes_atomic, write_json_atomic, write_text_atomic
from ..module_copy import clone
from . import graph

RATIOS = (0.25, 0.5, 0.75)


def prunable_groups(model, example, plan: graph.Plan) -> list:
    """Names of the root layers of the groups Torch-Pruning would prune (attention heads excluded)."""
    dg = graph.dependency_graph(model, example)
    names = {m: n for n, m in model.named_modules()}
    ignored = [s for m in plan.ignored for s in m.modules()]
    ignored += graph._block_frozen(dg, ignored, plan.frozen)
    ignored += graph.mismatched_groups(dg, ignored)[0]
    out = []
    for g in graph.prunable_groups(dg, ignored):
        root = g[0].dep.target.module
        if root in plan.num_heads:
            continue
        out.append(names[root])
    return out


def analyse(model, example, metric, make_importance, *, plan_kw: dict, round_to, ratios=RATIOS,
            progress=None) -> list:
    """Rows {"layer", "ratio", "metric", "drop", "params_removed"}; the model itself is not changed."""
    base_metric = metric(model)
    _, base_params = graph.count(model, example)
    layers = prunable_groups(model, example, graph.make_plan(model, example, **plan_kw))
    rows, done = [], 0
    for name in layers:
        for r in ratios:
            m = clone(model)
            plan = graph.make_plan(m, example, **plan_kw)
            root = dict(m.named_modules())[name]
            imp, _ = make_importance(m)
            pruner = graph.make_pruner(m, example, plan, imp, ratio=0.0, ratio_dict={root: r}, round_to=round_to)
            graph.step(pruner, plan)
            value = metric(m)
            _, params = graph.count(m, example)
            rows.append({"layer": name, "ratio": r, "metric": value, "drop": base_metric - value,
                         "params_removed": base_params - params})
            done += 1
            if progress:
                progress(done, f"{name} @ {r:.2f}: drop {base_metric - value:+.4f}")
    return rows


def allocate(rows: list, budget_params: int) -> dict:
    """{layer: ratio}: greedily raise the ratio of the layer whose next level costs the least
    metric per parameter removed, until the parameter budget is spent."""
    levels = {}
    for r in rows:
        levels.setdefault(r["layer"], []).append(r)
    for v in levels.values():
        v.sort(key=lambda x: x["ratio"])
    pos = {k: -1 for k in levels}  # index of the chosen level, -1 = not pruned
    removed = 0

    def cost(k):
        i = pos[k] + 1
        nxt = levels[k][i]
        prev = levels[k][i - 1] if i > 0 else {"drop": 0.0, "params_removed": 0}
        gain = max(nxt["params_removed"] - prev["params_removed"], 1)
        return max(nxt["drop"] - prev["drop"], 0.0) / gain, gain

    while removed < budget_params:
        options = [k for k in levels if pos[k] + 1 < len(levels[k])]
        if not options:
            break
        k = min(options, key=lambda k: (cost(k)[0], -cost(k)[1]))
        removed += cost(k)[1]
        pos[k] += 1
    return {k: levels[k][i]["ratio"] for k, i in pos.items() if i >= 0}


def write(rows: list, outdir, *, metric_name: str, allocation: dict | None = None) -> dict:
    """sensitivity.json, sensitivity.csv and sensitivity.png (drop vs ratio per layer)."""
    outdir = Path(outdir)
    paths = {"json": outdir / "sensitivity.json", "csv": outdir / "sensitivity.csv", "png": outdir / "sensitivity.png"}
    write_json_atomic(paths["json"], {"metric": metric_name, "rows": rows, "allocation": allocation or {}})
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["layer", "ratio", "metric", "drop", "params_removed"])
    w.writeheader()
    w.writerows(rows)
    write_text_atomic(paths["csv"], buf.getvalue())
    write_bytes_atomic(paths["png"], _plot(rows, metric_name))
    return {k: str(v) for k, v in paths.items()}


def _plot(rows, metric_name) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    for layer in dict.fromkeys(r["layer"] for r in rows):
        pts = sorted((r["ratio"], r["drop"]) for r in rows if r["layer"] == layer)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=layer)
    ax.set_xlabel("fraction of the layer's channels removed (alone)")
    ax.set_ylabel(f"{metric_name} drop")
    ax.set_title("per-layer pruning sensitivity")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()

