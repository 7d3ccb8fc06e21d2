"""Text files a user writes (sentences, a recipe, a target profile, a pre/post spec) may start with a UTF-8
byte-order mark: Notepad and PowerShell 5 write one. It stayed in the first sentence ('\ufeffHello'), and
made the TOML and JSON files unreadable ('Invalid statement', 'Unexpected UTF-8 BOM')."""
import json
from pathlib import Path

import numpy as np

from edgekit.calibration import read_dataset
from edgekit.config import load_recipe
from edgekit.prepost.pipeline import read_spec
from edgekit.targets import load_target

BOM = b"\xef\xbb\xbf"
TARGETS = Path(__file__).resolve().parent.parent / "targets"


def test_files_starting_with_a_bom_read_as_without(tmp_path):
    (tmp_path / "s.txt").write_bytes(BOM + "Hello there.\r\nSecond line\r\n".encode())
    seen = []

    def tok(sents):
        seen.extend(sents)
        return {"ids": np.array([[len(s)] for s in sents], np.int64)}

    read_dataset(tmp_path / "s.txt", [{"name": "ids", "shape": ["batch", 1], "dtype": "int64"}], tokenizer=tok)
    assert seen == ["Hello there.", "Second line"]

    (tmp_path / "compress.toml").write_bytes(BOM + b'model = "zoo:digits-cnn"\ntolerance = "2%"\n')
    assert load_recipe(tmp_path / "compress.toml")["tolerance"] == "2%"

    (tmp_path / "t.toml").write_bytes(BOM + (TARGETS / "x86-laptop.toml").read_bytes())
    got, shipped = load_target(str(tmp_path / "t.toml")), load_target("x86-laptop")
    assert got.providers == shipped.providers and got.description == shipped.description

    spec = {"post": [{"op": "softmax_topk", "k": 3}]}
    (tmp_path / "p.json").write_bytes(BOM + json.dumps(spec).encode())
    assert read_spec(str(tmp_path / "p.json"))[0] == spec
