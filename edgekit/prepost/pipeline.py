"""A declarative pre/post-processing pipeline, rebuilt on the device from the manifest's spec:

    {"pre":  [{"op": "resize_normalize", "size": [224, 224], "mean": [...], "std": [...], "layout": "NCHW"}],
     "post": [{"op": "softmax_topk", "k": 5}]}

Steps run in order. A step reads the previous step's result ("prev") unless its "inputs" names
other values: a key of the previous result (when that was a dict), a model output (by name, or
by position as an integer), or a feed produced by pre-processing (e.g. "attention_mask").
Without "inputs", a step reads its op's default values, and the first of them is the previous step's
result whenever there is a previous step: only the first step of a stage reads by name what its op names
first (nms: the model outputs "boxes" and "scores"), so [decode_boxes, nms] runs NMS on the decoded boxes.
"""
from __future__ import annotations

import json
import time


from . import _jit
from .errors import PrepostError
from .ops import OPS, REQUIRED

STAGES = ("pre", "post")
_STEP_KEYS = ("op", "inputs")


def _where(stage, i, op=None):
    return f"prepost.{stage}[{i}]" + (f" ({op})" if op else "")


def _resolve_params(stage, i, step) -> tuple:
    """(op name, full parameters with defaults, inputs) after checking every key and value."""
    if not isinstance(step, dict):
        raise PrepostError(f"{_where(stage, i)}: expected an object with an 'op' key, got {step!r}")
    op = step.get("op")
    if op not in OPS:
        raise PrepostError(f"{_where(stage, i)}: unknown op {op!r}; valid ops: {', '.join(sorted(OPS))}")
    d = OPS[op]
    w = _where(stage, i, op)
    if stage not in d.stages:
        raise PrepostError(f"{w}: is a {'/'.join(d.stages)}-processing op, not allowed in '{stage}'")
    valid = sorted(d.params) + list(_STEP_KEYS)
    for key in step:
        if key not in valid:
            raise PrepostError(f"{w}: unknown key {key!r}; valid keys: {', '.join(valid)}")
    params = {}
    for key, (default, chk) in d.params.items():
        if key not in step:
            if default is REQUIRED:
                raise PrepostError(f"{w}: missing required key {key!r}")
            params[key] = default
            continue
        try:
            chk(step[key], key)
        except PrepostError as e:
            raise PrepostError(f"{w}: {e}") from None
        params[key] = step[key]
    if d.check is not None:
        try:
            d.check(params)
        except PrepostError as e:
            raise PrepostError(f"{w}: {e}") from None
    inputs = step.get("inputs", _default_inputs(d, i))
    if not isinstance(inputs, list) or not all(isinstance(x, (str, int)) and not isinstance(x, bool) for x in inputs):
        raise PrepostError(f"{w}: 'inputs' must be a list of names or output positions, got {inputs!r}")
    lo, hi = d.n_inputs
    if not lo <= len(inputs) <= hi:
        want = str(lo) if lo == hi else f"{lo} to {hi}"
        raise PrepostError(f"{w}: 'inputs' has {len(inputs)} entries; {op} reads {want} "
                           f"(default {_default_inputs(d, i)})")
    return op, params, inputs


def _default_inputs(d, i) -> list:
    """An op's default inputs, the first being the previous step's result after step 0: nms read the model's
    'boxes' after decode_boxes, dropping the decoded boxes without a word."""
    inputs = list(d.inputs)
    if i > 0 and inputs:
        inputs[0] = "prev"
    return inputs


