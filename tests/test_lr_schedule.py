import math

import pytest

from lr_schedule import get_lr


def lr(it):
    return get_lr(it, learning_rate=1e-3, warmup_iters=100, lr_decay_iters=1000, min_lr=1e-4)


def test_warmup_is_linear_and_nonzero_at_step_zero():
    assert lr(0) == pytest.approx(1e-3 / 101)
    assert lr(49) == pytest.approx(1e-3 * 50 / 101)
    assert lr(99) == pytest.approx(1e-3 * 100 / 101)


def test_cosine_decay_then_floor():
    assert lr(100) == pytest.approx(1e-3)
    assert lr(550) == pytest.approx(1e-4 + 0.5 * (1e-3 - 1e-4))  # halfway: cos(pi/2) = 0
    assert lr(325) == pytest.approx(1e-4 + 0.5 * (1 + math.cos(math.pi / 4)) * 9e-4)
    assert lr(1000) == pytest.approx(1e-4)
    assert lr(5000) == 1e-4
    values = [lr(i) for i in range(100, 1001)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_no_warmup_and_degenerate_decay():
    assert get_lr(0, 1e-3, 0, 1000, 1e-4) == pytest.approx(1e-3)
    assert get_lr(10, 1e-3, 10, 10, 1e-4) == 1e-4
