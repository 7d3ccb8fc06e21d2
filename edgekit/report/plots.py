"""The report's figures, drawn with matplotlib (Agg, no pyplot state): inline SVG for HTML, PNG for Markdown.

Each builder takes the report dict (see model.py) and returns Plot records, or nothing when its data
is absent. Only "ok" (native, measured) latencies are ever plotted; emulated, unavailable and
failed measurements appear in the tables as words, never as points.
"""
from __future__ import annotations

import html
import io
import re
from dataclasses import dataclass

KIND_COLORS = {"fp32": "#5b6770", "pruned": "#e07a3f", "distilled": "#9b5de5", "sparse": "#c9a227",
               "fp16": "#2a9d8f", "int8": "#1f6fb4", "int8-dynamic": "#52a7e0"}
MARKERS = ("o", "s", "D", "^", "v", "P", "X", "h")
OP_COLORS = ("#1f6fb4", "#e07a3f", "#2a9d8f", "#c44e52", "#9b5de5", "#c9a227", "#52a7e0", "#8c8c8c")
PREPOST_COLORS = {"pre": "#e07a3f", "model": "#1f6fb4", "post": "#2a9d8f"}
FONT = ["DejaVu Sans", "Helvetica", "Arial", "sans-serif"]
INK, GRID = "#2b2f36", "#e3e6ea"


@dataclass
class Plot:
    key: str  # unique, used for file names and SVG ids
    title: str
    caption: str
    fig: object  # matplotlib.figure.Figure
    run: str | None = None  # run label, or None for plots across runs


def _figure(w, h):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=100, layout="constrained")
    fig.set_facecolor("white")
    return fig


def _style(ax, xgrid=True, ygrid=True):
    for s in ("top", "right"):
        ax.spines[s].set_visible(False)
    for s in ("left", "bottom"):
        ax.spines[s].set_color("#9aa3ad")
    ax.tick_params(colors=INK, labelsize=9)
    ax.xaxis.label.set_color(INK)
    ax.yaxis.label.set_color(INK)
    ax.set_axisbelow(True)
    if xgrid:
        ax.grid(True, axis="x", color=GRID, linewidth=0.8)
    if ygrid:
        ax.grid(True, axis="y", color=GRID, linewidth=0.8)


def _slug(s) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", str(s)).strip("-").lower() or "x"


def _ok(lat):
    return lat and lat.get("status") == "ok"


def pareto(report) -> list:
    runs = report["runs"]
    pts = []  # (group, kind, p50, metric, bytes)
    groups = []
    for r in runs:
        for t in r["targets"]:
            g = f"{t}" if len(runs) == 1 else f"{r['label']} · {t}"
            for v in r["variants"]:
                lat = v["latency"].get(t)
                if _ok(lat) and v["metric"]:
                    pts.append((g, v["kind"], lat["p50_ms"], v["metric"]["value"], v["bytes"]))
                    if g not in groups:
                        groups.append(g)
    if not pts:
        return []
    metric_names = sorted({v["metric"]["name"] for r in runs for v in r["variants"] if v["metric"]})
    fig = _figure(9.6, 4.4)
    ax = fig.add_subplot()
    _style(ax)
    biggest = max(p[4] for p in pts) or 1
    for gi, g in enumerate(groups):
        gp = sorted((p for p in pts if p[0] == g), key=lambda p: p[2])
        front, best = [], -float("inf")
        for p in gp:
            if p[3] > best:
                front.append(p)
                best = p[3]
        if len(front) > 1:
            ax.step([p[2] for p in front], [p[3] for p in front], where="post", color="#9aa3ad",
                    linestyle="--", linewidth=1, zorder=1)
        for p in gp:
            area = 60 + 1500 * (p[4] / biggest)
            ax.scatter([p[2]], [p[3]], s=area, color=KIND_COLORS.get(p[1], "#777"), alpha=0.75,
                       marker=MARKERS[gi % len(MARKERS)], edgecolors="white", linewidths=1.2, zorder=3)
            ax.annotate(p[1], (p[2], p[3]), xytext=(0, -16 - (area ** 0.5) / 2), textcoords="offset points",
                        ha="center", va="top", fontsize=8.5, color=INK)
    xs = [p[2] for p in pts]
    if max(xs) / max(min(xs), 1e-9) > 20:
        ax.set_xscale("log")
    ys = [p[3] for p in pts]
    pad = max((max(ys) - min(ys)) * 0.25, 0.01)
    ax.set_ylim(min(ys) - pad * 1.6, max(ys) + pad)
    xpad = (max(xs) - min(xs)) * 0.12 or max(xs) * 0.2
    if ax.get_xscale() == "linear":
        ax.set_xlim(max(0, min(xs) - xpad), max(xs) + xpad)
    ax.set_xlabel("p50 latency, ms (lower is better)")
    ax.set_ylabel(f"{' / '.join(metric_names)} (higher is better)")
    from matplotlib.lines import Line2D

    kinds = [k for k in KIND_COLORS if any(p[1] == k for p in pts)]
    handles = [Line2D([], [], marker="o", linestyle="", color=KIND_COLORS[k], markersize=8, label=k) for k in kinds]
    if len(groups) > 1:
        handles += [Line2D([], [], marker=MARKERS[i % len(MARKERS)], linestyle="", color="#777", markersize=7,
                           label=g) for i, g in enumerate(groups)]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False, fontsize=9)
    return [Plot("pareto", "Latency vs " + " / ".join(metric_names),
                 "Each point is an artifact measured on a target; marker area is proportional to file size. "
                 "The dashed line joins the Pareto front (no other artifact is both faster and more accurate). "
                 "Emulated, unavailable and failed measurements are not plotted.", fig)]


