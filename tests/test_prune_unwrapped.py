"""A parameter no layer holds (a ViT-style position table) is one edgekit note when pruning: Torch-Pruning's
UserWarning reached the terminal as two raw lines of advice an edgekit user cannot follow ("please provide an
unwrapped_parameters argument")."""
import json

from tests.cliutil import prune_model_file

MODEL = '''
import torch, torch.nn as nn

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.proj = nn.Linear(6, 32)
        self.pos = nn.Parameter(torch.randn(1, 5, 32) * 0.1)
        self.mlp = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 32))
        self.head = nn.Linear(32, 4)

    def forward(self, x):
        h = self.proj(x) + self.pos
        return self.head((h + self.mlp(h)).mean(1))

def net():
    return Net()
'''


def test_a_free_parameter_is_one_note_not_torch_prunings_warning(tmp_path, capsys):
    rc, err, out = prune_model_file(tmp_path, capsys, MODEL, shape=(5, 6), ratio=0.5)
    assert rc == 0, err
    assert "UserWarning" not in err and "unwrapped_parameters argument" not in err, err
    said = [ln for ln in err.splitlines() if "held by no layer Torch-Pruning knows (pos)" in ln]
    assert len(said) == 1 and said[0].startswith("edgekit: note: 1 parameter(s)"), err
    notes = json.loads((out / "manifest.json").read_text())["pruning"]["notes"]
    assert any("held by no layer Torch-Pruning knows (pos)" in n for n in notes), notes
