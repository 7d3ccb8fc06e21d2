"""A pruned model saved and loaded back keeps the weights its factory ties (serialize.apply made a fresh
Parameter for every module, so out.weight and emb.weight came back as two copies)."""
import torch

from edgekit.pruning import serialize
from test_prune_hardening import TiedLM, _prune


def test_reloaded_pruned_model_keeps_tied_weights_tied(tmp_path):
    torch.manual_seed(0)
    model = TiedLM()
    _prune(model, torch.randint(0, 50, (4, 6)))
    assert model.h1.out_features < 64  # something was pruned and has to be resized on load
    serialize.save(model, tmp_path / "pruned.pt", spec="test")
    back = serialize.apply(TiedLM(), serialize.read(tmp_path / "pruned.pt"))
    assert back.out.weight is back.emb.weight and back.h1.weight.shape == model.h1.weight.shape
    ids = torch.randint(0, 50, (3, 6))
    with torch.no_grad():
        assert torch.equal(back.eval()(ids), model.eval()(ids))