def distributions(report) -> list:
    out = []
    for r in report["runs"]:
        panels = []
        for t in r["targets"]:
            rows = [(v["kind"], v["latency"][t]["samples_ms"]) for v in r["variants"]
                    if _ok(v["latency"].get(t)) and len(v["latency"][t].get("samples_ms") or []) >= 2]
            if rows:
                panels.append((t, rows))
        if not panels:
            continue
        n = sum(len(p[1]) for p in panels)
        fig = _figure(9.6, 1.1 + 0.55 * n + 0.6 * len(panels))
        axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
        for ax, (t, rows) in zip(axes, panels):
            _style(ax, ygrid=False)
            rows = rows[::-1]  # first variant on top
            bp = ax.boxplot([s for _, s in rows], orientation="horizontal", widths=0.6, patch_artist=True,
                            showfliers=True, flierprops={"markersize": 3, "markeredgecolor": "#9aa3ad"},
                            medianprops={"color": INK, "linewidth": 1.6})
            for patch, (k, _) in zip(bp["boxes"], rows):
                patch.set_facecolor(KIND_COLORS.get(k, "#777"))
                patch.set_alpha(0.55)
                patch.set_edgecolor(KIND_COLORS.get(k, "#777"))
            ax.set_yticks(range(1, len(rows) + 1), [f"{k} (n={len(s)})" for k, s in rows])
            # a few stragglers (a busy host) would squash the boxes: cut the axis above the largest p99
            import numpy as np

            hi = max(float(np.percentile(s, 99)) for _, s in rows)
            top = max(max(s) for _, s in rows)
            if top > hi * 1.3:
                lo = min(min(s) for _, s in rows)
                ax.set_xlim(lo - (hi - lo) * 0.05, hi + (hi - lo) * 0.25)
                for y, (_, s) in enumerate(rows, start=1):
                    n_out = sum(1 for x in s if x > hi + (hi - lo) * 0.25)
                    if n_out:
                        ax.annotate(f"{n_out} slower run{'s' if n_out > 1 else ''} up to {max(s):.3g} ms →",
                                    (1, y), xycoords=("axes fraction", "data"), ha="right", va="bottom",
                                    xytext=(0, 7), textcoords="offset points", fontsize=7.5, color="#5f6b76")
            ax.set_title(t, loc="left", fontsize=10, color=INK)
            ax.set_xlabel("latency per run, ms")
        out.append(Plot(f"dist-{_slug(r['label'])}", "Latency distribution" + _suffix(report, r),
                        "Box: interquartile range with the median; whiskers 1.5 IQR; dots are outliers "
                        "(all timed runs after warm-up; the axis may be cut above the 99th percentile).", fig, r["label"]))
    return out


