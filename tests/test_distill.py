"""Distillation on real data (scikit-learn digits, 8x8): a trained teacher MLP teaches a fresh,
smaller student; its agreement with the teacher rises over training."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn as nn

from edgekit.artifact import TensorSpec
from edgekit.config import DistillConfig
from edgekit.dataset import Dataset
from edgekit.errors import InputError
from edgekit.source import SourceModel
from edgekit.stages import distill as stage
from test_prune_models import make_ctx


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def student_factory():
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    y = d.target.astype(np.int64)
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(x))
    tr, te = idx[:1200], idx[1200:]
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    opt = torch.optim.Adam(teacher.parameters(), 1e-2)
    xt, yt = torch.from_numpy(x[tr]), torch.from_numpy(y[tr])
    for _ in range(60):
        opt.zero_grad()
        nn.functional.cross_entropy(teacher(xt), yt).backward()
        opt.step()
    teacher.eval()
    return x, y, tr, te, teacher


def _source(digits, labelled_train: bool):
    x, y, tr, te, teacher = digits
    train = Dataset({"input": x[tr]}, y[tr] if labelled_train else None, "digits train")
    ev = Dataset({"input": x[te]}, None, "digits held-out (unlabelled)")
    return SourceModel(spec="test:teacher", kind="torch", inputs=[TensorSpec("input", ["batch", 64], "float32")],
                       outputs=["logits"], task="classification", module=teacher, calib=train, eval=ev, train=train)


def test_agreement_with_teacher_rises(digits, tmp_path):
    src = _source(digits, labelled_train=False)  # unlabelled: the teacher is the only signal
    student = student_factory()
    cfg = DistillConfig(epochs=15, lr=5e-3, batch_size=64, patience=0)
    out, info = stage.run(src.module, student, make_ctx(src, tmp_path), cfg)
    agree = [h["agreement"] for h in info["history"]]
    assert info["metric"] == "top1_agreement" and info["train"]["labelled"] is False
    assert agree[0] < 0.3  # a fresh student guesses
    assert agree[-1] > 0.8 and agree[-1] > agree[0] + 0.5
    assert agree[len(agree) // 2] > agree[0]
    assert all(np.isfinite(h["loss"]) for h in info["history"][1:])
    assert not out.training
    assert info["best_metric"] == max(h["metric"] for h in info["history"])


def test_labels_early_stopping_and_best_weights_restored(digits, tmp_path):
    x, y, tr, te, teacher = digits
    src = _source(digits, labelled_train=True)
    src.eval = Dataset({"input": x[te]}, y[te], "digits held-out")
    ctx = make_ctx(src, tmp_path)
    cfg = DistillConfig(epochs=12, lr=5e-3, patience=2, alpha=0.5)
    out, info = stage.run(teacher, student_factory(), ctx, cfg)
    assert info["metric"] == "accuracy" and "cross-entropy" in info["loss"]
    assert info["epochs_run"] <= 12
    if info["epochs_run"] < 12:  # stopped early: patience epochs without improvement after the best
        assert info["epochs_run"] - info["best_epoch"] == 2
    # the returned weights are the best epoch's, not the last one's
    from edgekit.pruning.metrics import TorchMetric

    # chosen on a held-out fifth of the training data, not on --eval (which then reports it unbiased)
    val, rest = stage.validation_split(src.train, src.eval, ctx.seed)
    assert info["eval"]["n"] == len(val) < len(src.train) and "held out for early stopping" in info["eval"]["source"]
    assert info["train"]["n"] == len(rest) == len(src.train) - len(val)
    assert TorchMetric(val, ["input"], "classification")(out) == pytest.approx(info["best_metric"])
    # seeded: the same run gives the same history
    _, again = stage.run(teacher, student_factory(), ctx, cfg)
    assert [h["loss"] for h in again["history"]] == [h["loss"] for h in info["history"]]


def test_feature_matching_and_student_from_file(digits, tmp_path):
    src = _source(digits, labelled_train=True)
    f = tmp_path / "small.py"
    f.write_text("import torch.nn as nn\n\ndef build():\n    return nn.Sequential(nn.Linear(64, 24), nn.ReLU(), "
                 "nn.Linear(24, 10))\n\ndef wrong():\n    return nn.Sequential(nn.Linear(64, 3))\n")
    ex = (torch.from_numpy(src.calib.take(2).inputs["input"]),)
    student = stage.load_student(f"{f}:build", src, ex)
    cfg = DistillConfig(epochs=2, feature_layers=("1=1",), feature_weight=0.5)
    _, info = stage.run(src.module, student, make_ctx(src, tmp_path), cfg)
    assert "feature matching" in info["loss"] and len(info["history"]) == 3
    with pytest.raises(InputError, match="output shape"):
        stage.load_student(f"{f}:wrong", src, ex)
    with pytest.raises(InputError, match="no module"):
        stage.run(src.module, student, make_ctx(src, tmp_path), replace(cfg, feature_layers=("nope",)))


NO_AUTOGRAD = """import torch, torch.nn as nn

