"""Tiny real artifacts for the bundle/flash tests: an ONNX linear model in an edgekit OUTDIR."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def linear_onnx(path: Path, n_in: int = 16, n_out: int = 4, seed: int = 0) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w = rng.standard_normal((n_in, n_out)).astype(np.float32)
    b = rng.standard_normal(n_out).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["y"])],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", n_in])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", n_out])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def make_outdir(root: Path, *, n_in: int = 16, n_out: int = 4, seed: int = 0, int8_too: bool = False) -> Path:
    """An edgekit output directory: model.fp32.onnx (+ a second variant) and manifest.json."""
    from edgekit.artifact import Artifact, Manifest
    from edgekit.onnxutil import graph_facts

    root.mkdir(parents=True, exist_ok=True)
    arts = []
    variants = [("fp32", seed)] + ([("int8", seed + 1)] if int8_too else [])
    for kind, s in variants:
        p = root / f"model.{kind}.onnx"
        linear_onnx(p, n_in, n_out, s)
        facts = graph_facts(p)
        a = Artifact(kind=kind, path=p.name, stage="export", inputs=facts["inputs"], outputs=facts["outputs"],
                     opset=facts["opset"], params=facts["params"])
        a.refresh_file_facts(root)
        arts.append(a)
    rec = {"host": {"status": "ok", "path": arts[-1].path, "kind": arts[-1].kind, "reason": "test"}}
    Manifest(source={"spec": "tests:linear"}, artifacts=arts, recommended=rec,
             prepost={"pre": [], "post": [{"op": "softmax_topk", "k": 2}]}).write(root)
    return root


def rebuild_bundle(src: Path, dest: Path, mutate) -> str:
    """Unpack src, let mutate(dir) change files, re-hash and re-version it honestly, pack to dest."""
    import tempfile

    from edgekit.flash.archive import safe_extract, write_archive
    from edgekit.flash.bundle import META, content_version
    from edgekit.fsutil import sha256_file

    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        safe_extract(src, d)
        mutate(d)
        meta = json.loads((d / META).read_text())
        meta["files"] = {p.relative_to(d).as_posix(): sha256_file(p) for p in sorted(d.rglob("*"))
                         if p.is_file() and p.name != META}
        meta["version"] = content_version(meta, meta["artifact"]["kind"])
        (d / META).write_text(json.dumps(meta, indent=2, sort_keys=True))
        write_archive(dest, d, list(meta["files"]) + [META])
        return meta["version"]


def tree_hashes(vdir: Path) -> dict:
    """{relpath: sha256} of every file under a version directory on the 'device'."""
    from edgekit.fsutil import sha256_file

    return {p.relative_to(vdir).as_posix(): sha256_file(p) for p in sorted(vdir.rglob("*")) if p.is_file()}


def bundles_for_seeds(root: Path, seeds) -> list:
    """One real bundle per seed (different weights, so different versions), read back as Bundles."""
    from edgekit.flash import read_bundle
    from edgekit.flash.bundle import build_bundle

    out = []
    for i in seeds:
        build_bundle(make_outdir(root / f"o{i}", seed=i), root / f"v{i}.ekb")
        out.append(read_bundle(root / f"v{i}.ekb", root))
    return out
