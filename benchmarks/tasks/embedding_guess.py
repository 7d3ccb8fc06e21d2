"""What the task guess changes for an L2-normalised embedding: zoo:minilm exported to ONNX (its output
[batch, 384], static) and quantized by `edgekit quantize` as a user's ONNX file would be, once with the
task guessed (auto: rows of unit length make it an embedding, scored by cosine) and once with
`--task classification` (what the guess was before: the argmax of an embedding, scored by top-1 agreement).
Same file, same data, dynamic INT8 without tuning. Writes embedding_guess.json beside this file.

    python benchmarks/tasks/embedding_guess.py
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def _edgekit(*args) -> dict:
    r = subprocess.run([sys.executable, "-m", "edgekit", *args, "--json"], capture_output=True, text=True,
                       check=True)
    return json.loads(r.stdout)


def main() -> None:
    from edgekit.artifact import host_info, versions
    from edgekit.zoo.minilm import model_dir

    calib = ROOT / "calibration" / "minilm" / "calib.txt"
    res = {"command": "python benchmarks/tasks/embedding_guess.py", "host": host_info(), "versions": versions(),
           "data": str(calib.relative_to(ROOT)), "runs": {}}
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        _edgekit("compress", "zoo:minilm", "--quantize", "none", "--no-profile", "-o", str(d / "fp32"))
        onnx_file = d / "fp32" / "model.fp32.onnx"
        for label, task in (("auto", []), ("told classification", ["--task", "classification"])):
            man = _edgekit("quantize", str(onnx_file), "--calib", str(calib), "--tokenizer",
                           str(model_dir() / "tokenizer.json"), "--mode", "int8-dynamic", "--no-tune", *task,
                           "-o", str(d / label.replace(" ", "_")))
            res["runs"][label] = {
                "task": man["source"]["task"], "task_from": man["source"].get("task_from"),
                "metrics": {a["kind"]: {"name": a["metrics"]["name"], "value": a["metrics"]["value"],
                                        "n": a["metrics"].get("n")} for a in man["artifacts"]},
                "recommended": next(iter(man["recommended"].values()))["kind"]}
            print(label, json.dumps(res["runs"][label]))
    (HERE / "embedding_guess.json").write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
