"""The update rules of cnnbook.optim (book/optimizers.md).

The setups follow the checks of cs231n's FullyConnectedNets notebook (N, D = 4, 5 and
``np.linspace`` arrays); the expected values are computed here from the update formulas
written out independently, plus one element of each worked out by hand.
"""
import numpy as np
import pytest

from cnnbook.optim import STATE_PER_PARAMETER, adam, rmsprop, sgd, sgd_momentum

N, D = 4, 5
RULES = [sgd, sgd_momentum, rmsprop, adam]
STATE_KEYS = {"sgd": (), "sgd_momentum": ("velocity",), "rmsprop": ("cache",), "adam": ("m", "v")}
DEFAULTS = {
    "sgd": {"learning_rate": 1e-2},
    "sgd_momentum": {"learning_rate": 1e-2, "momentum": 0.9},
    "rmsprop": {"learning_rate": 1e-2, "decay_rate": 0.99, "epsilon": 1e-8},
    "adam": {"learning_rate": 1e-3, "beta1": 0.9, "beta2": 0.999, "epsilon": 1e-8, "t": 1},
}  # Adam's t defaults to 0 and is 1 after the first call


def lin(lo, hi):
    return np.linspace(lo, hi, num=N * D).reshape(N, D)


@pytest.fixture
def w():
    return lin(-0.4, 0.6)


@pytest.fixture
def dw():
    return lin(-0.6, 0.4)


def assert_close(actual, expected, rtol=1e-12):
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=0)


# ---------------------------------------------------------------- values


def test_sgd_value(w, dw):
    next_w, config = sgd(w, dw, {"learning_rate": 1e-3})
    assert_close(next_w, w - 1e-3 * dw)
    assert next_w[0, 0] == pytest.approx(-0.4 + 1e-3 * 0.6, abs=1e-15)


def test_sgd_momentum_cs231n_setup(w, dw):
    v = lin(0.6, 0.9)
    v_before = v.copy()
    next_w, config = sgd_momentum(w, dw, {"learning_rate": 1e-3, "velocity": v})
    expected_v = 0.9 * v_before - 1e-3 * dw
    assert_close(config["velocity"], expected_v)
    assert_close(next_w, w + expected_v)
    # by hand: v = 0.9 * 0.6 + 1e-3 * 0.6 = 0.5406, w = -0.4 + 0.5406; v = 0.81 - 4e-4, w = 0.6 + 0.8096
    assert next_w[0, 0] == pytest.approx(0.1406, abs=1e-12)
    assert next_w[-1, -1] == pytest.approx(1.4096, abs=1e-12)
    assert np.array_equal(v, v_before), "the velocity passed in was modified in place"


def test_rmsprop_cs231n_setup(w, dw):
    cache = lin(0.6, 0.9)
    cache_before = cache.copy()
    next_w, config = rmsprop(w, dw, {"learning_rate": 1e-2, "cache": cache})
    expected_cache = 0.99 * cache_before + 0.01 * dw**2
    assert_close(config["cache"], expected_cache)
    assert_close(next_w, w - 1e-2 * dw / (np.sqrt(expected_cache) + 1e-8))
    # by hand: cache = 0.99 * 0.6 + 0.01 * 0.36 = 0.5976, w = -0.4 + 0.006 / (sqrt(0.5976) + 1e-8)
    assert next_w[0, 0] == pytest.approx(-0.4 + 0.006 / (0.5976**0.5 + 1e-8), abs=1e-12)
    assert next_w[0, 0] == pytest.approx(-0.39223849, abs=1e-8)
    assert np.array_equal(cache, cache_before)