def validate_spec(spec) -> dict:
    """Check a prepost spec (any JSON-like object); raise PrepostError naming the bad step and key."""
    if not isinstance(spec, dict):
        raise PrepostError(f"prepost: expected an object with 'pre' and/or 'post' lists, got {type(spec).__name__}")
    for key in spec:
        if key not in STAGES:
            raise PrepostError(f"prepost: unknown key {key!r}; valid keys: {', '.join(STAGES)}")
    for stage in STAGES:
        steps = spec.get(stage, [])
        if not isinstance(steps, list):
            raise PrepostError(f"prepost.{stage}: expected a list of steps, got {type(steps).__name__}")
        for i, step in enumerate(steps):
            _resolve_params(stage, i, step)
    try:
        json.dumps(spec)
    except (TypeError, ValueError) as e:
        raise PrepostError(f"prepost: not JSON-serialisable ({e})") from None
    return spec


def read_spec(arg: str, what: str = "SPEC") -> tuple:
    """A spec given on a command line as a JSON file or as JSON text -> (spec, the file as given, or None).

    Not validated (callers word their own errors). A path to a file that is not there must not be
    parsed as JSON text and reported as bad JSON: text that is not a file and does not parse is a
    missing file, unless it starts as JSON does ('{', '['). what names the argument in errors about text.
    """
    from pathlib import Path

    if not arg.strip():  # Path("") is the current folder
        raise PrepostError(f"{what}: empty (a JSON file or JSON text)")
    p = Path(arg)
    if _stat_ok(p.is_file):
        try:
            text = p.read_text(encoding="utf-8-sig")  # a BOM (Windows editors) is no JSON
        except (OSError, UnicodeDecodeError) as e:
            raise PrepostError(f"{arg}: cannot read ({getattr(e, 'strerror', None) or e})") from None
        try:
            return json.loads(text), arg
        except ValueError as e:
            raise PrepostError(f"{arg}: not valid JSON ({e})") from None
    try:
        return json.loads(arg), None
    except ValueError as e:
        if arg.lstrip()[:1] in ("{", "["):
            raise PrepostError(f"{what}: not valid JSON ({e})") from None
    name = arg if arg.isprintable() else repr(arg)  # the error stays one line
    if _stat_ok(p.exists):
        raise PrepostError(f"{name}: not a file ({what} is a JSON file or JSON text)")
    raise PrepostError(f"{name}: no such file ({what} is a JSON file or JSON text)")


def _stat_ok(test) -> bool:
    """test() of a path that may be JSON text: a line of JSON over 255 characters is a file name too long
    for the OS, which pathlib raises as OSError rather than answering False."""
    try:
        return test()
    except OSError:
        return False


class _Step:
    def __init__(self, stage, i, step, backend):
        self.where = _where(stage, i, step.get("op"))
        self.op, self.params, self.inputs = _resolve_params(stage, i, step)
        self.fn = OPS[self.op].build(self.params, backend)

    def run(self, env):
        args = []
        for name in self.inputs:
            key = str(name)
            if key not in env:
                have = ", ".join(sorted(k for k in env if not k.isdigit())) or "none"
                raise PrepostError(f"{self.where}: input {name!r} not found; available: {have}")
            args.append(env[key])
        try:
            return self.fn(*args)
        except PrepostError as e:
            raise PrepostError(f"{self.where}: {e}") from None

    def describe(self) -> dict:
        return {"op": self.op, **self.params, "inputs": self.inputs}


