"""Run the edgekit CLI in this process, as a user's shell would see its exit status."""
from edgekit.cli import main


def run_cli(argv) -> int:
    try:
        return main(argv)
    except SystemExit as e:  # click's standalone mode ends every command with one
        return e.code


def prune_model_file(tmp_path, capsys, source: str, *, shape, ratio: float = 0.3, samples: int = 24):
    """Write `source` as model.py, random calibration inputs of `shape` per sample, and run
    `edgekit prune model.py:net --no-distill`: (exit status, stderr, output folder)."""
    import numpy as np

    (tmp_path / "model.py").write_text(source)
    np.save(tmp_path / "x.npy", np.random.default_rng(0).normal(size=(samples, *shape)).astype(np.float32))
    out = tmp_path / "out"
    rc = run_cli(["prune", f"{tmp_path / 'model.py'}:net", "--calib", str(tmp_path / "x.npy"), "--ratio", str(ratio),
                  "--no-distill", "-o", str(out)])
    return rc, capsys.readouterr().err, out
