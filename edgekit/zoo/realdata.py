"""Real evaluation data for the pretrained zoo models, built only from files installed packages ship.

Sentences (zoo:minilm): prose from scikit-learn's dataset descriptions, Python standard-library
docstrings and the package descriptions in site-packages, split into clean sentences. The lists
are shipped in calibration/minilm/*.txt, so the eval set does not drift with package versions;
`write_sentence_sets` regenerates them (`python -m edgekit.zoo.realdata sentences`).

Image crops (zoo:efficientnet-lite0): square crops at several scales and positions, plus their
horizontal flips, of the photographs bundled in the scikit-image wheel and scikit-learn's
sample images. Crops are cut on demand (a few ms each), so a 500-crop eval set never sits in
memory as float32; `write_image_folder` writes a subset as PNGs for the image-folder format.
"""
from __future__ import annotations

import ast
import hashlib
import re
import sys
import sysconfig
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

# ------------------------------------------------------------------------------------------ sentences

SPLIT_SIZES = {"calib": 200, "eval": 400}  # the rest (up to TRAIN_MAX) is train
TRAIN_MAX = 3000
MIN_WORDS, MAX_WORDS = 8, 60

_SENT_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
# anything that smells of code, markup or identifiers rather than prose
_BAD = re.compile(r"[`{}\[\]<>|=_*#@$\\~^%/]|>>>|::|\(\)|https?:|www\.|\w\.\w|[a-z][A-Z]|\.\.|--|\s[-+]\s")
_ABBREV_END = re.compile(r"\b(e\.g|i\.e|etc|vs|cf|Mr|Dr|No|Fig|approx)\.$", re.I)


def clean_sentence(s: str) -> str | None:
    """The sentence with whitespace collapsed, or None when it is not clean 8-60 word prose."""
    s = " ".join(s.split())
    words = s.split(" ")
    if not (MIN_WORDS <= len(words) <= MAX_WORDS):
        return None
    if not s[0].isupper() or s[-1] not in ".!?" or _BAD.search(s) or _ABBREV_END.search(s):
        return None
    if s.count("(") != s.count(")") or s.count('"') % 2 or not s.isascii():
        return None
    alpha = sum(w.strip(".,;:!?()'\"").isalpha() for w in words)
    if alpha < 0.85 * len(words):
        return None
    return s


def _paragraphs(text: str):
    """Prose paragraphs of an rst/markdown/docstring text: no code blocks, directives or tables."""
    for block in re.split(r"\n\s*\n", text):
        lines = [ln for ln in block.splitlines() if ln.strip()]
        if not lines or any(ln.lstrip().startswith((">>>", "..", "$ ", "|", "+-", "==", "--")) for ln in lines):
            continue
        indents = {len(ln) - len(ln.lstrip()) for ln in lines}
        if len(indents) > 1:  # a definition list or wrapped code: not a plain paragraph
            continue
        yield " ".join(ln.strip().lstrip("-*").strip() for ln in lines)


def _sentences_of(text: str):
    for para in _paragraphs(text):
        for s in _SENT_SPLIT.split(para):
            c = clean_sentence(s)
            if c:
                yield c


def _sklearn_descr_texts():
    import sklearn.datasets

    root = Path(sklearn.datasets.__file__).parent / "descr"
    for f in sorted(root.glob("*.rst")):
        yield f"sklearn/datasets/descr/{f.name}", f.read_text(encoding="utf-8", errors="replace")


_STDLIB_SKIP = {"test", "tests", "idlelib", "lib2to3", "turtledemo", "ensurepip", "site-packages", "__pycache__",
                "tkinter", "pydoc_data", "encodings"}


