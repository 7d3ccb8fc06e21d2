"""--tokenizer: how a user's text model turns sentences into its inputs, so a .txt of sentences can calibrate
and evaluate it. Only zoo:minilm brought a tokenizer; a file.py:factory text model had to be fed pre-tokenized
.npz arrays, and its .txt was 'needs a text model with a tokenizer'."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import InputError

DEFAULT_LENGTH = 128  # tokens per sentence when the model's inputs leave the length open
PAD_TOKENS = ("[PAD]", "<pad>", "<PAD>", "<|pad|>", "[pad]")


def load_tokenizer(spec: str, inputs: list | None = None):
    """A callable list[str] -> {input name: int64 array [n, L]} from a --tokenizer spec:
    file.py:function (the user's own, called with a list of sentences; a HuggingFace BatchEncoding, torch
    tensors or lists are taken), or a tokenizer.json (or a folder holding one, as HuggingFace saves it),
    read with the tokenizers library, padded and truncated to the model's fixed sequence length (else 128)."""
    from .config import _file_part

    path, fn = _file_part(spec)
    if fn:
        from .loader import _import_factory

        return UserTokenizer(spec, _import_factory(path, fn[1:]))
    p = Path(spec)
    if p.is_dir():
        p = p / "tokenizer.json"
    if not p.is_file():
        raise InputError(f"--tokenizer {spec}: expected file.py:function or a tokenizer.json (or a folder holding "
                         "one); " + ("no tokenizer.json in that folder" if Path(spec).is_dir() else "not found"))
    return JsonTokenizer(p, _sequence_length(inputs))


def taken_by(arrays: dict, names: list) -> dict:
    """The tokenizer's arrays a model of these input names takes: those it names (a tokenizer offers
    token_type_ids beside input_ids and attention_mask), else, when it names none of them, the token ids
    as its first input (forward(x)). One rule for learning a model's inputs and for reading its data."""
    taken = {n: arrays[n] for n in names if n in arrays}
    if not taken and names and "input_ids" in arrays:
        taken = {names[0]: arrays["input_ids"]}
    return taken


def _sequence_length(inputs) -> int:
    """The fixed length of the model's 2-D integer inputs ([batch, L]), else DEFAULT_LENGTH."""
    for s in inputs or ():
        shape = list(getattr(s, "shape", None) or [])
        if len(shape) == 2 and isinstance(shape[1], int) and shape[1] > 0 \
                and str(getattr(s, "dtype", "")).startswith(("int", "uint")):
            return int(shape[1])
    return DEFAULT_LENGTH


class UserTokenizer:
    """The user's function, its output made into the named int arrays the readers take."""

    def __init__(self, spec: str, fn):
        self.spec, self.fn = spec, fn

    def __call__(self, sentences) -> dict:
        sentences = [sentences] if isinstance(sentences, str) else list(sentences)
        pairs = bool(sentences) and isinstance(sentences[0], tuple)
        try:
            # pairs go in as HuggingFace tokenizers take them: tokenizer(texts, text_pairs)
            out = self.fn([a for a, _ in sentences], [b for _, b in sentences]) if pairs else self.fn(sentences)
        except Exception as e:
            how = " (sentence pairs are passed as function(texts, text_pairs))" if pairs else ""
            raise InputError(f"--tokenizer {self.spec}: failed on {len(sentences)} sentence(s){how}: "
                             f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
        if hasattr(out, "data") and isinstance(getattr(out, "data"), dict):  # a BatchEncoding
            out = out.data
        if not isinstance(out, dict) or not out:
            raise InputError(f"--tokenizer {self.spec}: returned {type(out).__name__}; it must return a dict of "
                             "input name -> array with one row per sentence")
        arrays = {}
        for k, v in out.items():
            a = np.asarray(v.detach().cpu().numpy() if hasattr(v, "detach") else v)
            if a.dtype == object or a.ndim < 1 or len(a) != len(sentences):
                raise InputError(f"--tokenizer {self.spec}: {k!r} is {a.dtype} of shape {list(a.shape)}; expected "
                                 f"{len(sentences)} rows of equal length (pad them) for {len(sentences)} sentences")
            arrays[str(k)] = a
        return arrays

    def __getstate__(self):  # the function of an imported user file does not pickle by reference
        return {"spec": self.spec}

    def __setstate__(self, state):
        self.__init__(state["spec"], load_tokenizer(state["spec"]).fn)


def _pad_token(tok, folder: Path) -> tuple[int, str]:
    """(id, token) to pad with: the tokenizer.json's own padding, else the pad_token its folder's
    special_tokens_map.json or tokenizer_config.json names (a GPT-2 fine-tuned as a classifier pads with
    <|endoftext|>, written there, not in tokenizer.json), else a token named like a pad, else id 0. A
    decoder classifier (GPT2ForSequenceClassification) reads its logits at the last token that is not its
    pad_token_id: padded with another id, every pad counted as text and the logits came from the padding."""
    import json

    own = tok.padding
    if own and own.get("pad_token") is not None and tok.token_to_id(own["pad_token"]) is not None:
        return int(own["pad_id"]), str(own["pad_token"])
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        try:
            value = json.loads((folder / name).read_text(encoding="utf-8")).get("pad_token")
        except (OSError, ValueError, AttributeError):
            continue
        value = value.get("content") if isinstance(value, dict) else value
        if isinstance(value, str) and tok.token_to_id(value) is not None:
            return int(tok.token_to_id(value)), value
    pad = next((t for t in PAD_TOKENS if tok.token_to_id(t) is not None), None)
    return (int(tok.token_to_id(pad)), pad) if pad else (0, "[PAD]")


class JsonTokenizer:
    """A tokenizer.json through the tokenizers library (what HuggingFace's fast tokenizers wrap): input_ids,
    attention_mask and token_type_ids, int64 [n, length], padded with the file's own pad token."""

    def __init__(self, path, length: int):
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise InputError(f"--tokenizer {path}: reading a tokenizer.json needs the tokenizers package "
                             "(pip install tokenizers)") from None
        self.path, self.length = str(path), int(length)
        try:
            self._tok = Tokenizer.from_file(self.path)
        except Exception as e:
            raise InputError(f"{path}: not a readable tokenizer.json ({str(e).splitlines()[0] if str(e) else e})") \
                from None
        pad_id, pad = _pad_token(self._tok, Path(self.path).parent)
        self._tok.enable_truncation(self.length)
        self._tok.enable_padding(length=self.length, pad_id=pad_id, pad_token=pad)

    def __call__(self, sentences) -> dict:
        sentences = [sentences] if isinstance(sentences, str) else list(sentences)
        enc = self._tok.encode_batch(sentences)
        shape = (len(enc), self.length)
        return {k: np.array([getattr(e, attr) for e in enc], dtype=np.int64).reshape(shape)
                for k, attr in (("input_ids", "ids"), ("attention_mask", "attention_mask"),
                                ("token_type_ids", "type_ids"))}

    def __getstate__(self):  # the Rust tokenizer does not pickle; rebuild it from the file
        return {"path": self.path, "length": self.length}

    def __setstate__(self, state):
        self.__init__(state["path"], state["length"])
