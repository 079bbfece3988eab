"""Unit tests of dropout_forward and dropout_backward in cnnbook.layers (defined in book/dropout.md)."""
import numpy as np
import pytest

from cnnbook.gradient_check import eval_numerical_gradient_array, rel_error
from cnnbook.layers import dropout_backward, dropout_forward


@pytest.mark.parametrize("p", [0.1, 0.25, 0.5, 0.9])
def test_train_mode_statistics(p):
    x = np.random.default_rng(0).standard_normal((400, 500)) + 10  # never 0
    out, (_, mask) = dropout_forward(x, {"mode": "train", "p": p, "seed": 1})
    n = x.size
    # zeros: standard deviation sqrt(p (1 - p) / n) <= 0.001; mean: <= sqrt(101 * 9 / n) = 0.07
    assert abs(np.mean(out == 0) - (1 - p)) < 0.005
    assert abs(out.mean() - x.mean()) < 0.4
    # the noise out - x has variance x^2 (1 - p) / p; the ratio below estimates (1 - p) / p with a
    # standard deviation of at most sqrt(576 / n) = 0.054 (p = 0.1, where (mask - 1)^2 is 81 or 1)
    noise = np.mean((out - x) ** 2) / np.mean(x**2)
    assert abs(noise - (1 - p) / p) < 0.3
    kept = out != 0
    assert np.allclose(out[kept], x[kept] / p, rtol=1e-15, atol=0)
    assert set(np.unique(mask)) == {0.0, 1.0 / p}
    assert out.shape == x.shape and n == 200_000


def test_keep_all_is_identity_in_train_mode():
    x = np.random.default_rng(1).standard_normal((5, 6))
    out, (_, mask) = dropout_forward(x, {"mode": "train", "p": 1.0, "seed": 0})
    assert np.array_equal(out, x) and np.all(mask == 1)


def test_test_mode_is_identity():
    x = np.random.default_rng(2).standard_normal((3, 4, 5))
    for p in (0.3, 1):
        out, cache = dropout_forward(x, {"mode": "test", "p": p})
        assert np.array_equal(out, x)
        dout = np.random.default_rng(3).standard_normal(x.shape)
        assert np.array_equal(dropout_backward(dout, cache), dout)
        assert cache[1] is None


def test_seed_reproducible():
    x = np.random.default_rng(4).standard_normal((6, 7))
    param = {"mode": "train", "p": 0.5, "seed": 42}
    out1, (_, mask1) = dropout_forward(x, param)
    out2, (_, mask2) = dropout_forward(x, param)
    assert np.array_equal(out1, out2) and np.array_equal(mask1, mask2)
    _, (_, mask3) = dropout_forward(x, {"mode": "train", "p": 0.5, "seed": 43})
    assert not np.array_equal(mask1, mask3)
    # the seed fixes the mask without touching NumPy's global generator
    np.random.seed(0)
    expected = np.random.random_sample(3)
    np.random.seed(0)
    dropout_forward(x, param)
    assert np.array_equal(np.random.random_sample(3), expected)


def test_unseeded_uses_global_generator():
    x = np.ones((8, 9))
    param = {"mode": "train", "p": 0.5}
    np.random.seed(7)
    first = [dropout_forward(x, param)[0] for _ in range(2)]
    np.random.seed(7)
    again = [dropout_forward(x, param)[0] for _ in range(2)]
    assert not np.array_equal(first[0], first[1])
    assert all(np.array_equal(a, b) for a, b in zip(first, again))


def test_backward_is_dout_times_mask():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((4, 5))
    dout = rng.standard_normal((4, 5))
    _, cache = dropout_forward(x, {"mode": "train", "p": 0.4, "seed": 9})
    dx = dropout_backward(dout, cache)
    mask = cache[1]
    assert np.array_equal(dx, dout * mask)
    assert np.all(dx[mask == 0] == 0)


def test_gradient_check():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((10, 10)) + 10
    dout = rng.standard_normal((10, 10))
    param = {"mode": "train", "p": 0.2, "seed": 123}
    dx = dropout_backward(dout, dropout_forward(x, param)[1])
    dx_num = eval_numerical_gradient_array(lambda x: dropout_forward(x, param)[0], x, dout)
    assert rel_error(dx, dx_num) < 1e-9


def test_cache_keeps_the_mode_of_its_forward_pass():
    x = np.ones((2, 3))
    param = {"mode": "train", "p": 0.5, "seed": 0}
    _, cache = dropout_forward(x, param)
    param["mode"] = "test"  # the caller's dict changes after the forward pass
    dx = dropout_backward(np.ones((2, 3)), cache)
    assert np.array_equal(dx, cache[1])


@pytest.mark.parametrize("p", [0.25, 0.7])
def test_dtype_preserved_float32(p):
    x64 = np.random.default_rng(8).standard_normal((20, 30))
    x32 = x64.astype(np.float32)
    param = {"mode": "train", "p": p, "seed": 3}
    out32, (_, mask32) = dropout_forward(x32, param)
    out64, (_, mask64) = dropout_forward(x64, param)
    assert out32.dtype == np.float32 and mask32.dtype == np.float32
    assert np.array_equal(mask32 > 0, mask64 > 0)  # same mask whatever the dtype
    assert np.allclose(out32, out64, rtol=1e-6, atol=1e-6)
    dx = dropout_backward(np.ones_like(x32), (param, mask32))
    assert dx.dtype == np.float32
    out_test, _ = dropout_forward(x32, {"mode": "test", "p": p})
    assert out_test.dtype == np.float32


def test_integer_input_becomes_float():
    out, _ = dropout_forward(np.arange(12).reshape(3, 4), {"mode": "train", "p": 0.5, "seed": 0})
    assert np.issubdtype(out.dtype, np.floating)


@pytest.mark.parametrize("p", [0, -0.5, 1.5, float("nan"), True, "0.5", None])
def test_bad_p(p):
    with pytest.raises(ValueError, match=r"dropout_forward: dropout_param\['p'\].*\(0, 1\]"):
        dropout_forward(np.ones(3), {"mode": "train", "p": p})


def test_missing_p():
    with pytest.raises(ValueError, match=r"dropout_param\['p'\].*missing"):
        dropout_forward(np.ones(3), {"mode": "test"})


@pytest.mark.parametrize("mode", ["eval", "Train", None])
def test_bad_mode(mode):
    with pytest.raises(ValueError, match=r"dropout_param\['mode'\] must be 'train' or 'test'; got"):
        dropout_forward(np.ones(3), {"mode": mode, "p": 0.5})


def test_missing_mode():
    with pytest.raises(ValueError, match=r"dropout_param\['mode'\].*missing"):
        dropout_forward(np.ones(3), {"p": 0.5})


def test_param_not_a_dict():
    with pytest.raises(ValueError, match="dropout_param must be a dict"):
        dropout_forward(np.ones(3), 0.5)


def test_backward_shape_mismatch():
    _, cache = dropout_forward(np.ones((3, 4)), {"mode": "train", "p": 0.5, "seed": 0})
    with pytest.raises(ValueError, match=r"dropout_backward: dout has shape \(4, 3\).*\(3, 4\)"):
        dropout_backward(np.ones((4, 3)), cache)
