"""Visible checks of the 'saliency' assignment (eq. (6)):
python -m pytest tests/test_assignment_saliency.py

The grader runs these and hidden cases (small CNNs with BatchNorm and a ResNet-18 against the reference,
batch independence, constant maps)."""
import pytest
import torch
import torch.nn as nn

from models import saliency

A = [[[1.0, -2.0], [0.0, 0.5]], [[-3.0, 1.0], [0.0, 0.0]], [[0.5, 0.5], [2.0, -1.0]]]   # (3,2,2)
B = [[[0.0, 1.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, -4.0]]]


class TwoLinearLogits(nn.Module):
    """f_0(x) = Σ A·x,  f_1(x) = Σ B·x + 1: the input gradient of f_c is A or B."""

    def __init__(self):
        super().__init__()
        self.A, self.B = nn.Parameter(torch.tensor(A)), nn.Parameter(torch.tensor(B))

    def forward(self, x):
        return torch.stack([(x * self.A).sum(dim=(1, 2, 3)), (x * self.B).sum(dim=(1, 2, 3)) + 1.0], dim=1)


def test_saliency_by_hand():
    net = TwoLinearLogits()
    x = torch.stack([10 * torch.tensor(A), torch.zeros(3, 2, 2)])   # image 0: f = (207.5, 21); image 1: f = (0, 1)
    s = saliency(net, x)
    assert s.shape == (2, 1, 2, 2)
    # image 0: class 0 wins, gradient A; max over RGB of |A| = [[3, 2], [2, 1]] -> min-max [[1, .5], [.5, 0]]
    torch.testing.assert_close(s[0, 0], torch.tensor([[1.0, 0.5], [0.5, 0.0]]))
    # image 1: class 1 wins, gradient B; max over RGB of |B| = [[0, 1], [0, 4]] -> [[0, .25], [0, 1]]
    torch.testing.assert_close(s[1, 0], torch.tensor([[0.0, 0.25], [0.0, 1.0]]))


def test_no_parameter_gradient_and_detached():
    net = TwoLinearLogits()
    with torch.no_grad():                                           # the teacher pass calls it like this
        s = saliency(net, torch.randn(2, 3, 2, 2))
    assert not s.requires_grad and s.min() >= 0 and s.max() <= 1
    assert all(p.grad is None for p in net.parameters())


def test_eval_mode_inside_and_modes_restored():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 4 * 4, 2))
    net.train()
    net[0].eval()                                                   # a mixed mode must come back exactly
    before = {k: v.clone() for k, v in net.state_dict().items()}
    saliency(net, torch.randn(3, 3, 4, 4))
    assert [m.training for m in net.modules()] == [True, False, True, True, True]
    for k, v in net.state_dict().items():                           # BatchNorm in eval mode: running stats untouched
        assert torch.equal(v, before[k]), k