class Pipeline:
    """Pre/post-processing steps built from a spec; `backend` records what actually runs."""

    def __init__(self, spec: dict, backend: str = "auto", strict: bool = False):
        validate_spec(spec)
        self.spec = spec
        self.requested = backend
        self.backend = _jit.resolve_backend(backend, strict=strict)
        self.pre = [_Step("pre", i, s, self.backend) for i, s in enumerate(spec.get("pre", []))]
        self.post = [_Step("post", i, s, self.backend) for i, s in enumerate(spec.get("post", []))]

    @classmethod
    def from_spec(cls, spec, backend: str = "auto", strict: bool = False) -> "Pipeline":
        if isinstance(spec, (str, bytes)):
            try:
                spec = json.loads(spec)
            except ValueError as e:
                raise PrepostError(f"prepost: not valid JSON ({e})") from None
        return cls(spec or {}, backend, strict)

    @staticmethod
    def run_steps(steps, env, prev, where=None):
        """where: a spec's place for a check run (prepost.fit), whose step failures become one line."""
        env["prev"] = prev
        for s in steps:
            try:
                prev = s.run(env)
            except Exception as e:
                if where is None:
                    raise
                if isinstance(e, PrepostError):
                    raise PrepostError(f"{where}: {e}") from None
                msg = (str(e).splitlines() or [""])[0]  # whatever the step raises, it would raise on the device too
                raise PrepostError(f"{where}: {s.where}: fails on a sample input: {type(e).__name__}: {msg}") from None
            env["prev"] = prev
            if isinstance(prev, dict):
                env.update(prev)
        return prev

    def preprocess(self, raw):
        """Raw input (image array, or token id lists) -> the model's feed (an array or a dict of arrays)."""
        return self.run_steps(self.pre, {}, raw)

    def postprocess(self, outputs, feeds=None, names=None):
        """Model outputs (one array, a list in output order, or a dict by name) -> the answer.

        feeds: what preprocess returned (a mask for mean pooling); names: output names for a list.
        """
        env = {}
        if isinstance(feeds, dict):
            env.update(feeds)
        if isinstance(outputs, dict):
            env.update(outputs)
            first = next(iter(outputs.values()), None)
        elif isinstance(outputs, (list, tuple)):
            env.update({str(i): o for i, o in enumerate(outputs)})
            env.update(dict(zip(names or [], outputs)))
            first = outputs[0] if outputs else None
        else:
            env["0"] = first = outputs
        return self.run_steps(self.post, env, first)

    def raw_from_inputs(self, feeds: dict):
        """The raw input the first pre step turns into these model feeds, where that step can say (token
        rows from input_ids + attention_mask), else None."""
        if not self.pre:
            return None
        first = self.pre[0]
        inv = OPS[first.op].raw_from_inputs
        return inv(first.params, feeds) if inv is not None else None

    def example_input(self):
        """A representative raw input for the first pre step (e.g. a 480x640 RGB frame), for timing."""
        if not self.pre:
            return None
        first = self.pre[0]
        return OPS[first.op].example(first.params)[0]

    def describe(self) -> dict:
        info = _jit.backend_info()
        return {"backend": self.backend, "requested": self.requested, "numba": info["numba"],
                **({"fallback_reason": info["reason"]} if self.backend != "numba" and "reason" in info else {}),
                "pre": [s.describe() for s in self.pre], "post": [s.describe() for s in self.post],
                "kernels": sorted({k for s in self.pre + self.post for k in OPS[s.op].kernels})}

    def warmup(self) -> dict:
        """Get every kernel the steps use ready, then run each step once on a small example.

        compile_s: compiling them, or loading them from Numba's on-disk cache (per-kernel "cache"
        says which); first_call_s: the first run of all steps after that (thread start-up included).
        """
        kernels = sorted({k for s in self.pre + self.post for k in OPS[s.op].kernels})
        t0 = time.perf_counter()
        if self.backend == "numba":
            for k in kernels:
                for serial in _jit.variants(k):
                    _jit.get(k, serial)
        compile_s = time.perf_counter() - t0
        examples = [(s, OPS[s.op].example(s.params)) for s in self.pre + self.post]
        t0 = time.perf_counter()
        for s, args in examples:
            s.fn(*args)
        first_call_s = time.perf_counter() - t0
        return {"backend": self.backend, "compile_s": compile_s, "first_call_s": first_call_s,
                "kernels": {k: _jit.compile_info(k) for k in kernels} if self.backend == "numba" else {}}

    def __repr__(self):
        ops = lambda steps: ", ".join(s.op for s in steps)  # noqa: E731
        return f"Pipeline(pre=[{ops(self.pre)}], post=[{ops(self.post)}], backend={self.backend!r})"
