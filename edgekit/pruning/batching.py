"""Padding-aware batching for training and scoring: trim padding columns, group similar lengths.

Token models are fed at a fixed padded length (zoo:minilm: 128) although real sentences are much
shorter (median 17 tokens there). With an attention mask and right padding, cutting the columns
past the longest row of a batch gives the same outputs for a fraction of the compute (attention
is quadratic in it). Batches drawn from length-sorted chunks keep that longest row short.
Trimming is verified once on real rows against the untrimmed output and switched off otherwise
(a model that reshapes to a fixed length, say).
"""
from __future__ import annotations

import numpy as np

MASK_NAMES = ("attention_mask", "mask", "input_mask")
CHUNK_BATCHES = 16  # length-sorted chunks of this many batches: short batches, still shuffled


class Trimmer:
    """Knows which inputs share the padded sequence axis and how long each row really is."""

    def __init__(self, data, names):
        self.names = list(names)
        self.mask_name, self.seq_inputs, self.lengths = None, [], None
        mask_name = next((n for n in self.names if n in MASK_NAMES), None)
        if mask_name is None or data is None or not len(data):
            return
        mask = np.asarray(data.inputs[mask_name])
        if mask.ndim != 2 or not np.issubdtype(mask.dtype, np.integer) and mask.dtype != np.bool_:
            return
        m = mask != 0
        # right padding only: once a row's mask is 0 it stays 0
        if (np.diff(m.astype(np.int8), axis=1) > 0).any():
            return
        self.mask_name = mask_name
        self.seq_inputs = [n for n in self.names if tuple(data.inputs[n].shape[:2]) == mask.shape]
        self.lengths = np.maximum(m.sum(1), 1)

    @property
    def active(self) -> bool:
        return self.mask_name is not None

    def trim(self, feeds: dict) -> dict:
        """The same feeds with the all-padding columns at the end removed."""
        if not self.active:
            return feeds
        mask = np.asarray(feeds[self.mask_name])
        cols = mask.any(axis=0)
        keep = int(np.flatnonzero(cols)[-1]) + 1 if cols.any() else 1
        if keep >= mask.shape[1]:
            return feeds
        return {k: (np.ascontiguousarray(v[:, :keep]) if k in self.seq_inputs else v) for k, v in feeds.items()}

    def verify(self, model, data, n: int = 4, atol: float = 1e-4) -> bool:
        """Does the model give the same output on trimmed rows? If not, trimming is switched off."""
        import torch

        from .graph import first_tensor

        if not self.active:
            return False
        # the shortest rows: they are the ones trimming cuts (the first rows may have none to cut)
        feeds = rows(data, np.sort(np.argsort(self.lengths, kind="stable")[:n])) if len(self.lengths) == len(data) \
            else {k: np.asarray(v[:n]) for k, v in data.inputs.items()}
        trimmed = self.trim(feeds)
        if trimmed is feeds:
            return True
        was = model.training
        model.eval()
        try:
            with torch.no_grad():
                full = first_tensor(model(*[torch.from_numpy(np.array(feeds[k])) for k in self.names])).float()
                cut = first_tensor(model(*[torch.from_numpy(np.array(trimmed[k])) for k in self.names])).float()
            ok = full.shape == cut.shape and bool(torch.allclose(full, cut, atol=atol, rtol=1e-3))
        except Exception:
            ok = False
        finally:
            model.train(was)
        if not ok:
            self.mask_name, self.seq_inputs, self.lengths = None, [], None
        return ok


def train_batches(n: int, batch_size: int, generator, lengths=None) -> list:
    """Shuffled index batches (sorted indices); with lengths, rows of similar length share a batch."""
    import torch

    perm = torch.randperm(n, generator=generator).numpy()
    if lengths is None:
        return [np.sort(b) for b in np.array_split(perm, max(1, -(-n // batch_size)))] if n else []
    chunk = batch_size * CHUNK_BATCHES
    batches = []
    for i in range(0, n, chunk):
        part = perm[i:i + chunk]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches += [np.sort(part[j:j + batch_size]) for j in range(0, len(part), batch_size)]
    order = torch.randperm(len(batches), generator=generator).numpy()
    return [batches[i] for i in order]


def eval_batches(n: int, batch_size: int, lengths=None) -> list:
    """Index batches covering 0..n-1; length-sorted when lengths are known (callers put rows back)."""
    idx = np.arange(n) if lengths is None else np.argsort(lengths, kind="stable")
    return [idx[i:i + batch_size] for i in range(0, n, batch_size)]


def rows(data, idx) -> dict:
    # v[idx], not np.asarray(v)[idx]: a lazily read array (image folder, cast .npy) reads only these rows
    return {k: np.ascontiguousarray(v[idx]) for k, v in data.inputs.items()}
