"""Text: pad/truncate token id batches with attention masks; mean pooling + L2 normalisation.

Tokenisation itself stays outside: these ops take already tokenised id lists.
"""
from __future__ import annotations

import numpy as np

from . import _check
from ._jit import call, kernel, prange, resolve_backend
from .errors import PrepostError

PADDING = ("longest", "max_length")
TRUNCATION = ("right", "left")


@kernel("pad_truncate", lambda nt: nt.void(
    nt.Array(nt.int64, 1, "C", readonly=True), nt.Array(nt.int64, 1, "C", readonly=True), nt.boolean,
    nt.int64, nt.Array(nt.int64, 2, "C"), nt.Array(nt.int64, 2, "C")))
def _pad_kernel(flat, offsets, left, pad_id, ids, mask):  # pragma: no cover - compiled
    n, L = ids.shape
    for r in range(n):
        a, b = offsets[r], offsets[r + 1]
        m = min(b - a, L)
        start = b - m if left else a
        for j in range(m):
            ids[r, j] = flat[start + j]
            mask[r, j] = 1
        for j in range(m, L):
            ids[r, j] = pad_id
            mask[r, j] = 0


def token_rows(feeds: dict):
    """The token id rows pad_truncate made these model feeds from (input_ids where attention_mask is set),
    or None when the feeds have no input_ids."""
    ids = feeds.get("input_ids") if isinstance(feeds, dict) else None
    if ids is None:
        return None
    ids = np.asarray(ids)
    mask = feeds.get("attention_mask")
    mask = np.ones(ids.shape, bool) if mask is None else np.asarray(mask) != 0
    return [row[m] for row, m in zip(ids.reshape(-1, ids.shape[-1]), mask.reshape(-1, ids.shape[-1]))]


def _sequences(token_ids, pad_id=None):
    if isinstance(token_ids, np.ndarray) and token_ids.ndim == 2:
        rows = list(token_ids)
        if pad_id is not None:
            # a rectangular array is how padded rows arrive (an .npy on the device): the pad_id run at
            # the end of a row is padding, and must get attention mask 0, not 1
            rows = [r[:_unpadded_length(r, pad_id)] for r in rows]
    elif isinstance(token_ids, (list, tuple)):
        rows = token_ids
    else:
        raise PrepostError(f"token_ids: expected a list of id sequences or a 2-D array, got {type(token_ids).__name__}")
    seqs = []
    for i, r in enumerate(rows):
        a = _check.array(r, f"token_ids[{i}]", ndim=1, kinds="iu") if len(r) else np.zeros(0, np.int64)
        seqs.append(a.astype(np.int64, copy=False))
    return seqs


def _unpadded_length(row, pad_id) -> int:
    keep = np.flatnonzero(np.asarray(row) != pad_id)
    return int(keep[-1]) + 1 if keep.size else 0


def check_padding(padding, max_length) -> None:
    """The rule across pad_truncate's parameters, for the spec checker and the op alike."""
    if padding == "max_length" and max_length is None:
        raise PrepostError("max_length: required when padding='max_length'")


