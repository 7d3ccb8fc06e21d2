"""INT8/FP16 quantization parts used by edgekit.stages.quantize.

spec.py (the candidate record), isa.py (target-aware defaults), static.py / dynamic.py /
fp16.py (one conversion each, via onnxruntime), cache.py (calibration ranges), timing.py
(interleaved latency + operator profile), sensitivity.py (per-node), tuning.py (INC's
tuning loop), speed_gate.py, fidelity.py (the metric when no labelled eval set exists).
"""
