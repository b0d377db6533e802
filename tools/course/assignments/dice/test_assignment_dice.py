"""Visible checks of the 'dice' assignment (eq. (9)): python -m pytest tests/test_assignment_dice.py

The grader runs these and hidden cases (random batches against the reference, gradients, eq. (1))."""
import math

import pytest
import torch

import losses


def logits_from_diff(d):
    """(B,2,H,W) logits with channel 0 = 0 and channel 1 = d, so softmax(...)[:, 1] = sigmoid(d)."""
    d = torch.tensor(d, dtype=torch.float64)
    return torch.stack([torch.zeros_like(d), d], dim=1)


def test_dice_helper_by_hand():
    p = torch.tensor([[[1.0, 0.5], [0.0, 0.0]]], dtype=torch.float64)
    g = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]], dtype=torch.float64)
    # Σpg = 1.5, Σp = 1.5, Σg = 2
    assert losses._dice_loss(p, g).tolist() == pytest.approx([1 - (3 + 1e-5) / (3.5 + 1e-5)], abs=1e-12)
    # w keeps pixels (0,0), (1,0), (1,1): Σwpg = 1, Σwp = 1, Σwg = 1 -> a perfect Dice, loss 0
    w = torch.tensor([[[1.0, 0.0], [1.0, 1.0]]], dtype=torch.float64)
    assert losses._dice_loss(p, g, w).tolist() == pytest.approx([0.0], abs=1e-12)


def test_seg_unsupervised_loss_by_hand():
    ln3, ln9 = math.log(3), math.log(9)
    # image 1: strong p = [[.75, .5], [.25, .9]], weak argmax g = [[1, 0], [0, 1]], w = [[1, 1], [1, 0]]
    #   kept (p, g): (.75, 1), (.5, 0), (.25, 0) -> Σwpg = .75, Σwp = 1.5, Σwg = 1
    # image 2: no kept pixel -> adds 0, but B = 2
    strong = logits_from_diff([[[ln3, 0], [-ln3, ln9]], [[1, 2], [3, 4]]])
    weak = logits_from_diff([[[2, -1], [-3, 1]], [[5, 5], [5, 5]]])
    w = torch.tensor([[[1, 1], [1, 0]], [[0, 0], [0, 0]]], dtype=torch.float64)
    expected = (1 - (1.5 + 1e-5) / (2.5 + 1e-5)) / 2
    assert losses.seg_unsupervised_loss(strong, weak, w).item() == pytest.approx(expected, abs=1e-10)


def test_no_kept_pixel_gives_zero():
    strong = torch.randn(3, 2, 4, 4, requires_grad=True)
    out = losses.seg_unsupervised_loss(strong, torch.randn(3, 2, 4, 4), torch.zeros(3, 4, 4))
    assert out.dim() == 0 and out.item() == pytest.approx(0.0, abs=1e-7)
    out.backward()
    assert torch.isfinite(strong.grad).all()


def test_no_gradient_reaches_the_weak_view():
    strong = torch.randn(2, 2, 4, 4, requires_grad=True)
    weak = torch.randn(2, 2, 4, 4, requires_grad=True)
    losses.seg_unsupervised_loss(strong, weak, torch.ones(2, 4, 4)).backward()
    assert strong.grad is not None and strong.grad.abs().sum() > 0
    assert weak.grad is None or not weak.grad.any()
