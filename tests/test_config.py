from pathlib import Path

import pytest

from edgekit import config as c
from edgekit.errors import ConfigError


def test_tolerance_parse_relative_and_absolute():
    rel = c.Tolerance.parse("1%")
    assert rel.relative and rel.value == pytest.approx(0.01)
    assert rel.allows(0.9, 0.8911) and not rel.allows(0.9, 0.89)
    ab = c.Tolerance.parse("0.5pt")
    assert not ab.relative and ab.value == pytest.approx(0.005)
    assert ab.allows(0.9, 0.8951) and not ab.allows(0.9, 0.894)
    with pytest.raises(ConfigError, match="tolerance"):
        c.Tolerance.parse("lots")


@pytest.mark.parametrize("given,expected", [("1%", "1%"), ("1", "1%"), (1, "1%"), (2.5, "2.5%"), (0, "0%"),
                                            ("0.5%", "0.5%"), ("0.5pt", "0.5pt")])
def test_tolerance_bare_number_is_a_percentage_as_on_the_cli(given, expected):
    assert str(c.from_dict({"model": "m", "output": "o", "tolerance": given}).tolerance) == expected


@pytest.mark.parametrize("given,hint", [(0.01, "write '1%' or '0.01%'"), ("0.5", "write '50%' or '0.5%'")])
def test_tolerance_bare_fraction_refused_by_api_recipe_and_cli(tmp_path, capsys, monkeypatch, given, hint):
    """tolerance=0.01 from Python used to mean 0.01%, not the 1% it reads like."""
    import edgekit
    from edgekit import pipeline
    from edgekit.cli import main

    monkeypatch.setattr(pipeline, "run_config", lambda cfg, **kw: pytest.fail(f"ran with tolerance {cfg.tolerance}"))
    out = tmp_path / "o"
    with pytest.raises(ConfigError) as e:
        edgekit.compress("zoo:digits-cnn", output=str(out), tolerance=given)
    msg = str(e.value)
    assert "\n" not in msg and f"tolerance {given!r} is ambiguous" in msg and hint in msg, msg
    p = tmp_path / "r.toml"
    p.write_text(f"model = 'zoo:digits-cnn'\ntolerance = {given!r}\n")
    with pytest.raises(ConfigError, match=f"^{p}: tolerance .* is ambiguous") as e:
        c.load_recipe(p)
    with pytest.raises(SystemExit) as e:
        main(["compress", "zoo:digits-cnn", "--tolerance", str(given), "-o", str(out)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is ambiguous" in err and hint in err, err
    assert not out.exists()


def test_unknown_keys_suggest_the_right_one():
    with pytest.raises(ConfigError, match=r"unknown key 'ratoi' \(did you mean 'ratio'\?\)"):
        c.from_dict({"model": "m", "output": "o", "prune": {"ratoi": 0.5}})
    with pytest.raises(ConfigError, match="did you mean 'tolerance'"):
        c.from_dict({"model": "m", "output": "o", "tolerence": "1%"})


def test_bad_values_name_the_key():
    with pytest.raises(ConfigError, match="quantize.mode 'int4'"):
        c.from_dict({"model": "m", "output": "o", "quantize": {"mode": "int4"}})
    with pytest.raises(ConfigError, match="prune.ratio"):
        c.PruneConfig(ratio=1.5)


def test_recipe_roundtrip(tmp_path):
    cfg = c.from_dict({"model": "zoo:digits-cnn", "output": "out", "tolerance": "0.5pt",
                       "prune": {"ratio": 0.5}, "quantize": {"mode": "int8-dynamic"}, "targets": ["x86-laptop"]})
    p = tmp_path / "compress.toml"
    p.write_text(c.to_toml(cfg))
    again = c.from_dict(c.load_recipe(p))
    assert again.output == str((Path.cwd() / "out").resolve())  # a recipe names files by absolute path
    assert again == c.from_dict({**cfg.to_dict(), "output": again.output})
    assert cfg.distill_enabled  # distillation follows pruning by default


def test_recipe_errors_name_the_file(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text("model = 'zoo:x'\n[quantize]\nmoed = 'int8'\n")
    with pytest.raises(ConfigError, match=r"bad\.toml.*'moed'.*did you mean 'mode'"):
        c.load_recipe(p)
    p.write_text("model = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        c.load_recipe(p)
    with pytest.raises(ConfigError, match="not found"):
        c.load_recipe(tmp_path / "missing.toml")


@pytest.mark.parametrize("settings,match", [
    ({"seed": "x"}, "seed = 'x' must be int"),
    ({"distill": {"epochs": 2.5}}, r"\[distill\]: epochs = 2.5 must be int"),
    ({"quantize": {"tune": "no"}}, "tune = 'no' must be bool"),  # a truthy string would keep tuning on
    ({"input_shape": "1,1,32,32"}, "input_shape = '1,1,32,32' must be a list"),
    ({"prune": {"ratio": "0.5"}}, "ratio = '0.5' must be float"),
])
def test_wrong_value_types_name_the_key(settings, match):
    with pytest.raises(ConfigError, match=match):
        c.from_dict({"model": "zoo:digits-cnn", "output": "o", **settings})


@pytest.mark.parametrize("kw,match", [({"quantize": "fp16"}, "settings for quantize are a dict"),
                                      ({"prune": 0.5}, "settings for prune are a dict"),
                                      ({"output": None}, "output directory is required")])
def test_api_refuses_settings_it_would_otherwise_drop(tmp_path, kw, match):
    import edgekit

    with pytest.raises(ConfigError, match=match):
        edgekit.compress("zoo:digits-cnn", **{"output": str(tmp_path / "o"), **kw})
    assert not (tmp_path / "o").exists()


def test_api_takes_one_target_by_name(tmp_path):
    from edgekit.pipeline import resolve

    assert resolve("zoo:digits-cnn", output=str(tmp_path / "o"), targets="x86-laptop").targets == ("x86-laptop",)


def test_compress_max_trials_reaches_the_quantize_settings(tmp_path, monkeypatch, capsys):
    """README: compress tunes 'within --max-trials'; the option used to exist on `quantize` only."""
    from edgekit import pipeline
    from edgekit.cli import main

    seen = {}

    def capture(cfg, **kw):  # kw: how errors name an inline spec (preprocess_where)
        seen["max_trials"] = cfg.quantize.max_trials
        raise SystemExit(0)

    monkeypatch.setattr(pipeline, "run_config", capture)
    with pytest.raises(SystemExit):
        main(["compress", "zoo:digits-cnn", "--max-trials", "3", "-o", str(tmp_path / "o")])
    assert seen == {"max_trials": 3}
    with pytest.raises(SystemExit) as e:
        main(["compress", "zoo:digits-cnn", "--max-trials", "0", "-o", str(tmp_path / "o")])
    assert e.value.code == 2 and "--max-trials" in capsys.readouterr().err


def test_a_recipe_with_profiling_or_tuning_off_can_be_replayed_with_them_on(tmp_path, monkeypatch):
    # --no-profile and --no-tune were one-way flags: a recipe recorded with either off could not turn
    # it back on from the command line
    from edgekit import pipeline
    from edgekit.cli import main

    seen = []

    def capture(cfg, **kw):  # kw: how errors name an inline spec (preprocess_where)
        seen.append((cfg.profile.enabled, cfg.quantize.tune))
        raise SystemExit(0)

    rec = tmp_path / "compress.toml"
    rec.write_text(c.to_toml(c.from_dict({"model": "zoo:digits-cnn", "output": str(tmp_path / "a"),
                                          "profile": {"enabled": False}, "quantize": {"tune": False}})))
    monkeypatch.setattr(pipeline, "run_config", capture)
    for extra in ([], ["--profile", "--tune"], ["--no-profile"]):
        with pytest.raises(SystemExit):
            main(["compress", "--config", str(rec), "-o", str(tmp_path / "b"), *extra])
    assert seen == [(False, False), (True, True), (False, False)]
    with pytest.raises(SystemExit):
        main(["compress", "zoo:digits-cnn", "-o", str(tmp_path / "c")])
    assert seen[-1] == (True, True)  # the defaults


def test_recipe_never_carries_overwrite_and_its_output_is_relative_to_it(tmp_path, monkeypatch):
    # a recipe recorded from an --overwrite run replaced another run's folder when replayed elsewhere
    cfg = c.from_dict({"model": "zoo:digits-cnn", "output": str(tmp_path / "b"), "overwrite": True})
    text = c.to_toml(cfg)
    assert "overwrite" not in text
    p = tmp_path / "rec" / "compress.toml"
    p.parent.mkdir()
    p.write_text("overwrite = true\n" + text)  # a hand-edited or older recipe: still not honoured
    assert c.from_dict(c.load_recipe(p)).overwrite is False
    # a hand-written relative output is next to the recipe, as its data paths are, not in the current folder
    p.write_text('model = "zoo:digits-cnn"\noutput = "../out/rel"\n')
    monkeypatch.chdir("/")
    assert Path(c.load_recipe(p)["output"]).resolve() == (tmp_path / "out" / "rel").resolve()


@pytest.mark.parametrize("key,value,rule", [("lr", 0.0, "> 0"), ("batch_size", 0, ">= 1"), ("patience", -1, ">= 0")])
def test_distill_settings_name_the_wrong_one(key, value, rule):
    with pytest.raises(ConfigError, match=rf"distill.{key} {value!r}: must be {rule}"):
        c.DistillConfig(**{key: value})