class Frozen(nn.Sequential):
    @torch.no_grad()
    def forward(self, x):
        return super().forward(x)

class Inference(nn.Sequential):
    @torch.inference_mode()
    def forward(self, x):
        return super().forward(x)

def no_grad():
    return Frozen(nn.Linear(64, 24), nn.ReLU(), nn.Linear(24, 10))

def inference():
    return Inference(nn.Linear(64, 24), nn.ReLU(), nn.Linear(24, 10))
"""


@pytest.mark.parametrize("factory", ["no_grad", "inference"])
def test_a_forward_without_autograd_is_refused_for_distillation_and_pruning(digits, tmp_path, factory):
    # a --student so written crashed training ("internal error: RuntimeError: element 0 of tensors does not
    # require grad"), and pruning called a plain network "nothing in this model can be pruned"
    from edgekit.pruning import graph

    src = _source(digits, labelled_train=True)
    f = tmp_path / "frozen.py"
    f.write_text(NO_AUTOGRAD)
    ex = (torch.from_numpy(src.calib.take(2).inputs["input"]),)
    with pytest.raises(InputError) as e:
        stage.load_student(f"{f}:{factory}", src, ex)
    assert str(e.value).startswith(f"--student {f}:{factory}: forward() computes without autograd"), str(e.value)
    namespace = {}
    exec(NO_AUTOGRAD, namespace)
    with pytest.raises(InputError, match=r"^prune: forward\(\) computes without autograd \(torch.no_grad or "):
        graph.make_plan(namespace[factory](), ex)


# ---------------------------------------------------------------- transformers: padding, blocks, importance

def _tiny_bert_source(n=48, seq=16, seed=0):
    """TinyBert on token rows of varied real lengths, right-padded (as zoo:minilm's tokenizer pads)."""
    from test_prune_models import TinyBert, make_source

    torch.manual_seed(seed)
    src = make_source(TinyBert().eval(), {"input_ids": ((seq,), "int64", 64), "attention_mask": ((seq,), "int64", 2)},
                      task="embedding", n=n, seed=seed)
    rng = np.random.default_rng(seed)
    for ds in {id(d): d for d in (src.calib, src.eval, src.train)}.values():
        lengths = rng.integers(3, seq // 2, len(ds))
        mask = (np.arange(seq)[None, :] < lengths[:, None]).astype(np.int64)
        ds.inputs["attention_mask"][:] = mask
        ds.inputs["input_ids"][:] *= mask  # pad id 0
    return src


def test_padding_trim_same_outputs_and_length_batches():
    from edgekit.pruning import batching
    from edgekit.pruning.metrics import predict

    src = _tiny_bert_source()
    names = ["input_ids", "attention_mask"]
    tr = batching.Trimmer(src.eval, names)
    assert tr.active and tr.verify(src.module, src.eval)
    feeds = tr.trim(batching.rows(src.eval, np.arange(8)))
    assert feeds["input_ids"].shape[1] == feeds["attention_mask"].shape[1] < 16
    assert feeds["input_ids"].shape[1] == tr.lengths[:8].max()
    full, cut = predict(src.module, src.eval, names), predict(src.module, src.eval, names, trimmer=tr)
    np.testing.assert_allclose(cut, full, atol=1e-5)  # same rows, same order
    # length-grouped shuffled batches cover every row once and are shorter than random ones
    g = torch.Generator().manual_seed(0)
    batches = batching.train_batches(len(src.eval), 4, g, tr.lengths)
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(src.eval)))
    grouped = np.mean([tr.lengths[b].max() for b in batches])
    rand = np.mean([tr.lengths[b].max() for b in batching.train_batches(len(src.eval), 4, g)])
    assert grouped < rand

    class FixedLength(nn.Module):  # a model that needs all 16 columns: trimming must switch itself off
        def __init__(self):
            super().__init__()
            self.emb, self.head = nn.Embedding(64, 4), nn.Linear(16 * 4, 3)

        def forward(self, input_ids, attention_mask):
            return self.head((self.emb(input_ids) * attention_mask.unsqueeze(-1)).flatten(1))

    tr2 = batching.Trimmer(src.eval, names)
    assert not tr2.verify(FixedLength(), src.eval) and not tr2.active
    assert tr2.trim(feeds) is feeds


