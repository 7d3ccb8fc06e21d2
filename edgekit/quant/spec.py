"""QuantSpec: one fully-resolved quantization candidate (what a tuning trial tries)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

METHODS = ("minmax", "entropy", "percentile")
TYPES = ("u8", "s8")
ROUNDINGS = ("nearest", "gptq")


@dataclass(frozen=True, kw_only=True)
class QuantSpec:
    mode: str = "int8"  # int8 | int8-dynamic | fp16
    format: str = "qdq"  # qdq | qoperator (static only)
    method: str = "minmax"
    per_channel: bool = True
    activation_type: str = "u8"
    weight_type: str = "s8"
    reduce_range: bool = False
    symmetric_activation: bool = False
    op_types: tuple = ()  # empty = every op type onnxruntime can quantize
    exclude_nodes: tuple = ()  # left in FP32
    weight_rounding: str = "nearest"  # nearest | gptq (static only: error-compensated, see quant/gptq.py)
    fuse_transformer: bool = False  # dynamic: fuse attention with onnxruntime.transformers first
    plain_layernorm: bool = False  # dynamic: residual Adds before LayerNormalization as Sum (quant/layernorm.py)
    bias_correction: bool = False  # static QDQ: INT32 biases moved to FP32's output means (quant/bias_correction.py)
    label: str = ""

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"calibration method {self.method!r} not one of {METHODS}")
        if self.weight_rounding not in ROUNDINGS:
            raise ValueError(f"weight rounding {self.weight_rounding!r} not one of {ROUNDINGS}")
        if self.activation_type not in TYPES or self.weight_type not in TYPES:
            raise ValueError(f"int8 types must be one of {TYPES}")
        object.__setattr__(self, "op_types", tuple(self.op_types))
        object.__setattr__(self, "exclude_nodes", tuple(self.exclude_nodes))

    def replace(self, **kw) -> "QuantSpec":
        return dataclasses.replace(self, **kw)

    @property
    def types(self) -> str:
        return f"{self.activation_type.upper()}{self.weight_type.upper()}"

    def name(self) -> str:
        if self.label:
            return self.label
        if self.mode == "fp16":
            return "fp16"
        if self.mode == "int8-dynamic":
            parts = ["dynamic", "per-channel" if self.per_channel else "per-tensor"]
            if self.fuse_transformer:
                parts.append("fused")
            if self.plain_layernorm:
                parts.append("plain-layernorm")
        else:
            parts = [self.format, self.types, self.method, "per-channel" if self.per_channel else "per-tensor"]
            if self.reduce_range:
                parts.append("reduce-range")
            if self.symmetric_activation:
                parts.append("sym-act")
            if self.weight_rounding != "nearest":
                parts.append(self.weight_rounding)
            if self.bias_correction:
                parts.append("bias-corrected")
        if self.op_types:
            parts.append("ops=" + "+".join(self.op_types))
        if self.exclude_nodes:
            parts.append(f"fp32-nodes={len(self.exclude_nodes)}")
        return " ".join(parts)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["op_types"] = list(self.op_types)
        d["exclude_nodes"] = list(self.exclude_nodes)
        d.pop("label")
        if self.mode == "int8-dynamic":
            # nothing is calibrated and no QDQ graph is written: a record saying "qdq, minmax" misread the run
            for k in ("format", "method", "symmetric_activation", "bias_correction", "activation_type"):
                d.pop(k)
        return d
