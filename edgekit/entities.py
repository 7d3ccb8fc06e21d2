"""Entity-level F1 of a token classifier whose classes are BIO tags (NER): what a tagger is judged by.

Token accuracy is mostly the "O" tag, as pixel accuracy is mostly background: a model that drops every
entity of a rare type moves it by a fraction of a percent. Entities are read from the tags by the conlleval
rules that seqeval applies by default (an I- after O starts an entity, a change of type ends one), over the
positions scored only (a label of -100 marks a word's later sub-tokens and padding, dropped first, as
HuggingFace's token-classification example does), and F1 is micro-averaged over every entity of the set.
Tag schemes: IOB1/IOB2 (B-, I-), IOBES (S-, E-) and BILOU (U-, L-), with "-" or "_" after the prefix.
"""
from __future__ import annotations

import re

import numpy as np

_TAG = re.compile(r"^([BIESLU])[-_](.+)$")
_PREFIX = {"L": "E", "U": "S"}  # BILOU's names for IOBES's end and single


def tag_scheme(names) -> list | None:
    """[(prefix, type)] per class when every class name is "O" or a prefixed tag (B-PER, I-LOC, ...) and there
    is at least one entity type, else None (classes of another kind, POS tags: scored per token)."""
    if not names:
        return None
    tags = []
    for n in names:
        n = str(n)
        if n.upper() == "O":
            tags.append(("O", ""))
            continue
        m = _TAG.match(n)
        if m is None:
            return None
        tags.append((_PREFIX.get(m.group(1), m.group(1)), m.group(2)))
    return tags if any(p != "O" for p, _ in tags) else None


def _ends(prev: str, cur: str, prev_type: str, cur_type: str) -> bool:
    if prev in ("E", "S"):
        return True
    if prev in ("B", "I") and cur in ("B", "S", "O"):
        return True
    return prev != "O" and prev_type != cur_type


def _starts(prev: str, cur: str, prev_type: str, cur_type: str) -> bool:
    if cur in ("B", "S"):
        return True
    if cur in ("I", "E") and prev in ("E", "S", "O"):
        return True
    return cur != "O" and prev_type != cur_type


def spans(tags: list) -> set:
    """{(type, start, end)} of the entities in one sequence of (prefix, type) tags, end exclusive."""
    out, start, start_type = set(), None, ""
    prev, prev_type = "O", ""
    for i, (cur, cur_type) in enumerate([*tags, ("O", "")]):
        if start is not None and _ends(prev, cur, prev_type, cur_type):
            out.add((start_type, start, i))
            start = None
        if _starts(prev, cur, prev_type, cur_type):
            start, start_type = i, cur_type
        prev, prev_type = cur, cur_type
    return out


def _entities(classes: np.ndarray, keep: np.ndarray, scheme: list) -> list:
    """One set of (sequence, type, start, end) per sequence, over its kept positions only."""
    found = set()
    for s in range(len(classes)):
        row = classes[s][keep[s]]
        found |= {(s, *e) for e in spans([scheme[c] for c in row.tolist()])}
    return found


def counts(pred, true, scheme: list, keep=None) -> dict:
    """{type: [entities predicted, entities labelled, both]} over a set of sequences [N, L] of class indices;
    keep: [N, L] bool, the positions scored (default: all)."""
    pred, true = np.asarray(pred), np.asarray(true)
    keep = np.ones(true.shape, bool) if keep is None else np.asarray(keep, bool)
    p, t = _entities(pred, keep, scheme), _entities(true, keep, scheme)
    res = {}
    for group, k in ((p, 0), (t, 1), (p & t, 2)):
        for e in group:
            res.setdefault(e[1], [0, 0, 0])[k] += 1
    return res


def f1(n_pred: int, n_true: int, n_both: int) -> float:
    """F1 from counts, 2 both / (predicted + true), which is 2 TP / (2 TP + FP + FN): of entities here, of
    (sample, class) decisions for multi-label; 1.0 when neither side has any (nothing to find, nothing invented)."""
    if n_pred == 0 and n_true == 0:
        return 1.0
    return 2.0 * n_both / (n_pred + n_true)


def scores(pred, true, scheme: list, keep=None) -> tuple:
    """(micro-averaged entity F1, {type: F1}) of predicted against true class sequences (see counts), from one
    reading of the entities. Each type's F1 goes beside the micro F1, which a rare type lost entirely moves
    only by its share of the entities."""
    c = counts(pred, true, scheme, keep)
    micro = f1(*(sum(v[k] for v in c.values()) for k in range(3)))
    return micro, {k: f1(*v) for k, v in sorted(c.items())}


def entity_f1(pred, true, scheme: list, keep=None) -> float:
    return scores(pred, true, scheme, keep)[0]


def f1_by_type(pred, true, scheme: list, keep=None) -> dict:
    return scores(pred, true, scheme, keep)[1]