def op_breakdown(report, top=7) -> list:
    out = []
    for r in report["runs"]:
        panels = []
        for t in r["targets"]:
            rows = [(v["kind"], v["latency"][t]["op_breakdown"]) for v in r["variants"]
                    if _ok(v["latency"].get(t)) and v["latency"][t].get("op_breakdown")]
            if rows:
                panels.append((t, rows))
        if not panels:
            continue
        fig = _figure(9.6, 1.2 + sum(0.5 * len(p[1]) + 0.7 for p in panels))
        axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
        for ax, (t, rows) in zip(axes, panels):
            _style(ax, ygrid=False)
            totals = {}
            for _, ops in rows:
                for op, v in ops.items():
                    totals[op] = totals.get(op, 0.0) + v
            order = sorted(totals, key=totals.get, reverse=True)
            shown = order[:top]
            rows = rows[::-1]
            left = [0.0] * len(rows)
            segs = shown + (["other"] if len(order) > top else [])
            for i, op in enumerate(segs):
                vals = [sum(v for o, v in ops.items() if o not in shown) if op == "other" else ops.get(op, 0.0)
                        for _, ops in rows]
                ax.barh(range(len(rows)), vals, left=left, height=0.6, label=op,
                        color=OP_COLORS[i % len(OP_COLORS)] if op != "other" else "#c8cdd2", edgecolor="white")
                left = [a + b for a, b in zip(left, vals)]
            for y, x in enumerate(left):
                ax.text(x, y, f"  {x:.3g} ms", va="center", fontsize=8.5, color=INK)
            ax.set_xlim(0, max(left) * 1.18)
            ax.set_yticks(range(len(rows)), [k for k, _ in rows])
            ax.set_title(t, loc="left", fontsize=10, color=INK)
            ax.set_xlabel("time per run by operator type, ms (ONNX Runtime profiler)")
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False, fontsize=8.5)
        out.append(Plot(f"ops-{_slug(r['label'])}", "Time per operator type" + _suffix(report, r),
                        "Where the time goes in one inference, summed per ONNX operator type; the largest "
                        f"{top} types are shown, the rest grouped as 'other'. Profiler timings include its own "
                        "overhead: compare the shares, and use p50 for the latency.", fig, r["label"]))
    return out


def pruning(report) -> list:
    out = []
    for r in report["runs"]:
        p = r.get("pruning")
        if not p or not (p["sensitivity"] or p["steps"]):
            continue
        panels = [x for x in ("sensitivity", "steps") if p[x]]
        fig = _figure(9.6, 3.8)
        axes = fig.subplots(1, len(panels), squeeze=False)[0]
        for ax, name in zip(axes, panels):
            _style(ax)
            if name == "sensitivity":
                layers = {}
                for s in p["sensitivity"]:
                    if s["ratio"] is not None and (s["drop"] is not None or s["metric"] is not None):
                        layers.setdefault(s["layer"], []).append(s)
                worst = sorted(layers, key=lambda k: max(_drop(s) for s in layers[k]), reverse=True)
                for i, lay in enumerate(worst):
                    pts = sorted(layers[lay], key=lambda s: s["ratio"])
                    hi = i < 6
                    ax.plot([s["ratio"] for s in pts], [_drop(s) for s in pts], marker="o" if hi else None,
                            markersize=4, linewidth=1.6 if hi else 0.8, color=OP_COLORS[i] if hi else "#c8cdd2",
                            label=lay if hi else None, zorder=3 if hi else 2)
                ax.set_xlabel("pruning ratio of the layer alone")
                ax.set_ylabel("metric drop")
                ax.set_title("per-layer sensitivity", loc="left", fontsize=10, color=INK)
                ax.legend(frameon=False, fontsize=8)
            else:
                st = sorted((s for s in p["steps"] if s["ratio"] is not None), key=lambda s: s["ratio"])
                if any(s["metric"] is not None for s in st):
                    ax.plot([s["ratio"] for s in st if s["metric"] is not None],
                            [s["metric"] for s in st if s["metric"] is not None], marker="o", color="#1f6fb4",
                            linewidth=2, zorder=4)
                    ax.set_ylabel("metric", color="#1f6fb4")
                second = "params" if any(s["params"] for s in st) else "latency_ms" if any(
                    s["latency_ms"] for s in st) else None
                if second:
                    ax2 = ax.twinx()
                    ax2.plot([s["ratio"] for s in st if s[second]], [s[second] for s in st if s[second]],
                             marker="s", color="#e07a3f", linestyle="--", zorder=2)
                    ax2.set_ylabel("parameters" if second == "params" else "latency, ms", color="#e07a3f")
                    ax2.spines["top"].set_visible(False)
                    ax2.tick_params(labelsize=9)
                ax.set_xlabel("pruning ratio")  # global or per layer, as the run's settings say
                ax.set_title("pruning schedule", loc="left", fontsize=10, color=INK)
        out.append(Plot(f"prune-{_slug(r['label'])}", "Pruning" + _suffix(report, r), _pruning_caption(panels),
                        fig, r["label"]))
    return out


