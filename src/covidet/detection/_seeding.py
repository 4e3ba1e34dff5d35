"""Seeding of a training process and of its DataLoader workers (shared by ``train`` and ``pretrain``)."""

from __future__ import annotations

import random

import numpy as np
import torch

__all__ = ["seed_everything", "worker_init"]


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators of this process with ``seed``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def worker_init(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seed Python and NumPy from the seed torch gave the worker."""
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)