def test_adam_cs231n_setup(w, dw):
    m, v = lin(0.6, 0.9), lin(0.7, 0.5)
    m_before, v_before = m.copy(), v.copy()
    next_w, config = adam(w, dw, {"learning_rate": 1e-2, "m": m, "v": v, "t": 5})
    expected_m = 0.9 * m_before + 0.1 * dw
    expected_v = 0.999 * v_before + 0.001 * dw**2
    assert config["t"] == 6
    assert_close(config["m"], expected_m)
    assert_close(config["v"], expected_v)
    mhat = expected_m / (1 - 0.9**6)
    vhat = expected_v / (1 - 0.999**6)
    assert_close(next_w, w - 1e-2 * mhat / (np.sqrt(vhat) + 1e-8))
    # by hand: m = 0.54 - 0.06 = 0.48, v = 0.6993 + 0.00036 = 0.69966, t = 6
    by_hand = -0.4 - 1e-2 * (0.48 / (1 - 0.9**6)) / ((0.69966 / (1 - 0.999**6)) ** 0.5 + 1e-8)
    assert next_w[0, 0] == pytest.approx(by_hand, abs=1e-12)
    assert next_w[0, 0] == pytest.approx(-0.40094747, abs=1e-8)
    assert np.array_equal(m, m_before) and np.array_equal(v, v_before)


def test_adam_first_step_is_learning_rate_times_sign():
    g = np.array([[0.5, -2.0], [1e-3, -30.0]])
    next_w, config = adam(np.zeros((2, 2)), g, {"learning_rate": 0.01})
    assert_close(next_w, -0.01 * np.sign(g), rtol=2e-5)
    assert config["t"] == 1
    assert_close(config["m"] / (1 - 0.9), g)
    assert_close(config["v"] / (1 - 0.999), g**2)


def test_rmsprop_first_step_is_ten_learning_rates():
    g = np.array([0.5, -2.0, 1e-3])
    next_w, _ = rmsprop(np.zeros(3), g, {"learning_rate": 0.01})
    assert_close(next_w, -0.1 * np.sign(g), rtol=1e-4)  # lr / sqrt(1 - 0.99), up to epsilon


def test_momentum_zero_is_sgd(w, dw):
    a, _ = sgd_momentum(w, dw, {"learning_rate": 0.1, "momentum": 0.0, "velocity": lin(1.0, 2.0)})
    b, _ = sgd(w, dw, {"learning_rate": 0.1})
    assert_close(a, b)


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.__name__)
def test_zero_learning_rate_leaves_w_unchanged(rule, w, dw):
    next_w, _ = rule(w, dw, {"learning_rate": 0.0})
    assert np.array_equal(next_w, w)


# ---------------------------------------------------------------- state across calls


def test_state_is_carried_across_calls():
    rng = np.random.default_rng(0)
    w0 = rng.standard_normal((3, 2))
    grads = rng.standard_normal((3, 3, 2))
    lr, mu, rho, b1, b2, eps = 0.05, 0.8, 0.9, 0.7, 0.95, 1e-8

    results = {}
    for rule, config in [
        (sgd_momentum, {"learning_rate": lr, "momentum": mu}),
        (rmsprop, {"learning_rate": lr, "decay_rate": rho, "epsilon": eps}),
        (adam, {"learning_rate": lr, "beta1": b1, "beta2": b2, "epsilon": eps}),
    ]:
        wt = w0
        for g in grads:
            wt, returned = rule(wt, g, config)
            assert returned is config  # the same dictionary goes back and forth
        results[rule.__name__] = wt, config

    g1, g2, g3 = grads
    # momentum, unrolled
    v3 = -lr * (mu**2 * g1 + mu * g2 + g3)
    assert_close(results["sgd_momentum"][1]["velocity"], v3)
    assert_close(results["sgd_momentum"][0], w0 - lr * ((1 + mu + mu**2) * g1 + (1 + mu) * g2 + g3))
    # RMSProp, unrolled
    caches = [(1 - rho) * g1**2, (1 - rho) * (rho * g1**2 + g2**2),
              (1 - rho) * (rho**2 * g1**2 + rho * g2**2 + g3**2)]
    assert_close(results["rmsprop"][1]["cache"], caches[2])
    assert_close(results["rmsprop"][0], w0 - lr * sum(g / (np.sqrt(c) + eps) for g, c in zip(grads, caches)))
    # Adam, unrolled
    ms = [(1 - b1) * g1, (1 - b1) * (b1 * g1 + g2), (1 - b1) * (b1**2 * g1 + b1 * g2 + g3)]
    vs = [(1 - b2) * g1**2, (1 - b2) * (b2 * g1**2 + g2**2), (1 - b2) * (b2**2 * g1**2 + b2 * g2**2 + g3**2)]
    steps = [(ms[t] / (1 - b1 ** (t + 1))) / (np.sqrt(vs[t] / (1 - b2 ** (t + 1))) + eps) for t in range(3)]
    assert results["adam"][1]["t"] == 3
    assert_close(results["adam"][1]["m"], ms[2])
    assert_close(results["adam"][1]["v"], vs[2])
    assert_close(results["adam"][0], w0 - lr * sum(steps))


