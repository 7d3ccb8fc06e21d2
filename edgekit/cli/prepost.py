"""`edgekit prepost ...`: warm up the pre/post-processing kernels and check prepost specs."""
from __future__ import annotations

import click

from ..errors import UsageError
from .common import CONTEXT_SETTINGS, echo_json, json_option


@click.group(context_settings=CONTEXT_SETTINGS)
def prepost():
    """Numba pre/post-processing kernels shipped with artifacts."""


@prepost.command()
@json_option
@click.option("--cold", is_flag=True,
              help="Measure in two fresh processes on an empty Numba cache: compile time (cold) and "
                   "first call with the cache filled (warm).")
@click.option("--backend", type=click.Choice(["auto", "numba", "numpy"]), default="auto", show_default=True)
@click.option("--op", "ops", multiple=True, metavar="NAME", help="Only this op (repeatable; default: all).")
def warmup(as_json, cold, backend, ops):
    """Compile (or load from Numba's cache) every kernel; report compile and first-call times."""
    from ..prepost import PrepostError, cold_and_warm, warmup_all

    try:
        res = cold_and_warm(backend=backend, ops=ops or None) if cold else warmup_all(backend, ops or None)
    except PrepostError as e:
        raise UsageError(str(e)) from None
    if as_json:
        echo_json(res)
        return
    from rich.table import Table

    from .common import console

    runs = res.items() if cold else [("this process", res)]
    for label, r in runs:
        t = Table(title=f"prepost warm-up ({label}): backend {r['backend']}"
                        + (f", numba {r['numba']}" if r.get("numba") else f" ({r.get('reason', '')})"))
        for col in ("op", "compile / load s", "cache", "first call ms", "second call ms"):
            t.add_column(col, justify="left" if col in ("op", "cache") else "right")
        for name, o in r["ops"].items():
            caches = {k["cache"] for k in o["kernels"].values() if k.get("compiled")}
            t.add_row(name, f"{o['compile_s']:.3f}", "/".join(sorted(caches)) or "-",
                      f"{o['first_call_s'] * 1e3:.2f}", f"{o['second_call_s'] * 1e3:.2f}")
        t.add_row("total", f"{r['compile_s']:.3f}", "", f"{r['first_call_s'] * 1e3:.2f}", "")
        console().print(t)


@prepost.command()
@click.argument("spec")
@json_option
def check(spec, as_json):
    """Validate a prepost SPEC (a JSON file, or JSON text) and show the pipeline it builds."""
    from ..prepost import Pipeline, PrepostError
    from ..prepost.pipeline import read_spec

    try:
        value, where = read_spec(spec)  # its errors name the file, or SPEC for JSON text
    except PrepostError as e:
        raise UsageError(str(e)) from None
    where = where or "SPEC"
    try:
        # the verdict compress gives: [], 0, false, "" and null are not specs (they were "ok", as empty ones)
        pipe = Pipeline(value)
    except PrepostError as e:
        raise UsageError(f"{where}: {e}") from None
    info = pipe.describe()
    if as_json:
        echo_json(info)
        return
    click.echo(f"{where}: ok ({len(pipe.pre)} pre, {len(pipe.post)} post steps; backend {info['backend']})")
    for stage in ("pre", "post"):
        for s in info[stage]:
            args = ", ".join(f"{k}={v!r}" for k, v in s.items() if k != "op")
            click.echo(f"  {stage}: {s['op']}({args})")
