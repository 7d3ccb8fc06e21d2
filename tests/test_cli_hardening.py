"""CLI output and inputs that come from outside: names that read as Rich markup, text a device prints,
recipes that ask for pickle loading, weights files that are not checkpoints."""
from __future__ import annotations

import textwrap

import numpy as np
import pytest

from edgekit.cli import main
from flash_fixtures import make_outdir, rebuild_bundle

MLP = textwrap.dedent("""
    import torch.nn as nn

    def build():
        return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
""")


def _main(argv):
    """main()'s exit status, whether it returns or exits."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


@pytest.fixture
def mlp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("EDGEKIT_QUIET", "1")
    (tmp_path / "mlp.py").write_text(MLP)
    rng = np.random.default_rng(0)
    np.save(tmp_path / "calib.npy", rng.normal(size=(40, 6)).astype(np.float32))
    return "mlp.py:build"


# --- F17: markup and terminal escapes -------------------------------------------------------------------


def test_flash_to_a_device_path_that_reads_as_markup_succeeds(tmp_path, capsys):
    (tmp_path / "card[").mkdir()
    dev = tmp_path / "card[/models]"  # a legal folder name; to Rich a closing tag with nothing to close
    out = make_outdir(tmp_path / "out")
    assert _main(["flash", str(out), "--device", str(dev)]) == 0
    err = capsys.readouterr().err
    # the table wraps a long path inside its first column: the column's cells, joined, are the path
    cells = "".join(line.split("│")[1].strip() for line in err.splitlines() if line.startswith("│"))
    assert "internal error" not in err and "flashed" in err and cells.startswith(str(dev)), err
    assert (dev / "current").is_symlink()


def test_selftest_reason_with_markup_and_escapes_is_printed_as_plain_text(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # the reason on one table line
    out = make_outdir(tmp_path / "out")
    assert _main(["bundle", str(out), "-o", str(tmp_path / "good.ekb")]) == 0

    def evil_runner(d):  # what a device runner may print: a bracketed path, escape sequences
        (d / "edgekit_runner.py").write_text(
            "import json, sys\n"
            "print(json.dumps({'ok': False, 'reason': 'bad [/] \\x1b]0;TITLE\\x07\\x1b[2J\\x9b [bold]x[/bold] \\r'}))\n"
            "sys.exit(1)\n")

    rebuild_bundle(tmp_path / "good.ekb", tmp_path / "evil.ekb", evil_runner)
    capsys.readouterr()
    assert _main(["flash", str(tmp_path / "evil.ekb"), "--device", str(tmp_path / "dev")]) == 1  # failed, reported
    err = capsys.readouterr().err
    assert "internal error" not in err and "failed" in err, err
    assert "bad [/]" in err and "[bold]x[/bold]" in err, err  # shown as written, not interpreted
    assert not any(c in err for c in "\x1b\x07\x9b\r"), repr(err)
    assert "TITLE" not in err and "[2J" not in err, repr(err)


def test_compress_to_an_outdir_that_reads_as_markup_exits_0(tmp_path, capsys, mlp):
    (tmp_path / "runs[").mkdir()
    rc = _main(["compress", mlp, "--calib", "calib.npy", "--no-profile", "--quantize", "none", "-o", "runs[/net]"])
    err = capsys.readouterr().err
    assert rc in (0, None) and "internal error" not in err, err
    assert "edgekit compress -> runs[/net]" in err and (tmp_path / "runs[/net]" / "manifest.json").is_file()


def test_prune_to_an_outdir_that_reads_as_markup_exits_0(tmp_path, capsys, mlp):
    (tmp_path / "p[").mkdir()
    rc = _main(["prune", mlp, "--calib", "calib.npy", "--ratio", "0.5", "--no-distill", "-o", "p[/x]"])
    err = capsys.readouterr().err
    assert rc in (0, None) and "internal error" not in err, err
    assert "edgekit prune -> p[/x]" in err and (tmp_path / "p[/x]" / "manifest.json").is_file()


def test_progress_prints_descriptions_and_notes_as_text(capsys, monkeypatch):
    from edgekit import progress

    monkeypatch.delenv("EDGEKIT_QUIET", raising=False)
    with progress.task("bundling runs[/net] \x1b[2J", total=2) as bar:
        bar.update(completed=1, note="[/x] \x1b]0;T\x07")
    err = capsys.readouterr().err
    assert "bundling runs[/net] : done in" in err and "\x1b" not in err, repr(err)


def test_printable_drops_whole_escape_sequences_keeps_text():
    from edgekit.stdio import markup_safe, printable

    assert printable("a\tb\nc\x1b[31mred\x1b[0m\x1b]0;title\x07d\x00\x7f\x85\re") == "a\tb\ncredde"
    assert printable("ü 日本 [/x]") == "ü 日本 [/x]"
    assert markup_safe("runs[/net]") == "runs\\[/net]"


# --- F11: a recipe cannot ask for pickle loading ---------------------------------------------------------


class _Planted:
    """Unpickling calls open(path, 'w'): proof that code from the weights file ran."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return open, (self.path, "w")


def _recipe(tmp_path, weights):
    p = tmp_path / "sent" / "compress.toml"
    p.parent.mkdir()
    p.write_text(f'model = "{tmp_path / "mlp.py"}:build"\nweights = "{weights}"\ntrust_pickle = true\n'
                 f'calib = "{tmp_path / "calib.npy"}"\n[quantize]\nmode = "none"\n[profile]\nenabled = false\n')
    return p


