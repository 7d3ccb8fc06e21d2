"""The load stage on user models: every bad input gets a one-line error naming the file."""
from pathlib import Path

import numpy as np
import pytest
import torch

from edgekit.errors import InputError
from edgekit.loader import load_source

NET = Path(__file__).parent / "models" / "tiny_net.py"


def _weights(tmp_path):
    from importlib.util import module_from_spec, spec_from_file_location

    spec = spec_from_file_location("tiny_net", NET)
    mod = module_from_spec(spec)
    spec.loader.exec_module(mod)
    torch.manual_seed(0)
    net = mod.build()
    p = tmp_path / "w.pt"
    torch.save(net.state_dict(), p)
    return net, p


def test_user_model_loads_with_state_dict_and_infers_inputs(tmp_path):
    net, w = _weights(tmp_path)
    src = load_source(f"{NET}:build", weights=str(w), input_shape=(1, 1, 28, 28))
    assert src.kind == "torch" and src.task == "classification"
    assert src.inputs[0].shape == ["batch", 1, 28, 28]
    x = torch.randn(3, 1, 28, 28)
    net.eval()
    assert torch.allclose(src.module(x), net(x))
    assert src.weights_sha256 and len(src.weights_sha256) == 64


def test_inputs_inferred_from_data(tmp_path):
    src = load_source(f"{NET}:build", sample_inputs={"x": np.zeros((5, 1, 12, 12), np.float32)})
    assert src.inputs[0].shape == ["batch", 1, 12, 12]


@pytest.mark.parametrize("spec,msg", [
    ("missing.py:build", "missing.py: file not found"),
    (f"{NET}:nope", "no callable 'nope'"),
    (f"{NET}:not_a_module", "returned int, not a torch.nn.Module"),
    ("model.bin", "not a model spec"),
    ("zoo:resnet9000", "no such zoo model"),
])
def test_bad_specs(spec, msg):
    with pytest.raises(InputError, match=msg):
        load_source(spec, input_shape=(1, 1, 8, 8))


def test_missing_input_shape_is_explained():
    with pytest.raises(InputError, match="--input-shape"):
        load_source(f"{NET}:build")


def test_wrong_input_shape(tmp_path):
    with pytest.raises(InputError, match=r"forward\(\) failed on inputs"):
        load_source(f"{NET}:build", input_shape=(1, 3, 8, 8))


def test_weights_errors(tmp_path):
    with pytest.raises(InputError, match="weights file not found"):
        load_source(f"{NET}:build", weights=str(tmp_path / "none.pt"), input_shape=(1, 1, 8, 8))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"definitely not torch")
    with pytest.raises(InputError, match="junk.pt: not a PyTorch weights file"):
        load_source(f"{NET}:build", weights=str(junk), input_shape=(1, 1, 8, 8))
    other = tmp_path / "other.pt"
    torch.save({"fc.weight": torch.zeros(3, 3)}, other)
    with pytest.raises(InputError, match="other.pt: state dict does not fit build"):
        load_source(f"{NET}:build", weights=str(other), input_shape=(1, 1, 8, 8))
    notdict = tmp_path / "list.pt"
    torch.save([torch.zeros(2)], notdict)
    with pytest.raises(InputError, match="list.pt: not a state dict"):
        load_source(f"{NET}:build", weights=str(notdict), input_shape=(1, 1, 8, 8))


def test_pickled_module_needs_trust(tmp_path):
    net, _ = _weights(tmp_path)
    full = tmp_path / "full.pt"
    torch.save(net, full)
    with pytest.raises(InputError, match="full.pt: contains pickled Python objects.*--trust-pickle"):
        load_source(f"{NET}:build", weights=str(full), input_shape=(1, 1, 8, 8))
    src = load_source(f"{NET}:build", weights=str(full), trust_pickle=True, input_shape=(1, 1, 8, 8))
    assert isinstance(src.module, torch.nn.Module)


def test_onnx_errors(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00\x01garbage")
    with pytest.raises(InputError, match="bad.onnx: not a valid ONNX model"):
        load_source(str(bad))
    with pytest.raises(InputError, match="nothere.onnx: file not found"):
        load_source(str(tmp_path / "nothere.onnx"))


def _tiny_onnx(path, out_cols, **save_kw):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((16, out_cols), np.float32), "w")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", out_cols])], [w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    onnx.save_model(m, str(path), **save_kw)
    return path


def test_onnx_with_external_data_loads_from_any_directory(tmp_path, monkeypatch):
    (tmp_path / "m").mkdir()
    _tiny_onnx(tmp_path / "m" / "ext.onnx", 4, save_as_external_data=True, location="ext.data", size_threshold=0)
    monkeypatch.chdir(tmp_path)
    src = load_source("m/ext.onnx")
    assert src.inputs[0].shape == ["n", 16]
    (tmp_path / "m" / "ext.data").unlink()
    with pytest.raises(InputError, match="ext.onnx: not a valid ONNX model"):
        load_source("m/ext.onnx")


@pytest.mark.parametrize("cols,task", [(1, "generic"), (2, "classification"), (10, "classification")])
def test_onnx_task_needs_two_or_more_output_columns(tmp_path, cols, task):
    assert load_source(str(_tiny_onnx(tmp_path / "m.onnx", cols))).task == task


def test_quantized_ops_are_recognised(tmp_path):
    import onnx
    from onnxruntime.quantization import quantize_dynamic

    from edgekit.loader import quantized_ops

    fp32 = _tiny_onnx(tmp_path / "m.onnx", 4)
    assert quantized_ops(onnx.load(str(fp32))) == []
    quantize_dynamic(str(fp32), str(tmp_path / "q.onnx"))
    assert "MatMulInteger" in quantized_ops(onnx.load(str(tmp_path / "q.onnx")))
