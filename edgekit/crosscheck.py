"""Outputs from another machine (emulated ARM, a device over SSH) checked against this host's.

Both sides get the same inputs; the stated tolerance is FP32: 1e-4 x max(1, |reference|),
INT8: one output quantization step (see profile.output_tolerance).
"""
from __future__ import annotations


def host_feeds(models: dict, inputs, batch: int, threads):
    """(host sessions by label, the feed dict both sides run, failure results or None)."""
    from .runner import edgekit_runner as runner

    host, feeds = {}, None
    for label, path in models.items():
        try:
            host[label] = runner.open_session(path, None, threads)
            if feeds is None:
                feeds = runner.fit_feeds(host[label], inputs[0], batch) if inputs else runner.make_feeds(host[label], batch)
        except Exception as e:
            host[label] = e
    if feeds is None:
        return host, None, {k: {"status": "failed", "reason": f"{type(e).__name__}: {e}"} for k, e in host.items()}
    return host, feeds, None


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
        if isinstance(s, Exception) or s is None or not got:
            r["arm_vs_host"] = {"ok": None, "reason": "no host reference" if got else "no outputs came back"}
            continue
        ref = {o.name: v for o, v in zip(s.get_outputs(), s.run(None, feeds))}
        atol = output_tolerance(models[label], precision_of(label, r), ref)
        ok, info = runner.compare(got, ref, atol)
        r["arm_vs_host"] = {"ok": ok, "atol": atol, **info}
    return res