def _stdlib_docstrings():
    root = Path(sysconfig.get_paths()["stdlib"])
    for f in sorted(root.rglob("*.py")):
        rel = f.relative_to(root)
        if _STDLIB_SKIP & set(rel.parts):
            continue
        try:
            tree = ast.parse(f.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc:
                    yield f"stdlib/{rel}", doc


def _package_descriptions():
    import importlib.metadata as md

    dists = sorted(md.distributions(), key=lambda d: (d.metadata["Name"] or "").lower())
    for d in dists:
        body = d.metadata.get_payload() or d.metadata.get("Description") or ""
        if body:
            yield f"dist:{d.metadata['Name']}", body


SENTENCE_SOURCES = (_sklearn_descr_texts, _stdlib_docstrings, _package_descriptions)


def collect_sentences() -> list:
    """Every clean sentence found, deduplicated (case-insensitively), in a fixed hash order.

    The hash order mixes sources, so each split gets a share of every kind of text, and it
    does not depend on the order in which files were read.
    """
    seen = {}
    for source in SENTENCE_SOURCES:
        for _, text in source():
            for s in _sentences_of(text):
                seen.setdefault(s.lower(), s)
    return sorted(seen.values(), key=lambda s: hashlib.sha1(s.lower().encode()).hexdigest())


def split_sentences(sentences: list) -> dict:
    """{'calib', 'eval', 'train'}: disjoint slices of the hash-ordered list."""
    n_c, n_e = SPLIT_SIZES["calib"], SPLIT_SIZES["eval"]
    if len(sentences) < n_c + n_e + 1000:
        raise RuntimeError(f"only {len(sentences)} clean sentences found; need {n_c + n_e + 1000}")
    return {"calib": sentences[:n_c], "eval": sentences[n_c:n_c + n_e],
            "train": sentences[n_c + n_e:n_c + n_e + TRAIN_MAX]}


def write_sentence_sets(out_dir, sentences: list | None = None) -> dict:
    """Regenerate calibration/minilm/{calib,eval,train}.txt (from `sentences`, default: collect them)."""
    from ..fsutil import write_text_atomic

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sets = split_sentences(collect_sentences() if sentences is None else sentences)
    for name, lines in sets.items():
        write_text_atomic(out / f"{name}.txt", "\n".join(lines) + "\n")
    return {k: len(v) for k, v in sets.items()}


def read_sentences(path) -> list:
    return [ln.strip() for ln in Path(path).read_text(encoding="utf-8").splitlines() if ln.strip()]


# --------------------------------------------------------------------------------------------- images

SIZE = 224
SCALES = (1.0, 0.8, 0.65, 0.5, 0.38)  # crop side as a fraction of the image's shorter side
POSITIONS = (0.0, 0.5, 1.0)  # where the crop sits along each axis, as a fraction of the free room
IMAGE_SPLIT = {"eval": 480, "calib": 200}  # the rest is train


def _skimage(name):
    def load():
        import skimage.data

        img = getattr(skimage.data, name)()
        return img[0] if isinstance(img, tuple) else img  # stereo_motorcycle -> (left, right, disparity)
    return load


def _sklearn_sample(name):
    def load():
        from sklearn.datasets import load_sample_image

        return load_sample_image(name)
    return load


# Photographs of scenes and objects bundled in the wheels (no download), i.e. the kind of picture
# an ImageNet classifier is deployed on. Left out: skimage's `cat` (the same photo as chelsea),
# synthetic images (logo, colorwheel, checkerboard, phantom, blobs), tiny ones, and scientific or
# document images (microscopy, retina fundus, Hubble deep field, scanned text), on which an
# ImageNet classifier's top-1 is arbitrary, so agreement there would measure noise, not the model.
PHOTOS = {
    "astronaut": _skimage("astronaut"), "chelsea": _skimage("chelsea"), "coffee": _skimage("coffee"),
    "rocket": _skimage("rocket"), "motorcycle": _skimage("stereo_motorcycle"), "camera": _skimage("camera"),
    "coins": _skimage("coins"), "clock": _skimage("clock"), "moon": _skimage("moon"),
    "brick": _skimage("brick"), "grass": _skimage("grass"), "gravel": _skimage("gravel"),
    "china": _sklearn_sample("china.jpg"), "flower": _sklearn_sample("flower.jpg"),
}


@lru_cache(maxsize=None)
def photo(name: str) -> np.ndarray:
    """uint8 H x W x 3 (grayscale photos are repeated over 3 channels); read-only."""
    img = np.asarray(PHOTOS[name]())
    if img.dtype != np.uint8:
        raise ValueError(f"photo {name}: dtype {img.dtype}, expected uint8")
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    img = np.ascontiguousarray(img[:, :, :3])
    img.setflags(write=False)
    return img


@dataclass(frozen=True)
class Crop:
    image: str
    scale: float
    fx: float  # horizontal position in 0..1
    fy: float
    flip: bool

    @property
    def label(self) -> str:
        return f"{self.image}_s{round(self.scale * 100):03d}_x{round(self.fx * 100):03d}_y{round(self.fy * 100):03d}" \
               f"{'_flip' if self.flip else ''}"

    def box(self, h: int, w: int) -> tuple:
        side = max(1, int(round(self.scale * min(h, w))))
        x0 = int(round(self.fx * (w - side)))
        y0 = int(round(self.fy * (h - side)))
        return x0, y0, side

    def pixels(self, size: int = SIZE) -> np.ndarray:
        """uint8 size x size x 3: the crop resized with Pillow's (antialiased) bilinear filter."""
        from PIL import Image

        img = photo(self.image)
        x0, y0, side = self.box(*img.shape[:2])
        out = Image.fromarray(img[y0:y0 + side, x0:x0 + side]).resize((size, size), Image.BILINEAR)
        px = np.asarray(out)
        return np.ascontiguousarray(px[:, ::-1]) if self.flip else px


def all_crops() -> list:
    """Every crop of every photo, in a fixed order (image, scale, position, flip), duplicates removed."""
    crops, seen = [], set()
    for name in PHOTOS:
        h, w = photo(name).shape[:2]
        for scale in SCALES:
            for fy in POSITIONS:
                for fx in POSITIONS:
                    for flip in (False, True):
                        c = Crop(name, scale, fx, fy, flip)
                        key = (name, c.box(h, w), flip)
                        if key not in seen:  # full-side crops slide along one axis only
                            seen.add(key)
                            crops.append(c)
    return crops


def split_crops(crops: list | None = None) -> dict:
    """{'eval', 'calib', 'train'}: disjoint, fixed (seed-independent) so the eval set is stable."""
    crops = all_crops() if crops is None else crops
    order = np.random.default_rng(20240601).permutation(len(crops))
    shuffled = [crops[i] for i in order]
    n_e, n_c = IMAGE_SPLIT["eval"], IMAGE_SPLIT["calib"]
    return {"eval": shuffled[:n_e], "calib": shuffled[n_e:n_e + n_c], "train": shuffled[n_e + n_c:]}


def crops_uint8(crops: list) -> np.ndarray:
    return np.stack([c.pixels() for c in crops]) if crops else np.empty((0, SIZE, SIZE, 3), np.uint8)


def normalise(px_nhwc: np.ndarray, mean, std) -> np.ndarray:
    """uint8 N x H x W x 3 -> float32 N x 3 x H x W, (x - mean) / std in pixel units."""
    x = (px_nhwc.astype(np.float32) - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def crop_array(crops: list, mean, std):
    """A lazy N x 3 x 224 x 224 float32 array: each slice is cut, resized and normalised on demand."""
    from ..calibration import LazyArray

    return LazyArray(len(crops), (3, SIZE, SIZE), np.float32,
                     lambda a, b: normalise(crops_uint8(crops[a:b]), mean, std))


def write_image_folder(crops: list, out_dir) -> list:
    """Write crops as PNGs named <index>_<label>.png (sorted = given order); returns the paths."""
    from PIL import Image

    from ..fsutil import atomic_path

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, c in enumerate(crops):
        p = out / f"{i:03d}_{c.label}.png"
        with atomic_path(p) as tmp:
            Image.fromarray(c.pixels()).save(tmp, format="PNG", optimize=True)
        paths.append(p)
    return paths


def digest(arr: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()


def main(argv=None) -> int:
    """python -m edgekit.zoo.realdata {sentences|images} [OUT_DIR]: regenerate the shipped sets."""
    from ..resources import calibration_dir

    argv = list(sys.argv[1:] if argv is None else argv)
    what = argv[0] if argv else ""
    if what == "sentences":
        out = Path(argv[1]) if len(argv) > 1 else calibration_dir() / "minilm"
        print(write_sentence_sets(out))
        return 0
    if what == "images":
        from .efficientnet_lite0 import write_shipped_set

        out = Path(argv[1]) if len(argv) > 1 else calibration_dir() / "efficientnet-lite0"
        print(write_shipped_set(out))
        return 0
    print("usage: python -m edgekit.zoo.realdata {sentences|images} [OUT_DIR]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
