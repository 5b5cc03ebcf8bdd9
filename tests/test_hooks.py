"""Tests of helpers.hooks on small torch modules (no CLIP): read, edit, tuple outputs, cleanup, layout refusal."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from helpers import hooks

pytestmark = pytest.mark.fast


def _net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential()
    net.add_module("lin", nn.Linear(4, 6))
    net.add_module("attn", nn.MultiheadAttention(6, 2, batch_first=True))
    return net


def _run(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    h = net.lin(x)
    return net.attn(h, h, h)[0]


def _hooks_left(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_trace_reads_named_outputs_and_the_first_element_of_tuples():
    net, x = _net(), torch.randn(2, 3, 4)
    with hooks.Trace(net, ["lin", "attn"]) as tr:
        out = _run(net, x)
    assert torch.equal(tr.outputs["lin"], net.lin(x))
    assert torch.equal(tr.outputs["attn"], out)  # MHA returns (out, weights): the tensor read is out
    assert tr.calls == {"lin": 1, "attn": 1}
    assert _hooks_left(net) == 0


def test_edit_changes_the_output_and_keeps_the_tuple_tail():
    net, x = _net(), torch.randn(2, 3, 4)
    mask = torch.zeros(6, dtype=torch.bool)
    mask[[1, 4]] = True
    ref = _run(net, x)
    with hooks.mask_output(net.attn, mask):
        h = net.lin(x)
        edited, weights = net.attn(h, h, h)
    assert torch.equal(edited[..., mask], torch.zeros(2, 3, 2))
    assert torch.equal(edited[..., ~mask], ref[..., ~mask])
    assert weights is not None and weights.shape == (2, 3, 3)  # the tuple's other elements pass through
    with hooks.edit_outputs(hooks.named(net, "lin"), lambda name, out: out * 2):
        assert torch.allclose(net.lin(x), 2 * (x @ net.lin.weight.T + net.lin.bias))
    assert torch.equal(_run(net, x), ref)  # removed: the model is unchanged after the block


def test_hooks_are_removed_after_an_exception_in_the_body_or_in_a_hook():
    net, x = _net(), torch.randn(2, 3, 4)
    with pytest.raises(KeyError):
        with hooks.Trace(net, "lin"), hooks.read_inputs({"lin": net.lin}, lambda n, t: None):
            assert _hooks_left(net) == 2
            raise KeyError("boom")
    assert _hooks_left(net) == 0

    def bad(name, out):
        raise RuntimeError("inside the hook")

    with pytest.raises(RuntimeError):
        with hooks.edit_outputs({"lin": net.lin}, bad):
            net.lin(x)
    assert _hooks_left(net) == 0
    with pytest.raises(AttributeError):  # an unknown name registers nothing
        hooks.Trace(net, ["lin", "nope"])
    assert _hooks_left(net) == 0


def test_read_inputs_sees_positional_and_keyword_inputs():
    net, x = _net(), torch.randn(2, 3, 4)
    seen = {}
    with hooks.read_inputs({"lin": net.lin}, lambda n, t: seen.setdefault(n, []).append(t)):
        net.lin(x)
        net.lin(input=x)
    assert len(seen["lin"]) == 2 and all(torch.equal(t, x) for t in seen["lin"])


def test_non_tensor_outputs_are_refused():
    class Pair(nn.Module):
        def forward(self, x):
            return {"x": x}

    m = Pair()
    with pytest.raises(TypeError, match="dict"):
        with hooks.Trace(m, ""):
            m(torch.zeros(1))
    assert _hooks_left(m) == 0


def test_sequence_first_is_refused_in_one_place():
    seq = nn.Sequential()
    seq.add_module("attn", nn.MultiheadAttention(6, 2, batch_first=False))
    with pytest.raises(hooks.SequenceFirstError, match="attn"):
        hooks.Trace(seq, "attn")

    class Transformer(nn.Module):
        def __init__(self):
            super().__init__()
            self.batch_first = False
            self.resblocks = nn.ModuleList([nn.Linear(2, 2)])

    with pytest.raises(hooks.SequenceFirstError):
        hooks.require_batch_first(nn.Sequential(Transformer()))
    assert hooks.require_batch_first(_net()) is not None