# ---------------------------------------------------------------- config defaults


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.__name__)
def test_defaults_are_stored_in_config(rule, w, dw):
    next_w, config = rule(w, dw)  # config=None
    assert isinstance(config, dict)
    for key, value in DEFAULTS[rule.__name__].items():
        assert config[key] == value, key
    for key in STATE_KEYS[rule.__name__]:
        assert config[key].shape == w.shape and config[key].dtype == w.dtype
    expected = set(DEFAULTS[rule.__name__]) | set(STATE_KEYS[rule.__name__])
    assert set(config) == expected


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.__name__)
def test_given_config_values_are_kept(rule, w, dw):
    config = {"learning_rate": 0.123}
    _, returned = rule(w, dw, config)
    assert returned is config and config["learning_rate"] == 0.123


def test_defaults_are_the_documented_ones(w, dw):
    """With config=None the rules take the documented default steps."""
    assert_close(sgd(w, dw)[0], w - 1e-2 * dw)
    assert_close(sgd_momentum(w, dw)[0], w - 1e-2 * dw)  # velocity starts at zero
    assert_close(rmsprop(w, dw)[0], w - 1e-2 * dw / (np.sqrt(0.01 * dw**2) + 1e-8))
    assert_close(adam(w, dw)[0], w - 1e-3 * dw / (np.abs(dw) + 1e-8))


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.__name__)
def test_state_per_parameter_counts_the_state_arrays(rule, w, dw):
    _, config = rule(w, dw)
    arrays = [k for k, v in config.items() if isinstance(v, np.ndarray) and v.shape == w.shape]
    assert len(arrays) == STATE_PER_PARAMETER[rule.__name__]
    assert set(STATE_PER_PARAMETER) == {r.__name__ for r in RULES}


# ---------------------------------------------------------------- copies and dtypes


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.__name__)
def test_w_and_dw_are_not_modified(rule, w, dw):
    w_before, dw_before = w.copy(), dw.copy()
    config = None
    for _ in range(2):
        next_w, config = rule(w, dw, config)
    assert next_w is not w and not np.shares_memory(next_w, w)
    assert np.array_equal(w, w_before) and np.array_equal(dw, dw_before)


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.__name__)
@pytest.mark.parametrize("dw_dtype", [np.float32, np.float64])
def test_float32_stays_float32(rule, dw_dtype):
    rng = np.random.default_rng(1)
    wt = rng.standard_normal((N, D)).astype(np.float32)
    config = None
    for _ in range(3):
        wt, config = rule(wt, rng.standard_normal((N, D)).astype(dw_dtype), config)
        assert wt.dtype == np.float32
        for key in STATE_KEYS[rule.__name__]:
            assert config[key].dtype == np.float32, key


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.__name__)
def test_float32_with_numpy_scalar_hyperparameters(rule):
    """np.float64 hyperparameters must not upcast float32 weights either."""
    wt = np.ones((2, 3), dtype=np.float32)
    next_w, config = rule(wt, wt, {"learning_rate": np.float64(0.01)})
    assert next_w.dtype == np.float32


@pytest.mark.parametrize("rule, key", [(sgd_momentum, "velocity"), (rmsprop, "cache"), (adam, "m")])
def test_float32_with_float64_state(rule, key):
    """A float64 state array supplied by the caller does not turn float32 weights into float64."""
    wt = np.ones((2, 3), dtype=np.float32)
    next_w, _ = rule(wt, wt, {key: np.full((2, 3), 0.5)})
    assert next_w.dtype == np.float32


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.__name__)
def test_float64_stays_float64(rule, w, dw):
    next_w, _ = rule(w, dw)
    assert next_w.dtype == np.float64 and next_w.shape == w.shape