def pad_truncate(token_ids, max_length: int | None = None, pad_id: int = 0, *, padding: str = "longest",
                 truncation: str = "right", backend: str = "auto"):
    """(input_ids, attention_mask), both int64 (N, L), from N tokenised sequences: lists of ids, or a 2-D
    array of rows already padded at the end with pad_id (those positions get attention mask 0).

    padding "longest": L = the longest sequence, capped at max_length; "max_length": L = max_length.
    Sequences longer than L lose tokens on the `truncation` side ("right" or "left").
    """
    _check.choice(padding, "padding", PADDING)
    _check.choice(truncation, "truncation", TRUNCATION)
    pad = _check.number(pad_id, "pad_id", integer=True)
    seqs = _sequences(token_ids, pad)
    lengths = np.array([len(s) for s in seqs], np.int64)
    if max_length is not None:
        max_length = _check.number(max_length, "max_length", lo=1, integer=True)
    check_padding(padding, max_length)
    if padding == "max_length":
        L = max_length
    else:
        L = int(lengths.max(initial=0))
        if max_length is not None:
            L = min(L, max_length)
    n = len(seqs)
    left = truncation == "left"
    if resolve_backend(backend) == "numpy":
        ids = np.full((n, L), pad, np.int64)
        mask = np.zeros((n, L), np.int64)
        for r, s in enumerate(seqs):
            s = s[len(s) - min(len(s), L):] if left else s[:L]
            ids[r, :len(s)] = s
            mask[r, :len(s)] = 1
        return ids, mask
    flat = np.concatenate(seqs) if n else np.zeros(0, np.int64)
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    ids = np.empty((n, L), np.int64)
    mask = np.empty((n, L), np.int64)
    call("pad_truncate", 0, flat, offsets, left, pad, ids, mask)
    return ids, mask


@kernel("mean_pool_l2", lambda nt: nt.void(
    nt.Array(nt.float32, 3, "C", readonly=True), nt.Array(nt.float32, 2, "C", readonly=True),
    nt.boolean, nt.Array(nt.float32, 2, "C")), parallel=True, fastmath={"reassoc", "contract", "arcp", "nsz"})
def _pool_kernel(h, mask, normalize, out):  # pragma: no cover - compiled
    n, t, d = h.shape
    for b in prange(n):
        acc = np.zeros(d, np.float32)
        den = np.float32(0.0)
        for i in range(t):
            m = mask[b, i]
            if m != 0:
                den += m
                row = h[b, i]
                for j in range(d):
                    acc[j] += row[j] * m
        den = max(den, np.float32(1e-9))
        norm = np.float32(0.0)
        for j in range(d):
            acc[j] /= den
            norm += acc[j] * acc[j]
        scale = np.float32(1.0) / max(np.sqrt(norm), np.float32(1e-12)) if normalize else np.float32(1.0)
        for j in range(d):
            out[b, j] = acc[j] * scale


def mean_pool_l2(hidden, mask=None, *, normalize: bool = True, backend: str = "auto") -> np.ndarray:
    """Sentence embeddings (float32 (N, D)) from token embeddings (N, T, D) and a (N, T) attention mask:
    the masked mean over T (sentence-transformers' pooling), then L2-normalised unless normalize=False."""
    x = _check.array(hidden, "hidden", ndim=(2, 3), kinds="f")
    if not np.isfinite(x).all():
        # refused like softmax_topk and nms do: even a NaN at a padding position came out differently from
        # the numpy twin (0 * NaN) and the numba kernel (skipped)
        raise PrepostError("hidden: contains NaN or inf")
    if x.ndim == 2:
        x = x[None]
    n, t, _ = x.shape
    if mask is None:
        m = np.ones((n, t), np.float32)
    else:
        m = _check.array(mask, "mask", ndim=(1, 2), kinds="biuf")
        m = m.reshape(1, -1) if m.ndim == 1 else m
        if m.shape != (n, t):
            raise PrepostError(f"mask: shape {m.shape} does not match hidden's (N, T) = {(n, t)}")
        m = np.ascontiguousarray(m, np.float32)
    squeeze = np.ndim(hidden) == 2
    if resolve_backend(backend) == "numpy":
        x = x.astype(np.float32, copy=False)
        s = np.einsum("ntd,nt->nd", x, m)
        out = s / np.maximum(m.sum(axis=1, keepdims=True), np.float32(1e-9))
        if normalize:
            out = out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), np.float32(1e-12))
        out = out.astype(np.float32)
    else:
        out = np.empty((n, x.shape[2]), np.float32)
        call("mean_pool_l2", x.size, np.ascontiguousarray(x, np.float32), m, bool(normalize), out)
    return out[0] if squeeze else out