def test_pruned_transformer_distils_block_by_block(tmp_path):
    from edgekit.config import PruneConfig
    from edgekit.stages import prune as prune_stage

    src = _tiny_bert_source(n=96)
    ctx = make_ctx(src, tmp_path)
    res = prune_stage.run(src, ctx, PruneConfig(ratio=0.5, head_ratio=0.5, method="taylor", channel_multiple=8),
                          DistillConfig(epochs=0), distill_enabled=False)
    assert any("output sensitivity" in n for n in res.info["notes"])  # unlabelled embeddings: not a constant loss
    student = res.module
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # random tiny BERTs barely change under pruning: move the student off the teacher
        for m in student.bert.encoder.modules():
            if isinstance(m, nn.Linear):
                m.weight.add_(torch.randn(m.weight.shape, generator=g) * 0.3)
    assert stage.auto_feature_layers(src.module, student) == ["bert.encoder.layer.0", "bert.encoder.layer.1"]
    assert stage.auto_feature_layers(src.module, nn.Sequential(nn.Linear(2, 2))) == []
    cfg = DistillConfig(epochs=6, lr=3e-3, batch_size=16, patience=0, weight_decay=0.0)
    _, info = stage.run(src.module, copy_of(student), ctx, cfg)
    assert info["feature_layers"] == ["bert.encoder.layer.0", "bert.encoder.layer.1"]
    assert "auto: matching blocks" in info["loss"] and info["padding_trimmed"] is True
    cos = [h["metric"] for h in info["history"]]
    assert cos[0] < 0.97 and info["best_metric"] > cos[0] + 0.02
    _, off = stage.run(src.module, copy_of(student), ctx, replace(cfg, epochs=1, feature_layers=("none",)))
    assert off["feature_layers"] == [] and "feature" not in off["loss"]


def copy_of(m):
    import copy

    return copy.deepcopy(m)


def test_taylor_sensitivity_grads_for_unlabelled_embeddings():
    from edgekit.pruning import importance

    src = _tiny_bert_source()
    model = src.module
    used = importance.accumulate_gradients(model, src.train, ["input_ids", "attention_mask"], "embedding", samples=32)
    assert "output sensitivity" in used
    q = model.bert.encoder.layer[0].attention.self.query.weight.grad
    assert q is not None and torch.isfinite(q).all() and (q >= 0).all() and q.abs().sum() > 0
    assert not model.training


def test_dropout_off_while_imitating_then_restored(digits, tmp_path):
    src = _source(digits, labelled_train=False)
    torch.manual_seed(1)
    student = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 10))
    seen = []
    student[2].register_forward_hook(lambda m, i, o: seen.append((m.training, m.p)))
    _, info = stage.run(src.module, student, make_ctx(src, tmp_path), DistillConfig(epochs=1, batch_size=256))
    assert info["dropout_off"] is True and student[2].p == 0.5
    assert any(t and p == 0.0 for t, p in seen)  # trained without dropout noise
    labelled = _source(digits, labelled_train=True)  # with labels dropout stays as the model has it
    _, lab = stage.run(labelled.module, student, make_ctx(labelled, tmp_path), DistillConfig(epochs=1, batch_size=256))
    assert lab["dropout_off"] is False and any(t and p == 0.5 for t, p in seen)


def test_validation_split_only_with_enough_training_data():
    rng = np.random.default_rng(0)
    ev = Dataset({"input": rng.normal(size=(30, 4))}, None, "eval.npz")
    small = Dataset({"input": rng.normal(size=(60, 4))}, rng.integers(0, 3, 60), "train.npz")
    assert stage.validation_split(small, ev, 0) == (ev, small)  # too few to split: --eval picks, as said
    big = Dataset({"input": rng.normal(size=(500, 4))}, rng.integers(0, 3, 500), "train.npz")
    val, rest = stage.validation_split(big, ev, 0)
    assert (len(val), len(rest)) == (100, 400)
    seen = np.concatenate([val.inputs["input"], rest.inputs["input"]])
    assert sorted(map(tuple, seen.round(6))) == sorted(map(tuple, big.inputs["input"].round(6)))  # a partition
    v2, _ = stage.validation_split(big, ev, 0)
    np.testing.assert_array_equal(v2.inputs["input"], val.inputs["input"])  # seeded
    np.testing.assert_array_equal(val.labels, big.labels[np.isin(big.inputs["input"][:, 0], val.inputs["input"][:, 0])])


class _ConvBlocks(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.blocks = nn.ModuleList([nn.Conv1d(8, width, 3, padding=1), nn.Conv1d(width, width, 3, padding=1)])
        self.fc = nn.Linear(width, 4)

    def forward(self, x):
        for b in self.blocks:
            x = torch.relu(b(x))
        return self.fc(x.mean(-1))


def test_a_narrower_conv1d_student_matches_the_teachers_blocks_along_channels(tmp_path):
    # the adapter for 3-D features was a Linear over the last axis, a transformer's width: for a Conv1d's
    # [N, C, L] that is the length, and distillation stopped with "The size of tensor a (16) must match the
    # size of tensor b (32) at non-singleton dimension 1"
    from test_prune_models import make_source

    torch.manual_seed(0)
    src = make_source(_ConvBlocks(32).eval(), {"input": ((8, 12), "float32", None)}, n=48)
    student = _ConvBlocks(16)
    _, info = stage.run(src.module, student, make_ctx(src, tmp_path),
                        DistillConfig(epochs=3, batch_size=16, patience=0, lr=3e-3))
    assert info["feature_layers"] == ["blocks.0", "blocks.1"]
    assert info["best_metric"] > info["history"][0]["metric"]
