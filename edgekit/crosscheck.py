"""Outputs from another machine (emulated ARM, a device over SSH) checked against this host's.

Both sides get the same inputs, each model its own (fitted to it, or generated for it, as the local
target does); the stated tolerance is FP32: 1e-4 x max(1, |reference|), INT8: one output
quantization step (see profile.output_tolerance).
"""
from __future__ import annotations


def host_feeds(models: dict, inputs, batch: int, threads):
    """(host sessions by label, {label: the feed dict both sides run}, {label: failure result}).

    A model with no feeds here is left to the runner: one this host cannot open gets the raw inputs
    (or generates its own), and a batch it cannot run is reported by the runner as unavailable.
    """
    from .runner import edgekit_runner as runner

    host, feeds, failed = {}, {}, {}
    for label, path in models.items():
        try:
            host[label] = runner.open_session(path, None, threads)
        except Exception as e:
            host[label] = e
            if inputs:
                feeds[label] = dict(inputs[0])
            continue
        try:
            runner.run_batch(host[label].get_inputs(), batch)
        except runner.BatchConflict:
            continue
        try:
            feeds[label] = (runner.fit_feeds(host[label], inputs[0], batch) if inputs
                            else runner.make_feeds(host[label], batch))
        except Exception as e:  # these inputs do not fit this model: it fails alone, as on the local target
            failed[label] = {"status": "failed", "reason": runner._one_line(e)}
    return host, feeds, failed


def runner_labels(models: dict) -> dict:
    """{runner label: label}: labels as the runner sees them (m0, m1, ...), since a label holds whatever
    the file name held ('=' splits LABEL=PATH, '::' splits LABEL::NAME)."""
    return {f"m{i}": label for i, label in enumerate(models)}


def feeds_npz(path, feeds: dict, alias: dict) -> None:
    """Write every model's feeds to one .npz, keys RUNNER_LABEL::INPUT (the runner's per-model form)."""
    import numpy as np

    back = {label: m for m, label in alias.items()}
    np.savez(path, **{f"{back[label]}::{name}": v for label, f in feeds.items() for name, v in f.items()})


def read_outputs(data, alias: dict) -> dict:
    """{label: {output: array}} from the runner's outputs .npz (a path or file object), keys LABEL::NAME."""
    import numpy as np

    out = {}
    with np.load(data, allow_pickle=False) as z:
        for key in z.files:
            m, _, name = key.partition("::")
            out.setdefault(alias.get(m, m), {})[name] = z[key]
    return out


def attach_comparison(res: dict, host: dict, models: dict, feeds: dict, remote_out: dict) -> dict:
    """Add "outputs" and "arm_vs_host" {ok, atol, max_abs_diff} to each ok result."""
    from .profile import output_tolerance, precision_of
    from .runner import edgekit_runner as runner

    for label, r in res.items():
        if r.get("status") != "ok":
            continue
        got = remote_out.get(label, {})
        r["outputs"] = got
        s = host.get(label)
        if isinstance(s, Exception) or s is None or label not in feeds:
            r["arm_vs_host"] = {"ok": None, "reason": "no host reference" if got else "no outputs came back"}
            continue
        ref = {o.name: v for o, v in zip(s.get_outputs(), s.run(None, feeds[label]))}
        tensors = {k: v for k, v in ref.items() if getattr(v, "dtype", object) != object}
        if not got:
            r["arm_vs_host"] = {"ok": None, "reason": "no outputs came back" if tensors else
                                "no tensor outputs to compare (" + ", ".join(ref) + ")"}
            continue
        atol = output_tolerance(models[label], precision_of(label, r), tensors)
        ok, info = runner.compare(got, ref, atol)
        r["arm_vs_host"] = {"ok": ok, "atol": atol, **info}
    return res
