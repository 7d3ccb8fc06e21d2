"""Warnings for data sets too small to support what a run reports."""
from __future__ import annotations

import math

SMALL_CALIB = 32  # fewer inputs than this rarely reach the activation ranges real data does
SMALL_EVAL = 30


def small_data_notes(task: str, calib, evalset, *, tolerance, static_int8: bool, calib_size: int | None = None,
                     train=None) -> list:
    """One line per problem: one evaluation sample read 'accuracy 1.0000', and a 1% tolerance cannot be
    judged on 10 labelled samples (one changed prediction is 10%). calib_size: how many of calib INT8
    calibrates on (--calib-size 1 of a 400-sample file calibrated on one sample without a word)."""
    notes = []
    n = len(evalset) if evalset is not None else 0
    if n and task == "classification" and tolerance.value > 0 and 1 / n > tolerance.value:
        notes.append(f"only {n} evaluation sample(s): one changed prediction moves the score by {100 / n:.3g}%, "
                     f"more than the {tolerance} tolerance, so any change fails it and no change proves little; "
                     f"give at least {math.ceil(1 / tolerance.value)} samples")
    elif 0 < n < SMALL_EVAL:
        notes.append(f"only {n} evaluation sample(s): the measured accuracy cost is within noise; give a few hundred")
    if static_int8 and calib is not None:
        used, how = calibrated_on(calib, calib_size)
        if used < SMALL_CALIB:
            notes.append(f"only {used} calibration sample(s){how}: INT8 ranges from so few inputs may clip real "
                         "data; give a few hundred representative inputs")
    seen = []
    for ds in (calib, evalset, train):  # train: the --train data, whose class folders label distillation
        if ds is None or any(ds is d for d in seen):
            continue
        seen.append(ds)
        classes = getattr(ds, "extra", {}).get("classes")
        if classes and ds.labels is not None:
            shown = ", ".join(f"{c}={k}" for k, c in enumerate(classes[:4])) + (
                f", ..., {classes[-1]}={len(classes) - 1}" if len(classes) > 4 else "")
            empty = ds.extra.get("empty_classes")
            notes.append(f"{ds.source}: labels from its {len(classes)} class folders, numbered in sorted order as "
                         f"torchvision's ImageFolder numbers them ({shown})"
                         + (f"; {len(empty)} hold no {'clips' if ds.extra.get('format') == 'audio' else 'images'} ({', '.join(empty[:3])}{', ...' if len(empty) > 3 else ''})"
                            if empty else ""))
        named = getattr(ds, "extra", {}).get("named_classes")
        if named and ds.labels is not None:
            shown = ", ".join(f"{c}={k}" for k, c in enumerate(named[:4])) + (
                f", ..., {named[-1]}={len(named) - 1}" if len(named) > 4 else "")
            notes.append(f"{ds.source}: class names in its labels numbered by the model's config.id2label ({shown})")
        key = getattr(ds, "extra", {}).get("label_key")
        if key and ds.has_labels:
            notes.append(f"{ds.source}: its array '{key}' is taken as the labels (no model input has that name; "
                         "edgekit's own name for labels is 'y')")
        extra = getattr(ds, "extra", {}) or {}
        hidden = extra.get("hidden_skipped")
        if hidden:
            notes.append(f"{ds.source}: skipped {hidden} hidden file(s) (names starting with '.', e.g. macOS '._' "
                         f"metadata files, or in hidden folders) among the {'clips' if extra.get('format') == 'audio' else 'images'}")
        if extra.get("format") == "audio" and (extra.get("padded") or extra.get("cut")):
            notes.append(f"{ds.source}: clips fed as {extra['length']} samples at {extra['sample_rate']} Hz: "
                         f"{extra['padded']} shorter padded with silence at the end, {extra['cut']} longer cut there")
    return list(dict.fromkeys(notes))  # one folder given as --calib and --eval is read twice: one note


def calibrated_on(calib, calib_size: int | None) -> tuple:
    """(how many samples INT8 calibrates on, ' used (why not all)' or ''): the first calib_size, in whole
    batches of a fixed-batch model (it cannot take a short last one), so 7 samples at batch 4 are 4."""
    n = len(calib)
    used = min(n, calib_size) if calib_size and calib_size > 0 else n
    batch = getattr(calib, "extra", {}).get("model_batch")
    whole = used - used % batch if batch and used >= batch else used
    fixed = f"the model's fixed batch of {batch}"
    if whole < used < n:
        how = f"--calib-size {calib_size} of {n}, rounded down to whole batches of {fixed}"
    elif whole < used:
        how = f"the first {whole} of {n}: {fixed} takes whole batches only"
    elif used < n:
        how = f"--calib-size {calib_size} of {n}"
    else:
        return n, ""
    return whole, f" used ({how})"
