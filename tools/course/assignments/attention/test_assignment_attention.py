"""Visible checks of the 'attention' assignment (eqs. (3)–(5)):
python -m pytest tests/test_assignment_attention.py

The grader runs these and hidden cases (random weights and sizes against the reference module, gradients)."""
import math

import pytest
import torch

from models import InterTaskAttention


def sig(v):
    return 1 / (1 + math.exp(-v))


def zeroed(C, c_seg):
    ita = InterTaskAttention(C, c_seg).double()
    with torch.no_grad():
        for p in ita.parameters():
            p.zero_()
    return ita


def test_zero_weights_halve_twice():
    # every weight and bias 0: M_c = σ(0) = ½, M_s = σ(0) = ½, x_out = ¼ x_cls
    ita = zeroed(4, 3)
    x_cls, x_seg = torch.randn(2, 4, 5, 3, dtype=torch.float64), torch.randn(2, 3, 5, 3, dtype=torch.float64)
    x_out, M_c, M_s = ita(x_cls, x_seg)
    assert M_c.shape == (2, 4, 1, 1) and M_s.shape == (2, 1, 5, 3) and x_out.shape == (2, 4, 5, 3)
    torch.testing.assert_close(M_c, torch.full_like(M_c, 0.5))
    torch.testing.assert_close(M_s, torch.full_like(M_s, 0.5))
    torch.testing.assert_close(x_out, 0.25 * x_cls)


def test_channel_attention_by_hand():
    # C = 2, one seg channel, 1x1 maps (only the centre taps of the 3x3 convs see data).
    # adapter: x_seg -> (s, s);  W_c: channel 0 = x_cls0 + x_seg0, channel 1 = 0, bias b_c = (0, 1)
    # x_cls = (1, 3), s = 2 -> AvgPool(W_c [x_cls; x_seg] + b_c) = (3, 1); W_0 = [1 1] -> ReLU(4) = 4
    # W_1 = [1, -1]^T -> M_c = (σ(4), σ(-4)); W_s = 0 -> M_s = ½; x_out = ½ M_c x_cls
    ita = zeroed(2, 1)
    with torch.no_grad():
        ita.adapter.weight[:, 0, 0, 0] = 1.0
        ita.W_c.weight[0, 0, 1, 1] = 1.0
        ita.W_c.weight[0, 2, 1, 1] = 1.0
        ita.W_c.bias[1] = 1.0
        ita.W_0.weight[:] = torch.tensor([[1.0, 1.0]])
        ita.W_1.weight[:] = torch.tensor([[1.0], [-1.0]])
    x_cls = torch.tensor([1.0, 3.0], dtype=torch.float64).view(1, 2, 1, 1)
    x_seg = torch.tensor([2.0], dtype=torch.float64).view(1, 1, 1, 1)
    x_out, M_c, M_s = ita(x_cls, x_seg)
    assert M_c.flatten().tolist() == pytest.approx([sig(4), sig(-4)], abs=1e-12)
    assert M_s.flatten().tolist() == pytest.approx([0.5], abs=1e-12)
    assert x_out.flatten().tolist() == pytest.approx([0.5 * sig(4) * 1, 0.5 * sig(-4) * 3], abs=1e-12)


def test_spatial_attention_by_hand():
    # M_c = ½ (zero MLP), so x_m = ½ x_cls = [[1, -1]], [[0, 2]] (2 channels, a 1x2 map):
    # channel average (0.5, 0.5), channel max (1, 2)
    x_cls = torch.tensor([[[2.0, -2.0]], [[0.0, 4.0]]], dtype=torch.float64)[None]    # (1,2,1,2)
    x_seg = torch.zeros(1, 3, 1, 2, dtype=torch.float64)
    x_m = 0.5 * x_cls
    for channel, pooled in ((0, [0.5, 0.5]), (1, [1.0, 2.0])):       # W_s looks only at the average / the max map
        ita = zeroed(2, 3)
        with torch.no_grad():
            ita.W_s.weight[0, channel, 1, 1] = 1.0
        x_out, M_c, M_s = ita(x_cls, x_seg)
        assert M_s.flatten().tolist() == pytest.approx([sig(v) for v in pooled], abs=1e-12)
        torch.testing.assert_close(x_out, M_s * x_m)
