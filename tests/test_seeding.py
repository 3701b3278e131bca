"""editlens.seed_everything makes random draws repeat (issue: Foundation, item 6)."""

import random

import numpy as np
import pytest
import torch

from editlens import seed_everything


def _draws():
    return random.random(), float(np.random.rand()), torch.rand(3).tolist()


def test_same_seed_same_draws_and_generator():
    g1 = seed_everything(123)
    first = _draws(), torch.rand(2, generator=g1).tolist()
    g2 = seed_everything(123)
    second = _draws(), torch.rand(2, generator=g2).tolist()
    assert first == second


def test_different_seed_different_draws():
    seed_everything(1)
    a = _draws()
    seed_everything(2)
    assert _draws() != a


def test_negative_seed_is_an_error():
    with pytest.raises(ValueError, match="non-negative"):
        seed_everything(-1)
