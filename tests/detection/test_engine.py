"""Training-loop guards and the class-balanced sampler."""

from collections import Counter

import pytest
import torch
from torch import nn

from covidet.detection.engine import NonFiniteLossError, train_one_epoch
from covidet.detection.train import BalancedSampler


class _LossAfter(nn.Module):
    """A detector stand-in whose loss becomes NaN at a given step (to test the guard, not a model)."""

    def __init__(self, nan_at: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(()))
        self.calls, self.nan_at = 0, nan_at

    def forward(self, images, targets):
        self.calls += 1
        loss = self.weight * 1.0
        return {"loss_a": loss * float("nan") if self.calls > self.nan_at else loss}


def test_non_finite_loss_stops_training_before_the_update() -> None:
    model = _LossAfter(nan_at=2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    batches = [([torch.zeros(3, 4, 4)], [{"boxes": torch.zeros(0, 4)}])] * 5
    with pytest.raises(NonFiniteLossError, match="non-finite loss nan at epoch 7, iteration 2"):
        train_one_epoch(model, optimizer, batches, epoch=7, device=torch.device("cpu"), show_progress=False)
    assert torch.isfinite(model.weight).all()  # the NaN step never reached the weights
    assert model.weight.item() == pytest.approx(1.0 - 2 * 0.1)  # the two finite steps did


def test_balanced_sampler_evens_out_classes_and_is_deterministic() -> None:
    labels = ["covid19"] * 300 + ["pneumonia"] * 50 + ["normal"] * 150
    sampler = BalancedSampler(labels, seed=3)
    sampler.set_epoch(1)
    first = list(sampler)
    assert first == list(sampler) and len(first) == len(labels)
    counts = Counter(labels[i] for i in first)
    for label in ("covid19", "pneumonia", "normal"):
        assert 0.27 < counts[label] / len(first) < 0.40  # about a third each
    sampler.set_epoch(2)
    assert list(sampler) != first


def test_balanced_sampler_shards_one_draw_across_ranks() -> None:
    labels = ["a"] * 10 + ["b"] * 30
    shards = [BalancedSampler(labels, seed=0, rank=r, world_size=2) for r in (0, 1)]
    draws = [list(s) for s in shards]
    assert len(draws[0]) == len(draws[1]) == 20
    whole = torch.multinomial(
        shards[0].weights, 40, True, generator=torch.Generator().manual_seed(0)
    ).tolist()
    assert draws[0] == whole[0::2] and draws[1] == whole[1::2]