_PANEL_TEXT = {"sensitivity": "the metric drop when each layer alone is pruned at a ratio (the most sensitive "
                              "layers are coloured)",
               "steps": "metric and size along the pruning schedule"}


def _pruning_caption(panels: list) -> str:
    """What the figure shows, panel by panel: a run without --sensitivity has only the schedule, and a caption
    describing a left panel that is not there misled (sweep38 F2)."""
    if len(panels) == 1:
        text = _PANEL_TEXT[panels[0]]
        return text[0].upper() + text[1:] + "."
    return " ".join(f"{side}: {_PANEL_TEXT[p]}." for side, p in zip(("Left", "Right"), panels))


def _drop(s):
    return s["drop"] if s["drop"] is not None else 0.0


def quant_trials(report) -> list:
    out = []
    for r in report["runs"]:
        for qi, q in enumerate(r.get("quantization") or []):
            pts = [t for t in q["trials"] if t["metric"] is not None and t["speedup"] is not None]
            if not pts:
                continue
            fig = _figure(9.6, 3.6)
            ax = fig.add_subplot()
            _style(ax)
            number = {id(t): i + 1 for i, t in enumerate(q["trials"])}  # the '#' column of the trials table
            for i, t in enumerate(sorted(pts, key=lambda t: t["speedup"])):
                chosen = t["name"] == q.get("chosen")
                ax.scatter([t["speedup"]], [t["metric"]], s=140 if chosen else 60,
                           marker="*" if chosen else "o" if t["passed"] else "X",
                           color="#2a9d8f" if t["passed"] else "#c44e52", edgecolors="white", zorder=3)
                ax.annotate(str(number[id(t)]), (t["speedup"], t["metric"]), xytext=(5, 5 if i % 2 else -11),
                            textcoords="offset points", fontsize=8, color=INK)
            ys = [t["metric"] for t in pts] + ([q["reference"]] if q.get("reference") is not None else [])
            pad = max((max(ys) - min(ys)) * 0.3, 0.005)
            ax.set_ylim(min(ys) - pad, max(ys) + pad)
            xs = [t["speedup"] for t in pts] + [1.0]
            xpad = max((max(xs) - min(xs)) * 0.1, 0.05)
            ax.set_xlim(min(xs) - xpad, max(xs) + xpad * 2.5)  # room for the trial names on the right
            if q.get("reference") is not None:
                ax.axhline(q["reference"], color="#5b6770", linestyle="--", linewidth=1)
                ax.text(ax.get_xlim()[0], q["reference"], " FP32 metric", va="bottom", fontsize=8, color="#5b6770")
            ax.axvline(1.0, color="#9aa3ad", linestyle=":", linewidth=1)
            ax.set_xlabel("speed-up vs FP32 (interleaved p50; > 1 is faster)")
            ax.set_ylabel("metric")
            from matplotlib.lines import Line2D

            ax.legend(handles=[Line2D([], [], marker="o", linestyle="", color="#2a9d8f", label="within tolerance"),
                               Line2D([], [], marker="X", linestyle="", color="#c44e52", label="outside tolerance"),
                               Line2D([], [], marker="*", linestyle="", color="#777", markersize=10, label="chosen")],
                      loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False, fontsize=8.5)
            parent = f" ({q['parent']})" if q.get("parent") else ""
            out.append(Plot(f"quant-{_slug(r['label'])}-{qi}", "Quantization trials" + parent + _suffix(report, r),
                            "Every INT8 candidate the tuner tried (numbered as in the table below): its metric "
                            "against its measured speed-up over FP32 on the primary target.", fig, r["label"]))
    return out


