"""Visible checks of the 'image-contrast' assignment (eqs. (12)–(13)):
python -m pytest tests/test_assignment_image_contrast.py

The grader runs these and hidden cases (random batches and banks against the reference, other temperatures,
empty and zero-weight cases, gradients)."""
import math

import pytest
import torch

import losses

# τ = 1. Rows 0, 1 are the strong views of images 0, 1; rows 2, 3 their weak views (row i and i+2: same image).
V = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.8, 0.6], [0.0, 1.0]], dtype=torch.float64)
SIM = {(0, 1): 0.6, (0, 2): 0.8, (0, 3): 0.0, (1, 2): 0.96, (1, 3): 0.8, (2, 3): 0.6}   # v_i · v_j


def s(i, j):
    return SIM[(min(i, j), max(i, j))]


def log_den(i, extra=()):
    """ln Σ_{j≠i} e^{s_ij} (+ bank terms e^{extra})."""
    return math.log(sum(math.exp(s(i, j)) for j in range(4) if j != i) + sum(math.exp(e) for e in extra))


def test_all_one_label_all_weights_one():
    # every other row is a positive with weight 1:  L_i = ln den_i - mean_{p≠i} s_ip
    L = [log_den(i) - sum(s(i, p) for p in range(4) if p != i) / 3 for i in range(4)]
    out = losses.image_contrastive_loss(V, torch.zeros(4, dtype=torch.long), torch.ones(4, dtype=torch.float64), 1.0)
    assert out.item() == pytest.approx(sum(L) / 4, abs=1e-10)


def test_unreliable_images_keep_only_their_other_view():
    # weights (1, 0) per image: w_ip = w_i w_p = 0 except for the other view (eq. (13)): L_i = ln den_i - s_{i,i+2}
    L = [log_den(i) - s(i, (i + 2) % 4) for i in range(4)]
    out = losses.image_contrastive_loss(V, torch.zeros(4, dtype=torch.long),
                                        torch.tensor([1.0, 0.0, 1.0, 0.0], dtype=torch.float64), 1.0)
    assert out.item() == pytest.approx(sum(L) / 4, abs=1e-10)
    # labels (0, 1) and weights (1, 1) given per image (N,): the only positive is again the other view
    out = losses.image_contrastive_loss(V, torch.tensor([0, 1]), torch.ones(2, dtype=torch.float64), 1.0)
    assert out.item() == pytest.approx(sum(L) / 4, abs=1e-10)


def test_memory_bank_entry():
    # one bank entry b = (1,0) of class 0; labels (0, 1) per image, weights 1.  s_ib = 1, .6, .8, 0 for rows 0-3.
    # rows 0, 2 (class 0): positives = other view and b (weight w_i = 1); rows 1, 3: only the other view
    sb = [1.0, 0.6, 0.8, 0.0]
    L = [log_den(0, [sb[0]]) - (s(0, 2) + sb[0]) / 2,
         log_den(1, [sb[1]]) - s(1, 3),
         log_den(2, [sb[2]]) - (s(2, 0) + sb[2]) / 2,
         log_den(3, [sb[3]]) - s(3, 1)]
    out = losses.image_contrastive_loss(V, torch.tensor([0, 1, 0, 1]), torch.ones(4, dtype=torch.float64), 1.0,
                                        bank_feats=torch.tensor([[1.0, 0.0]], dtype=torch.float64),
                                        bank_labels=torch.tensor([0]))
    assert out.item() == pytest.approx(sum(L) / 4, abs=1e-10)


def test_temperature_and_shape():
    out = losses.image_contrastive_loss(V, torch.zeros(4, dtype=torch.long), torch.ones(4, dtype=torch.float64), 0.5)
    L = [math.log(sum(math.exp(2 * s(i, j)) for j in range(4) if j != i))
         - sum(2 * s(i, p) for p in range(4) if p != i) / 3 for i in range(4)]
    assert out.dim() == 0 and out.item() == pytest.approx(sum(L) / 4, abs=1e-10)
