"""The pretrained zoo models: the real weights load, give sensible outputs and export faithfully."""
import numpy as np
import pytest

pytestmark = pytest.mark.slow

ONNX_ATOL = 1e-4


def _export(module, args, path, input_names, output_names, dynamic_axes):
    import warnings

    import torch

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(path), input_names=input_names, output_names=output_names,
                          dynamic_axes=dynamic_axes, opset_version=17, dynamo=False)
    import onnx

    onnx.checker.check_model(str(path))
    assert onnx.load(str(path)).opset_import[0].version == 17


def _session(path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


# ------------------------------------------------------------------------------------ efficientnet

@pytest.fixture(scope="module")
def effnet():
    from edgekit.zoo import load

    return load("efficientnet-lite0")


def _logits(module, x):
    import torch

    with torch.no_grad():
        return module(torch.from_numpy(np.ascontiguousarray(x))).numpy()


def test_efficientnet_source_model(effnet):
    assert effnet.spec == "zoo:efficientnet-lite0" and effnet.kind == "torch" and effnet.task == "classification"
    assert [(s.name, s.shape, s.dtype) for s in effnet.inputs] == [("input", ["batch", 3, 224, 224], "float32")]
    assert effnet.outputs == ["logits"]
    assert len(effnet.eval) >= 400 and effnet.eval.labels is None and len(effnet.calib) <= 200
    assert sum(p.numel() for p in effnet.module.parameters()) == pytest.approx(4.65e6, rel=0.01)
    assert len(effnet.weights_sha256) == 64
    assert effnet.preprocess["pre"][0]["op"] == "resize_normalize"
    assert effnet.preprocess["post"] == [{"op": "softmax_topk", "k": 5}]


def test_efficientnet_recognises_the_cat_and_the_coffee(effnet):
    """Proof the ImageNet weights really loaded: a random network would not name these."""
    from edgekit.zoo import efficientnet_lite0 as eff
    from edgekit.zoo.realdata import Crop, crops_uint8

    crops = [Crop("chelsea", 1.0, 0.5, 0.5, False), Crop("chelsea", 1.0, 0.5, 0.5, True),
             Crop("coffee", 1.0, 0.5, 0.5, False), Crop("coffee", 1.0, 0.5, 0.5, True)]
    logits = _logits(effnet.module, eff.normalised(crops_uint8(crops)))
    assert logits.shape == (4, 1000) and logits.dtype == np.float32
    top1 = logits.argmax(1)
    assert all(281 <= t <= 285 for t in top1[:2]), top1  # tabby, tiger cat, Persian, Siamese, Egyptian cat
    assert all(t in (967, 968) for t in top1[2:]), top1  # espresso, cup
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    assert p[2:, 967].min() > 0.5  # confident, not a coin toss


def test_efficientnet_onnx_export_matches_pytorch_on_real_crops(effnet, tmp_path):
    import torch

    x = effnet.eval.take(4).inputs["input"]
    path = tmp_path / "lite0.onnx"
    _export(effnet.module, (torch.from_numpy(x[:1]),), path, ["input"], ["logits"], effnet.dynamic_axes)
    got = _session(path).run(None, {"input": x})[0]  # batch 4 through a batch-1 export: dynamic batch
    want = _logits(effnet.module, x)
    assert got.shape == (4, 1000)
    assert np.abs(got - want).max() < ONNX_ATOL
    assert (got.argmax(1) == want.argmax(1)).all()


# ------------------------------------------------------------------------------------------- minilm

@pytest.fixture(scope="module")
def minilm():
    from edgekit.zoo import load

    return load("minilm")


def _embed(module, feeds):
    import torch

    with torch.no_grad():
        return module(torch.from_numpy(feeds["input_ids"]), torch.from_numpy(feeds["attention_mask"])).numpy()


def test_minilm_source_model_and_tokenizer(minilm):
    assert minilm.spec == "zoo:minilm" and minilm.task == "embedding"
    assert [(s.name, s.shape, s.dtype) for s in minilm.inputs] == [
        ("input_ids", ["batch", "seq"], "int64"), ("attention_mask", ["batch", "seq"], "int64")]
    assert minilm.outputs == ["embedding"]
    assert len(minilm.eval) >= 300 and len(minilm.train) >= 1000 and len(minilm.calib) == 200
    assert minilm.eval.labels is None and len(minilm.eval.extra["sentences"]) == len(minilm.eval)
    enc = minilm.tokenizer(["Hello world.", "A second, longer sentence about quantization."])
    assert set(enc) == {"input_ids", "attention_mask"}
    for v in enc.values():
        assert v.shape == (2, 128) and v.dtype == np.int64
    assert enc["input_ids"][0, 0] == 101 and enc["attention_mask"][0].sum() == 5  # [CLS] hello world . [SEP]
    assert enc["input_ids"][0, 5:].tolist() == [0] * 123  # padded with the declared pad id
    assert minilm.preprocess["pre"] == [{"op": "pad_truncate", "max_length": 128, "pad_id": 0,
                                         "padding": "max_length"}]


def test_minilm_tokenizer_matches_transformers(minilm):
    from transformers import AutoTokenizer

    from edgekit.zoo.minilm import model_dir

    sentences = minilm.eval.extra["sentences"][:64] + [" ".join(["token"] * 300)]  # one truncated
    hf = AutoTokenizer.from_pretrained(str(model_dir()))
    want = hf(sentences, padding="max_length", truncation=True, max_length=128, return_tensors="np")
    got = minilm.tokenizer(sentences)
    np.testing.assert_array_equal(got["input_ids"], want["input_ids"])
    np.testing.assert_array_equal(got["attention_mask"], want["attention_mask"])


def test_minilm_embeddings_equal_sentence_transformers(minilm):
    from sentence_transformers import SentenceTransformer

    from edgekit.zoo.minilm import model_dir

    sentences = minilm.eval.extra["sentences"][:16]
    st = SentenceTransformer(str(model_dir()), device="cpu")
    st.max_seq_length = 128
    want = st.encode(sentences, convert_to_numpy=True, batch_size=16)
    got = _embed(minilm.module, minilm.tokenizer(sentences))
    assert got.shape == (16, 384) and got.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert np.abs(got - want).max() < 1e-5
    # and the embeddings carry meaning: a sentence is closest to itself, not to its neighbours
    sim = got @ want.T
    assert (sim.argmax(1) == np.arange(16)).all() and np.median(sim[~np.eye(16, dtype=bool)]) < 0.5


def _export_minilm(minilm, tmp_path):
    """(8 eval feeds, path of the batch-1 export with dynamic batch and sequence)."""
    import torch

    feeds = {k: v[:8] for k, v in minilm.eval.take(8).inputs.items()}
    path = tmp_path / "minilm.onnx"
    names = [s.name for s in minilm.inputs]
    _export(minilm.module, tuple(torch.from_numpy(feeds[n][:1]) for n in names), path, names,
            minilm.outputs, minilm.dynamic_axes)
    return feeds, path


def test_minilm_onnx_export_matches_pytorch(minilm, tmp_path):
    feeds, path = _export_minilm(minilm, tmp_path)
    sess = _session(path)
    got = sess.run(None, feeds)[0]
    want = _embed(minilm.module, feeds)
    assert got.shape == (8, 384) and np.abs(got - want).max() < ONNX_ATOL
    # dynamic sequence length: a shorter padding gives the same embeddings
    short = {k: np.ascontiguousarray(v[:, :96]) for k, v in feeds.items()}
    assert int(feeds["attention_mask"][:, 96:].sum()) == 0
    assert np.abs(sess.run(None, short)[0] - want).max() < ONNX_ATOL


def test_minilm_fuses_attention_only_and_stays_accurate_in_dynamic_int8(minilm, tmp_path):
    import onnx

    from edgekit.quant import dynamic, static
    from edgekit.quant.spec import QuantSpec

    feeds, path = _export_minilm(minilm, tmp_path)
    prep = tmp_path / "prep.onnx"
    static.preprocess(path, prep)
    assert dynamic.fuse_transformer(prep, tmp_path / "fused.onnx")
    ops = [n.op_type for n in onnx.load(str(tmp_path / "fused.onnx")).graph.node]
    # six layers, one Attention each; layer norm + residual and GELU stay for onnxruntime's own fusions
    assert ops.count("Attention") == 6
    assert not {"SkipLayerNormalization", "BiasGelu"} & set(ops)
    dynamic.quantize(tmp_path / "fused.onnx", tmp_path / "int8.onnx", QuantSpec(mode="int8-dynamic", per_channel=True))
    qops = {n.op_type for n in onnx.load(str(tmp_path / "int8.onnx")).graph.node}
    assert "QAttention" in qops
    want = _session(path).run(None, feeds)[0]
    got = _session(tmp_path / "int8.onnx").run(None, feeds)[0]
    cos = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert cos.min() > 0.97 and cos.mean() > 0.985
