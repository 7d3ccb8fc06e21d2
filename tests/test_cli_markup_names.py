"""Names the user chose that read as Rich markup ('[/v]' is a closing tag) print as text: the command's work
was done, then its summary raised MarkupError and the run ended as an internal error, exit 1."""
import shutil

import numpy as np

from edgekit.cli import main
from flash_fixtures import make_outdir


def test_bundle_named_like_markup_is_written_and_reported(tmp_path, capsys):
    out = make_outdir(tmp_path / "out")
    (tmp_path / "k[").mkdir()
    dest = tmp_path / "k[" / "v].ekb"
    assert main(["bundle", str(out), "-o", str(dest)]) == 0
    err = capsys.readouterr().err.replace("\n", "")
    assert dest.is_file() and "k[/v].ekb" in err, err


def test_quantize_of_a_model_named_like_markup_exits_0(tmp_path, capsys):
    out = make_outdir(tmp_path / "out")
    src = tmp_path / "m[b]x.onnx"
    shutil.copy(out / "model.fp32.onnx", src)
    np.save(tmp_path / "c.npy", np.random.default_rng(0).standard_normal((64, 16)).astype(np.float32))
    assert main(["quantize", str(src), "--calib", str(tmp_path / "c.npy"), "--no-tune", "-o",
                 str(tmp_path / "q[/x]")]) == 0
    cap = capsys.readouterr()
    assert "m[b]x.onnx: fp32" in (cap.out + cap.err), cap  # the summary line, not only the progress