def prepost(report) -> list:
    out = []
    for r in report["runs"]:
        rows = []
        for t in r["targets"]:
            for v in r["variants"]:
                lat = v["latency"].get(t)
                if _ok(lat) and (lat.get("prepost") or {}).get("status") == "ok":
                    rows.append((f"{v['kind']} · {t}", lat["prepost"]))
        if not rows:
            continue
        fig = _figure(9.6, 1.3 + 0.5 * len(rows))
        ax = fig.add_subplot()
        _style(ax, ygrid=False)
        rows = rows[::-1]
        left = [0.0] * len(rows)
        for part in ("pre", "model", "post"):
            vals = [pp.get(f"{part}_ms") or 0.0 for _, pp in rows]
            ax.barh(range(len(rows)), vals, left=left, height=0.6, color=PREPOST_COLORS[part], edgecolor="white",
                    label={"pre": "pre-processing", "model": "model", "post": "post-processing"}[part])
            for y, (x0, w) in enumerate(zip(left, vals)):
                tot = sum((rows[y][1].get(f"{k}_ms") or 0.0) for k in ("pre", "model", "post"))
                if tot and w / tot > 0.08:
                    ax.text(x0 + w / 2, y, f"{w / tot:.0%}", ha="center", va="center", fontsize=8, color="white")
            left = [a + b for a, b in zip(left, vals)]
        ax.set_yticks(range(len(rows)), [k for k, _ in rows])
        ax.set_xlabel("time per request, ms (p50 of each part)")
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False, fontsize=8.5)
        out.append(Plot(f"prepost-{_slug(r['label'])}", "Pre/post-processing share of end-to-end time" +
                        _suffix(report, r), "How much of a request is spent outside the model.", fig, r["label"]))
    return out


def _suffix(report, r):
    return f" — {r['label']}" if len(report["runs"]) > 1 else ""


BUILDERS = {"pareto": pareto, "distributions": distributions, "op_breakdown": op_breakdown,
            "pruning": pruning, "quantization": quant_trials, "prepost": prepost}


def all_plots(report) -> list:
    import matplotlib

    with matplotlib.rc_context({"font.family": "sans-serif", "font.sans-serif": FONT, "svg.fonttype": "none",
                                "axes.titleweight": "bold"}):
        return _unique_keys([p for build in BUILDERS.values() for p in build(report)])


def _unique_keys(plots: list) -> list:
    """plots, a key that is taken given a '-2', '-3'... suffix: runs whose labels slug alike ('r a', 'r-a')
    wrote one run's PNGs over the other's, and gave the HTML duplicate ids."""
    taken = set()
    for p in plots:
        key, i = p.key, 2
        while key in taken:
            key, i = f"{p.key}-{i}", i + 1
        p.key = key
        taken.add(key)
    return plots


def to_svg(plot: Plot) -> str:
    """Inline-ready SVG: no XML prolog, DOCTYPE, metadata or namespace URLs; ids salted per plot."""
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": plot.key, "font.sans-serif": FONT}):
        plot.fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None, "Format": None, "Type": None})
    s = buf.getvalue()
    s = s[s.index("<svg"):]
    s = re.sub(r"<metadata>.*?</metadata>", "", s, flags=re.S)
    s = re.sub(r'\s+xmlns(:\w+)?="[^"]*"', "", s, count=3)
    s = re.sub(r'\s+version="1\.1"', "", s, count=1)
    # several SVGs share one HTML document: make matplotlib's ids (figure_1, clip paths...) unique per plot
    pre = f"{_slug(plot.key)}-"
    s = re.sub(r'\sid="([^"]+)"', lambda m: f' id="{pre}{m.group(1)}"', s)
    s = re.sub(r'url\(#([^)]+)\)', lambda m: f"url(#{pre}{m.group(1)})", s)
    s = re.sub(r'href="#([^"]+)"', lambda m: f'href="#{pre}{m.group(1)}"', s)
    # the title carries run labels (directory names): quote it, or a '"' in one opens the tag to new attributes
    return s.replace("<svg ", f'<svg role="img" aria-label="{html.escape(plot.title, quote=True)}" class="plot" ', 1)


PNG_TAG = "edgekit report"


def to_png(plot: Plot, dest) -> None:
    import matplotlib

    from ..fsutil import atomic_path

    with matplotlib.rc_context({"font.sans-serif": FONT}), atomic_path(dest) as tmp:
        # the tag lets a later report tell its own PNG from a user's file of that name (outputs.check_plot_folder)
        plot.fig.savefig(tmp, format="png", dpi=110, metadata={"Software": PNG_TAG})
