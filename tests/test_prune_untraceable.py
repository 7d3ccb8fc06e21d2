"""A layer whose channel dependencies Torch-Pruning cannot trace in bounded time is kept whole, with a reason,
instead of hanging the run: a HuggingFace Llama's q_proj / k_proj (rotary embeddings' rotate_half) sent
Torch-Pruning's group walk around for good (8 minutes at 100% CPU, nothing on screen, on 2 layers)."""
import signal
import time

import pytest
import torch
import torch.nn as nn

from edgekit.pruning import graph, untraceable


class Llama(nn.Module):
    def __init__(self):
        super().__init__()
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.manual_seed(0)
        cfg = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32, use_cache=False)
        self.lm = LlamaForCausalLM(cfg).eval()

    def forward(self, input_ids):
        return self.lm(input_ids=input_ids).logits


def test_the_walk_that_does_not_converge_is_found_in_bounded_time():
    # grouped key/value heads (repeat_kv) with rotary embeddings: q_proj's and k_proj's groups never resolve
    model = Llama().eval()
    example = (torch.randint(2, 64, (2, 8)),)
    attn = model.lm.model.layers[0].self_attn
    t = time.monotonic()
    stuck = untraceable.untraceable_roots(graph.dependency_graph(model, example), [], graph.root_types(), seconds=1.0)
    assert time.monotonic() - t < 30
    assert any(m is attn.q_proj for m in stuck) and any(m is attn.k_proj for m in stuck)
    assert not any(m is model.lm.model.layers[0].mlp.gate_proj for m in stuck)


def test_grouped_query_attention_is_kept_whole_and_the_feed_forward_planned():
    model = Llama().eval()
    example = (torch.randint(2, 64, (2, 8)),)
    t = time.monotonic()
    plan = graph.make_plan(model, example, group_seconds=1.0)
    assert time.monotonic() - t < 30
    attn = model.lm.model.layers[0].self_attn
    for lin in (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj):
        assert any(lin is m for m in plan.ignored)
    assert not plan.has_heads
    assert "lm.model.layers.0.mlp.gate_proj" not in plan.kept


def test_a_group_that_does_not_resolve_is_kept_whole_and_the_rest_planned():
    model = Llama().eval()
    example = (torch.randint(2, 64, (2, 8)),)
    # taken for plain multi-head attention (its key/value head count read as the query's): its heads would
    # be pruned, until q_proj's and k_proj's groups are found not to resolve
    model.lm.model.layers[0].self_attn.num_key_value_heads = 4
    t = time.monotonic()
    plan = graph.make_plan(model, example, group_seconds=1.0)
    assert time.monotonic() - t < 30
    attn = "lm.model.layers.0.self_attn"
    stuck = {n for n, why in plan.kept.items() if "did not resolve in 1 s" in why}
    assert f"{attn}.q_proj" in stuck and f"{attn}.k_proj" in stuck
    # v alone would lose heads q and k keep: the attention keeps all of them
    assert f"{attn}.v_proj" in plan.kept
    assert not plan.has_heads and not plan.attention
    assert "lm.model.layers.0.mlp.gate_proj" not in plan.kept  # still for the pruner to cut
    by_name = dict(model.named_modules())
    assert all(any(by_name[f"{attn}.{p}"] is m for m in plan.ignored) for p in ("q_proj", "k_proj", "v_proj"))


def test_a_model_whose_groups_resolve_keeps_nothing_for_that_reason():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(), nn.Flatten(),
                          nn.LazyLinear(4))
    example = (torch.randn(2, 3, 8, 8),)
    model(*example)
    plan = graph.make_plan(model.eval(), example, group_seconds=1.0)
    assert not any("did not resolve" in why for why in plan.kept.values())


def test_the_time_limit_restores_the_previous_alarm_handler():
    def mine(signum, frame):
        pass

    old = signal.signal(signal.SIGALRM, mine)
    try:
        with untraceable._time_limit(5.0):
            pass
        assert signal.getsignal(signal.SIGALRM) is mine
        assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
        signal.setitimer(signal.ITIMER_REAL, 100.0)  # the program's own timer runs on after the limit
        with untraceable._time_limit(5.0):
            pass
        assert 90.0 < signal.getitimer(signal.ITIMER_REAL)[0] <= 100.0
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def test_a_timeout_dropped_inside_a_finaliser_is_raised_again():
    """An exception from a __del__ is printed and dropped: a time limit whose one signal landed there never
    ended the walk (a CI run hung in this file)."""
    class Finaliser:
        def __del__(self):
            t = time.monotonic()
            while time.monotonic() - t < 0.4:  # the limit's first signal arrives in here
                pass

    t0 = time.monotonic()
    with pytest.raises(untraceable._Timeout):
        with untraceable._time_limit(0.2):
            Finaliser()  # its last reference goes at once, so __del__ runs here
            while time.monotonic() - t0 < 5:
                pass
    assert time.monotonic() - t0 < 2