def test_float32_update_matches_float64_update(w, dw):
    a, _ = adam(w.astype(np.float32), dw.astype(np.float32), {"learning_rate": 1e-2})
    b, _ = adam(w, dw, {"learning_rate": 1e-2})
    np.testing.assert_allclose(a, b, rtol=1e-6)


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.__name__)
def test_shape_mismatch_names_both_shapes(rule):
    with pytest.raises(ValueError, match=r"\(5, 4\).*\(4, 5\)"):
        rule(np.zeros((4, 5)), np.zeros((5, 4)))


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.__name__)
def test_bad_shape_does_not_broadcast(rule):
    with pytest.raises(ValueError, match=r"\(5,\).*\(4, 5\)"):
        rule(np.zeros((4, 5)), np.zeros(5))


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.__name__)
@pytest.mark.parametrize("lr", [-0.1, float("nan")])
def test_negative_learning_rate(rule, lr):
    with pytest.raises(ValueError, match=rf"learning_rate.*{lr}"):
        rule(np.zeros(3), np.zeros(3), {"learning_rate": lr})


@pytest.mark.parametrize(
    "rule, key, value",
    [
        (sgd_momentum, "momentum", 1.0),
        (sgd_momentum, "momentum", -0.5),
        (rmsprop, "decay_rate", 1.5),
        (rmsprop, "decay_rate", -0.01),
        (adam, "beta1", 1.0),
        (adam, "beta1", -0.1),
        (adam, "beta2", 1.0),
        (adam, "beta2", 2.0),
    ],
)
def test_decay_rates_outside_unit_interval(rule, key, value):
    with pytest.raises(ValueError, match=rf"{key}.*\[0, 1\).*{value}"):
        rule(np.zeros(3), np.zeros(3), {key: value})


@pytest.mark.parametrize("rule, key", [(sgd_momentum, "momentum"), (rmsprop, "decay_rate"),
                                       (adam, "beta1"), (adam, "beta2")])
def test_zero_decay_rate_is_allowed(rule, key):
    next_w, _ = rule(np.zeros(3), np.ones(3), {key: 0.0})
    assert np.all(np.isfinite(next_w))


@pytest.mark.parametrize("rule", [rmsprop, adam], ids=lambda r: r.__name__)
def test_nonpositive_epsilon(rule):
    with pytest.raises(ValueError, match=r"epsilon.*0"):
        rule(np.zeros(3), np.zeros(3), {"epsilon": 0.0})


@pytest.mark.parametrize(
    "rule, key", [(sgd_momentum, "velocity"), (rmsprop, "cache"), (adam, "m"), (adam, "v")]
)
def test_state_of_wrong_shape(rule, key):
    with pytest.raises(ValueError, match=rf"{key}.*\(2, 3\).*\(3, 2\)"):
        rule(np.zeros((3, 2)), np.zeros((3, 2)), {key: np.zeros((2, 3))})


@pytest.mark.parametrize("t", [-1, 1.5])
def test_adam_bad_step_counter(t):
    with pytest.raises(ValueError, match=rf"t.*{t}"):
        adam(np.zeros(3), np.zeros(3), {"t": t})


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.__name__)
def test_integer_weights_are_rejected(rule):
    with pytest.raises(ValueError, match="floating-point"):
        rule(np.zeros(3, dtype=int), np.zeros(3))


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.__name__)
def test_failed_call_leaves_state_alone(rule):
    """A rejected gradient does not advance the optimizer."""
    wt = np.ones(3)
    _, config = rule(wt, np.ones(3))
    snapshot = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in config.items()}
    with pytest.raises(ValueError):
        rule(wt, np.ones(4), config)
    assert set(config) == set(snapshot)
    for key, value in snapshot.items():
        assert np.array_equal(config[key], value), key


@pytest.mark.parametrize(
    "rule, keys",
    [
        (sgd, ["learning_rate"]),
        (sgd_momentum, ["learning_rate", "momentum", "velocity"]),
        (rmsprop, ["learning_rate", "decay_rate", "epsilon", "cache"]),
        (adam, ["learning_rate", "beta1", "beta2", "epsilon", "m", "v", "t"]),
    ],
)
def test_defaults_are_stored_hyperparameters_first_then_state(rule, keys):
    """_setup fills config in the order each rule lists its defaults, then the state."""
    _, config = rule(np.zeros(3), np.ones(3))
    assert list(config) == keys