def test_recipe_trust_pickle_is_ignored_with_a_note(tmp_path, capsys, mlp):
    import torch

    marker = tmp_path / "PICKLE_RAN"
    torch.save({"0.weight": _Planted(str(marker))}, tmp_path / "evil.pt")
    rec = _recipe(tmp_path, tmp_path / "evil.pt")
    assert _main(["compress", "--config", str(rec), "-o", "replay"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert not marker.exists()  # nothing from the file ran
    assert err[-2] == (f"edgekit: note: {rec}: recipe's trust_pickle ignored: "
                       "pass --trust-pickle to load pickled weights")
    assert "evil.pt" in err[-1] and "--trust-pickle" in err[-1] and len(err) == 2, err
    assert not (tmp_path / "replay").exists()


def test_trust_pickle_on_the_command_line_still_loads_a_recipes_pickled_model(tmp_path, capsys, mlp):
    import importlib.util

    import torch

    spec = importlib.util.spec_from_file_location("mlp", tmp_path / "mlp.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    torch.save(mod.build(), tmp_path / "full.pt")  # a whole pickled model: needs --trust-pickle
    rec = _recipe(tmp_path, tmp_path / "full.pt")
    assert _main(["compress", "--config", str(rec), "--trust-pickle", "-o", "replay"]) in (0, None)
    assert (tmp_path / "replay" / "manifest.json").is_file()
    capsys.readouterr()


def test_recorded_recipe_never_carries_trust_pickle(tmp_path):
    from edgekit import config as c

    cfg = c.from_dict({"model": "zoo:digits-cnn", "output": str(tmp_path / "o"), "trust_pickle": True})
    assert "trust_pickle" not in c.to_toml(cfg)
    p = tmp_path / "compress.toml"
    p.write_text("trust_pickle = true\n" + c.to_toml(cfg))  # hand-edited or sent by someone
    assert c.from_dict(c.load_recipe(p, notes=False)).trust_pickle is False


# --- F13: weights files that are not checkpoints --------------------------------------------------------


def _load_error(path, trust_pickle=False):
    import warnings

    from edgekit.errors import InputError
    from edgekit.loader import load_state

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with pytest.raises(InputError) as e:
            load_state(str(path), trust_pickle=trust_pickle)
    assert [str(w.message) for w in seen] == []  # torch's UserWarning came with a source line
    msg = str(e.value)
    assert "\n" not in msg and "weights_only" not in msg and "will likely succeed" not in msg, msg
    return msg


def test_files_torch_save_never_writes_are_named_as_such(tmp_path):
    import pickle

    (tmp_path / "notes.pt").write_text("hello world\nthese are not weights\n")
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "raw.pt").write_bytes(pickle.dumps({"w": [1.0, 2.0]}))
    np.savez(tmp_path / "arrays.npz", w=np.zeros(3))
    for name, what in [("notes.pt", "neither a torch.save archive nor a pickle"), ("empty.pt", "the file is empty"),
                       ("raw.pt", "a plain Python pickle;"), ("arrays.npz", "a zip archive without torch.save's")]:
        assert _load_error(tmp_path / name).startswith(f"{tmp_path / name}: not a PyTorch weights file ({what}")


def test_plain_pickle_with_code_is_refused_unrun_even_when_trusted(tmp_path):
    import pickle

    marker = tmp_path / "PICKLE_RAN"
    (tmp_path / "raw.pt").write_bytes(pickle.dumps(_Planted(str(marker))))
    for trust in (False, True):  # torch.load would run it, then fail: 'Invalid magic number'
        msg = _load_error(tmp_path / "raw.pt", trust_pickle=trust)
        assert "not a PyTorch weights file (a plain Python pickle holding Python objects" in msg, msg
    assert not marker.exists()


def test_legacy_checkpoints_keep_loading_or_ask_for_trust_pickle(tmp_path):
    import torch

    from edgekit.loader import load_state

    sd = {"w": torch.arange(3.0)}
    torch.save(sd, tmp_path / "old.pt", _use_new_zipfile_serialization=False)
    assert torch.equal(load_state(str(tmp_path / "old.pt"), trust_pickle=False)["w"], sd["w"])
    torch.save(sd, tmp_path / "p4.pt", _use_new_zipfile_serialization=False, pickle_protocol=4)
    msg = _load_error(tmp_path / "p4.pt")
    assert "safe (weights-only) loader cannot read it" in msg and msg.endswith("pass --trust-pickle"), msg
    assert torch.equal(load_state(str(tmp_path / "p4.pt"), trust_pickle=True)["w"], sd["w"])
    torch.save(sd, tmp_path / "new.pt")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "new.pt").read_bytes()[:200])  # a copy cut short
    assert "truncated or damaged zip archive" in _load_error(tmp_path / "cut.pt")


def test_compress_with_a_text_file_as_weights_says_so_in_one_line(tmp_path, capsys, mlp):
    (tmp_path / "w.pt").write_text("not a torch file")
    assert _main(["compress", mlp, "--weights", "w.pt", "--calib", "calib.npy", "--no-profile", "-o", "o"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("edgekit: error: w.pt: not a PyTorch weights file (neither a torch.save archive nor a pickle); "
                   "save weights with torch.save(model.state_dict(), PATH)"), err
