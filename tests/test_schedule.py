import pytest

from optimizers.muon import MuonConfig
from optimizers.scion import ScionConfig
from training.schedule import lr_multiplier, window_at


def test_lr_constant_then_linear_cooldown_to_floor():
    steps, frac, floor = 100, 0.4, 0.1
    lr = [lr_multiplier(s, steps, 0, frac, floor) for s in range(steps)]
    assert lr[:60] == [1.0] * 60  # 40 cooldown steps at the end
    assert all(a > b for a, b in zip(lr[60:], lr[61:]))  # strictly decreasing
    assert lr[99] == pytest.approx(floor + (1 - floor) * 1 / 40)
    # the record's formula: w = min((1 - step/steps) / frac, 1); lr = w + (1 - w) * floor
    for s in range(steps):
        w = min((1 - s / steps) / frac, 1.0)
        assert lr[s] == pytest.approx(w + (1 - w) * floor)


def test_lr_warmup():
    lr = [lr_multiplier(s, 100, 10, 0.0, 0.0) for s in range(12)]
    assert lr[0] == pytest.approx(0.1) and lr[9] == 1.0 and lr[11] == 1.0
    assert lr_multiplier(99, 100, 0, 0.0, 0.0) == 1.0  # no cooldown


def test_momentum_warmup():
    muon = MuonConfig()  # the record: 0.85 -> 0.95 over 300 steps
    assert muon.momentum_at(0) == pytest.approx(0.85)
    assert muon.momentum_at(150) == pytest.approx(0.90)
    assert muon.momentum_at(1000) == pytest.approx(0.95)
    assert MuonConfig(momentum_warmup_steps=0).momentum_at(0) is None  # the optimizer keeps its own
    assert ScionConfig().momentum_at(5) is None


def test_window_grows_in_blocks_to_the_record_maximum():
    w = [window_at(s, 1770, 1792, True) for s in range(1771)]
    assert w[0] == 128 and w[-1] == 1792
    assert all(x % 128 == 0 for x in w) and w == sorted(w)


def test_window_never_exceeds_the_configured_one():
    w = [window_at(s, 200, 192, True) for s in range(201)]
    assert max(w) == 192 and w[0] == 128 and set(w) == {128, 192}
    assert window_at(0, 10, 96, True) == 96  # smaller than a block: the window itself
    assert window_at(5, 100, 0, True) == 0  # no window configured: full attention
    assert window_at(5, 100, 1000, False) == 1000
