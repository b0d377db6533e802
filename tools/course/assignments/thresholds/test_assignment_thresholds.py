"""Visible checks of the 'thresholds' assignment (eqs. (7), (8), (16), (17)):
python -m pytest tests/test_assignment_thresholds.py

The grader runs these and hidden cases (random shapes, 3+ classes, ties, other η, edge cases)."""
import math

import pytest
import torch

import hermes


def test_uncertainty_by_hand():
    p = torch.tensor([[0.5, 0.5], [0.9, 0.1], [1.0, 0.0]], dtype=torch.float64)
    u = hermes.uncertainty(p)
    assert u.shape == (3,)
    assert u[0].item() == pytest.approx(0.693147, abs=1e-6)      # ln 2: the most uncertain two-class prediction
    assert u[1].item() == pytest.approx(0.325083, abs=1e-6)      # -(0.9 ln 0.9 + 0.1 ln 0.1)
    assert u[2].item() == pytest.approx(0.0, abs=1e-6)           # a sure prediction: 0, not NaN
    assert hermes.uncertainty(torch.rand(2, 2, 3, 4).softmax(1)).shape == (2, 3, 4)   # (B,C,H,W) -> (B,H,W)


def test_dual_threshold_mask_by_hand():
    # a 2x2 map of lesion probabilities q:   q     0.6    0.95   0.88   0.99
    #                                        u     0.673  0.199  0.367  0.056   (nats)
    q = torch.tensor([[0.6, 0.95], [0.88, 0.99]], dtype=torch.float64)
    probs = torch.stack([1 - q, q])[None]                                        # (1,2,2,2)
    w = hermes.dual_threshold_mask(probs, kappa=0.4, tau=0.85)
    assert w.shape == (1, 2, 2) and w.dtype == torch.float64
    assert w.tolist() == [[[0.0, 1.0], [1.0, 1.0]]]                              # 0.6 fails both bounds
    # τ = 0.9: 0.88 is certain enough (0.367 <= 0.4) but not confident enough -> dropped
    assert hermes.dual_threshold_mask(probs, kappa=0.4, tau=0.9).tolist() == [[[0.0, 1.0], [0.0, 1.0]]]
    # κ = 0.15: 0.95 is confident enough but too uncertain (0.199 > 0.15) -> dropped
    assert hermes.dual_threshold_mask(probs, kappa=0.15, tau=0.9).tolist() == [[[0.0, 0.0], [0.0, 1.0]]]
    # classification: (B,C) -> (B,)
    cls = torch.tensor([[0.02, 0.98], [0.7, 0.3]], dtype=torch.float64)
    assert hermes.dual_threshold_mask(cls, kappa=0.4, tau=0.85).tolist() == [1.0, 0.0]


def test_uncertainty_threshold_by_hand():
    assert hermes.uncertainty_threshold(0, 100) == pytest.approx(0.75)          # η_max
    assert hermes.uncertainty_threshold(25, 100) == pytest.approx(0.676777, abs=1e-6)   # 0.25 + 0.25 (cos(π/4) + 1)
    assert hermes.uncertainty_threshold(50, 100) == pytest.approx(0.5)           # cos(π/2) = 0
    assert hermes.uncertainty_threshold(100, 100) == pytest.approx(0.25)         # η_min


def test_confidence_threshold_by_hand():
    assert hermes.confidence_threshold(0, 100) == pytest.approx(0.855104, abs=1e-6)    # 0.75 + 0.25 e^(-1/2) ln 2
    assert hermes.confidence_threshold(50, 100) == pytest.approx(0.902925, abs=1e-6)   # 0.75 + 0.25 e^(-1/8) ln 2
    assert hermes.confidence_threshold(100, 100) == pytest.approx(0.923287, abs=1e-6)  # 0.75 + 0.25 ln 2
