"""Unit tests of the normalization layers of cnnbook.layers (defined in book/normalization.md)."""
import numpy as np
import pytest

from cnnbook.gradient_check import eval_numerical_gradient_array, rel_error
from cnnbook.layers import (
    batchnorm_backward,
    batchnorm_backward_alt,
    batchnorm_forward,
    layernorm_backward,
    layernorm_forward,
    spatial_batchnorm_backward,
    spatial_batchnorm_forward,
    spatial_groupnorm_backward,
    spatial_groupnorm_forward,
    standardize,
    standardize_backward,
)


def _numerical_grads(forward, args, dout):
    """Numerical gradients of sum(forward(*args) * dout) with respect to each array in args."""
    grads = []
    for i in range(len(args)):
        def f(v, i=i):
            return forward(*args[:i], v, *args[i + 1:])
        grads.append(eval_numerical_gradient_array(f, args[i], dout))
    return grads


def _assert_grads_close(analytic, numerical, tol=1e-7):
    for a, n in zip(analytic, numerical):
        assert a.shape == n.shape
        assert rel_error(a, n) < tol


# ---------------------------------------------------------------- batchnorm forward


def test_batchnorm_train_output_statistics():
    rng = np.random.default_rng(0)
    x = 7.0 + rng.standard_normal((500, 3)) * np.array([1.0, 10.0, 100.0])
    gamma, beta = np.array([1.0, 2.0, 0.5]), np.array([0.0, -3.0, 4.0])
    out, _ = batchnorm_forward(x, gamma, beta, {"mode": "train"})
    assert np.allclose(out.mean(axis=0), beta, atol=1e-10)
    assert np.allclose(out.std(axis=0), gamma, rtol=1e-5)


def test_batchnorm_running_average_update_formula():
    rng = np.random.default_rng(1)
    x1, x2 = rng.standard_normal((6, 4)) + 3, 2 * rng.standard_normal((6, 4)) - 1
    bn_param = {"mode": "train", "momentum": 0.7}
    batchnorm_forward(x1, np.ones(4), np.zeros(4), bn_param)
    assert np.allclose(bn_param["running_mean"], 0.3 * x1.mean(axis=0))
    assert np.allclose(bn_param["running_var"], 0.3 * x1.var(axis=0))  # biased variance
    batchnorm_forward(x2, np.ones(4), np.zeros(4), bn_param)
    assert np.allclose(bn_param["running_mean"], 0.7 * 0.3 * x1.mean(axis=0) + 0.3 * x2.mean(axis=0))
    assert np.allclose(bn_param["running_var"], 0.7 * 0.3 * x1.var(axis=0) + 0.3 * x2.var(axis=0))


def test_batchnorm_momentum_extremes():
    x = np.arange(12.0).reshape(4, 3)
    keep = {"mode": "train", "momentum": 1.0, "running_mean": np.full(3, 5.0), "running_var": np.full(3, 2.0)}
    batchnorm_forward(x, np.ones(3), np.zeros(3), keep)
    assert np.array_equal(keep["running_mean"], np.full(3, 5.0)) and np.array_equal(keep["running_var"], np.full(3, 2.0))
    last = {"mode": "train", "momentum": 0.0, "running_mean": np.full(3, 5.0)}
    batchnorm_forward(x, np.ones(3), np.zeros(3), last)
    assert np.allclose(last["running_mean"], x.mean(axis=0)) and np.allclose(last["running_var"], x.var(axis=0))


def test_batchnorm_test_mode_uses_running_averages_and_leaves_them():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((5, 3))
    mean, var = np.array([1.0, -2.0, 0.5]), np.array([4.0, 0.25, 1.0])
    gamma, beta = np.array([2.0, 1.0, -1.0]), np.array([0.0, 1.0, 3.0])
    bn_param = {"mode": "test", "running_mean": mean.copy(), "running_var": var.copy(), "eps": 1e-3}
    out, _ = batchnorm_forward(x, gamma, beta, bn_param)
    assert np.allclose(out, gamma * (x - mean) / np.sqrt(var + 1e-3) + beta)
    assert np.array_equal(bn_param["running_mean"], mean) and np.array_equal(bn_param["running_var"], var)
    # each example alone gets the same output: nothing depends on the batch
    assert np.allclose(np.vstack([batchnorm_forward(x[i:i + 1], gamma, beta, bn_param)[0] for i in range(5)]), out)


def test_batchnorm_test_mode_after_training_matches_population():
    rng = np.random.default_rng(3)
    mean, std = np.array([10.0, -4.0]), np.array([3.0, 0.5])
    bn_param = {"mode": "train"}
    for _ in range(200):
        batchnorm_forward(mean + std * rng.standard_normal((64, 2)), np.ones(2), np.zeros(2), bn_param)
    bn_param["mode"] = "test"
    out, _ = batchnorm_forward(mean + std * rng.standard_normal((5000, 2)), np.ones(2), np.zeros(2), bn_param)
    assert np.allclose(out.mean(axis=0), 0, atol=0.15) and np.allclose(out.std(axis=0), 1, atol=0.1)


def test_batchnorm_creates_running_stats_of_x_dtype():
    bn_param = {"mode": "train"}
    batchnorm_forward(np.ones((3, 2), dtype=np.float32), np.ones(2), np.zeros(2), bn_param)
    assert bn_param["running_mean"].shape == (2,) and bn_param["running_mean"].dtype == np.float32


# ---------------------------------------------------------------- batchnorm backward


@pytest.mark.parametrize("mode", ["train", "test"])
@pytest.mark.parametrize("backward", [batchnorm_backward, batchnorm_backward_alt])
def test_batchnorm_gradient_check(backward, mode):
    rng = np.random.default_rng(4)
    N, D = 4, 3
    x = 4 * rng.standard_normal((N, D)) + 2
    gamma, beta, dout = rng.standard_normal(D), rng.standard_normal(D), rng.standard_normal((N, D))
    stats = {"running_mean": rng.standard_normal(D), "running_var": rng.uniform(1, 5, D)}

    def forward(x, gamma, beta):
        return batchnorm_forward(x, gamma, beta, {"mode": mode, **stats})[0]

    _, cache = batchnorm_forward(x, gamma, beta, {"mode": mode, **stats})
    _assert_grads_close(backward(dout, cache), _numerical_grads(forward, [x, gamma, beta], dout))


def test_batchnorm_backward_and_alt_agree():
    rng = np.random.default_rng(5)
    x = 3 * rng.standard_normal((50, 20)) + 1
    gamma, beta, dout = rng.standard_normal(20), rng.standard_normal(20), rng.standard_normal((50, 20))
    _, cache = batchnorm_forward(x, gamma, beta, {"mode": "train"})
    for a, b in zip(batchnorm_backward(dout, cache), batchnorm_backward_alt(dout, cache)):
        assert rel_error(a, b) < 1e-10
    dx = batchnorm_backward_alt(dout, cache)[0]
    assert np.allclose(dx.sum(axis=0), 0, atol=1e-12)  # a constant shift of x changes nothing


@pytest.mark.parametrize("eps", [1e-5, 1e-2])
def test_batchnorm_dx_is_orthogonal_to_xhat_up_to_eps(eps):
    # the chapter's derivation: sum_k dx_k xhat_k = eps s^3 sum_i dxhat_i xhat_i, per feature
    rng = np.random.default_rng(6)
    x = 0.5 * rng.standard_normal((30, 8)) + 2
    gamma, dout = rng.standard_normal(8), rng.standard_normal((30, 8))
    _, cache = batchnorm_forward(x, gamma, np.zeros(8), {"mode": "train", "eps": eps})
    dx = batchnorm_backward_alt(dout, cache)[0]
    xhat, s = cache["xhat"], cache["inv_std"]
    expected = eps * s ** 3 * (gamma * dout * xhat).sum(axis=0)
    assert np.allclose((dx * xhat).sum(axis=0), expected, rtol=1e-8, atol=1e-14)


def test_batchnorm_batch_of_two_closed_form():
    # with N = 2: xhat = ±(sigma s, -sigma s) and dx_1 = -dx_2 = s/2 (dxhat_1 - dxhat_2) eps s^2
    rng = np.random.default_rng(7)
    x, gamma, dout = rng.standard_normal((2, 6)), rng.standard_normal(6), rng.standard_normal((2, 6))
    _, cache = batchnorm_forward(x, gamma, np.zeros(6), {"mode": "train"})
    s, dxhat = cache["inv_std"], gamma * dout
    for backward in (batchnorm_backward, batchnorm_backward_alt):
        dx = backward(dout, cache)[0]
        assert np.allclose(dx[0], s / 2 * (dxhat[0] - dxhat[1]) * 1e-5 * s ** 2, rtol=1e-6, atol=1e-15)
        assert np.allclose(dx[1], -dx[0], rtol=1e-6, atol=1e-15)


def test_groupnorm_accepts_numpy_integer_groups_and_rejects_bool():
    x = np.random.default_rng(8).standard_normal((2, 4, 2, 2))
    ones, zeros = np.ones((1, 4, 1, 1)), np.zeros((1, 4, 1, 1))
    out_np, cache = spatial_groupnorm_forward(x, ones, zeros, np.int64(2), {})
    out_py, _ = spatial_groupnorm_forward(x, ones, zeros, 2, {})
    assert np.array_equal(out_np, out_py) and type(cache["G"]) is int
    with pytest.raises(ValueError, match=r"got G=True"):
        spatial_groupnorm_forward(x, ones, zeros, True, {})


def test_batchnorm_backward_rejects_wrong_dout_shape():
    _, cache = batchnorm_forward(np.ones((3, 2)), np.ones(2), np.zeros(2), {"mode": "train"})
    for backward in (batchnorm_backward, batchnorm_backward_alt):
        with pytest.raises(ValueError, match=r"dout has shape \(2, 3\).*\(3, 2\)"):
            backward(np.ones((2, 3)), cache)


# ---------------------------------------------------------------- spatial batchnorm


def test_spatial_batchnorm_equals_reshaped_batchnorm():
    rng = np.random.default_rng(6)
    N, C, H, W = 3, 4, 2, 5
    x = rng.standard_normal((N, C, H, W)) * rng.uniform(1, 5, (1, C, 1, 1)) + 2
    gamma, beta = rng.standard_normal(C), rng.standard_normal(C)
    p1, p2 = {"mode": "train"}, {"mode": "train"}
    out, _ = spatial_batchnorm_forward(x, gamma, beta, p1)
    flat, _ = batchnorm_forward(x.transpose(0, 2, 3, 1).reshape(-1, C), gamma, beta, p2)
    assert np.allclose(out, flat.reshape(N, H, W, C).transpose(0, 3, 1, 2))
    assert np.allclose(out.mean(axis=(0, 2, 3)), beta) and np.allclose(out.std(axis=(0, 2, 3)), np.abs(gamma), rtol=1e-4)
    assert np.allclose(p1["running_mean"], p2["running_mean"]) and p1["running_var"].shape == (C,)


def test_spatial_batchnorm_gradient_check():
    rng = np.random.default_rng(7)
    N, C, H, W = 2, 3, 2, 2
    x = 2 * rng.standard_normal((N, C, H, W)) + 1
    gamma, beta, dout = rng.standard_normal(C), rng.standard_normal(C), rng.standard_normal((N, C, H, W))

    def forward(x, gamma, beta):
        return spatial_batchnorm_forward(x, gamma, beta, {"mode": "train"})[0]

    _, cache = spatial_batchnorm_forward(x, gamma, beta, {"mode": "train"})
    _assert_grads_close(spatial_batchnorm_backward(dout, cache), _numerical_grads(forward, [x, gamma, beta], dout))


# ---------------------------------------------------------------- standardize


@pytest.mark.parametrize("shape, axis", [((5, 3), 0), ((3, 6), 1), ((2, 3, 4), 2), ((2, 3, 4), 1)])
def test_standardize_statistics_shapes_and_gradient(shape, axis):
    rng = np.random.default_rng(13)
    x = 3 * rng.standard_normal(shape) + 2
    xhat, inv_std = standardize(x, axis, 1e-5)
    kept = tuple(1 if i == axis else n for i, n in enumerate(shape))
    assert xhat.shape == shape and inv_std.shape == kept
    assert np.allclose(xhat.mean(axis=axis), 0) and np.allclose(xhat.std(axis=axis), 1, rtol=1e-4)
    assert np.allclose(inv_std, 1 / np.sqrt(x.var(axis=axis, keepdims=True) + 1e-5))
    dxhat = rng.standard_normal(shape)
    numerical = eval_numerical_gradient_array(lambda v: standardize(v, axis, 1e-5)[0], x, dxhat)
    assert rel_error(standardize_backward(dxhat, xhat, inv_std, axis), numerical) < 1e-7


def test_standardize_keeps_float32():
    x = np.random.default_rng(14).standard_normal((4, 5)).astype(np.float32)
    xhat, inv_std = standardize(x, 1, 1e-5)
    dx = standardize_backward(np.ones_like(xhat), xhat, inv_std, 1)
    assert xhat.dtype == inv_std.dtype == dx.dtype == np.float32


# ---------------------------------------------------------------- layernorm


def test_layernorm_forward_statistics_and_batch_independence():
    rng = np.random.default_rng(8)
    x = rng.standard_normal((5, 7)) * rng.uniform(1, 10, (5, 1)) + rng.uniform(-5, 5, (5, 1))
    gamma, beta = rng.standard_normal(7), rng.standard_normal(7)
    out, _ = layernorm_forward(x, np.ones(7), np.zeros(7), {"mode": "train"})  # the mode key is ignored
    assert np.allclose(out.mean(axis=1), 0) and np.allclose(out.std(axis=1), 1, rtol=1e-4)
    out, _ = layernorm_forward(x, gamma, beta, None)
    alone = np.vstack([layernorm_forward(x[i:i + 1], gamma, beta, {})[0] for i in range(5)])
    assert np.array_equal(out, alone)


def test_layernorm_gradient_check():
    rng = np.random.default_rng(9)
    N, D = 3, 5
    x = 3 * rng.standard_normal((N, D)) - 1
    gamma, beta, dout = rng.standard_normal(D), rng.standard_normal(D), rng.standard_normal((N, D))

    def forward(x, gamma, beta):
        return layernorm_forward(x, gamma, beta, {})[0]

    _, cache = layernorm_forward(x, gamma, beta, {})
    _assert_grads_close(layernorm_backward(dout, cache), _numerical_grads(forward, [x, gamma, beta], dout))


# ---------------------------------------------------------------- groupnorm


def test_groupnorm_forward_statistics_and_special_cases():
    rng = np.random.default_rng(10)
    N, C, H, W = 2, 6, 3, 2
    x = rng.standard_normal((N, C, H, W)) * 3 + rng.uniform(-4, 4, (1, C, 1, 1))
    ones, zeros = np.ones((1, C, 1, 1)), np.zeros((1, C, 1, 1))
    out, _ = spatial_groupnorm_forward(x, ones, zeros, 3, {})
    groups = out.reshape(N, 3, -1)
    assert np.allclose(groups.mean(axis=2), 0) and np.allclose(groups.std(axis=2), 1, rtol=1e-4)
    # G = 1 is layer norm over (C, H, W)
    g1, _ = spatial_groupnorm_forward(x, ones, zeros, 1, {})
    ln, _ = layernorm_forward(x.reshape(N, -1), np.ones(C * H * W), np.zeros(C * H * W), {})
    assert np.allclose(g1, ln.reshape(x.shape))
    # G = C is instance norm: each channel of each example on its own
    gc, _ = spatial_groupnorm_forward(x, ones, zeros, np.int64(C), {})
    mu, var = x.mean(axis=(2, 3), keepdims=True), x.var(axis=(2, 3), keepdims=True)
    assert np.allclose(gc, (x - mu) / np.sqrt(var + 1e-5))


def test_groupnorm_gradient_check():
    rng = np.random.default_rng(11)
    N, C, H, W, G = 2, 4, 2, 2, 2
    x = 2 * rng.standard_normal((N, C, H, W)) + 1
    gamma, beta = rng.standard_normal((1, C, 1, 1)), rng.standard_normal((1, C, 1, 1))
    dout = rng.standard_normal((N, C, H, W))

    def forward(x, gamma, beta):
        return spatial_groupnorm_forward(x, gamma, beta, G, {})[0]

    _, cache = spatial_groupnorm_forward(x, gamma, beta, G, {})
    _assert_grads_close(spatial_groupnorm_backward(dout, cache), _numerical_grads(forward, [x, gamma, beta], dout))


# ---------------------------------------------------------------- errors


X2, ONES4, ZEROS4 = np.zeros((3, 4)), np.ones(4), np.zeros(4)
X4 = np.zeros((2, 4, 3, 3))


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: batchnorm_forward(X2, ONES4, ZEROS4, {}), r"batchnorm_forward: bn_param has no 'mode'"),
        (lambda: batchnorm_forward(X2, ONES4, ZEROS4, {"mode": "eval"}), r"'train' or 'test', got 'eval'"),
        (lambda: batchnorm_forward(X2, ONES4, ZEROS4, {"mode": None}), r"'train' or 'test', got None"),
        (lambda: batchnorm_forward(X2, np.ones(5), ZEROS4, {"mode": "train"}), r"gamma must have shape \(4,\).*got shape \(5,\)"),
        (lambda: batchnorm_forward(X2, ONES4, np.zeros((1, 4)), {"mode": "train"}), r"beta must have shape \(4,\).*got shape \(1, 4\)"),
        (lambda: batchnorm_forward(np.zeros(4), ONES4, ZEROS4, {"mode": "train"}), r"x must have shape \(N, D\), got shape \(4,\)"),
        (lambda: batchnorm_forward(X4, ONES4, ZEROS4, {"mode": "train"}), r"x must have shape \(N, D\), got shape \(2, 4, 3, 3\)"),
        (lambda: batchnorm_forward(X2, ONES4, ZEROS4, {"mode": "train", "eps": 0}), r"bn_param\['eps'\] must be a positive number, got 0"),
        (lambda: batchnorm_forward(X2, ONES4, ZEROS4, {"mode": "train", "eps": -1e-5}), r"got -1e-05"),
        (lambda: batchnorm_forward(X2, ONES4, ZEROS4, {"mode": "train", "momentum": 1.5}), r"bn_param\['momentum'\] must lie in \[0, 1\], got 1.5"),
        (lambda: batchnorm_forward(X2, ONES4, ZEROS4, {"mode": "train", "momentum": -0.1}), r"got -0.1"),
        (lambda: batchnorm_forward(X2, ONES4, ZEROS4, {"mode": "test", "running_mean": np.zeros(3)}),
         r"bn_param\['running_mean'\] has shape \(3,\).*must have shape \(4,\)"),
        (lambda: batchnorm_forward(X2, ONES4, ZEROS4, {"mode": "train", "running_var": np.zeros((4, 1))}),
         r"bn_param\['running_var'\] has shape \(4, 1\)"),
        (lambda: batchnorm_forward(np.zeros((0, 4)), ONES4, ZEROS4, {"mode": "train"}), r"at least one example"),
        (lambda: spatial_batchnorm_forward(X2, ONES4, ZEROS4, {"mode": "train"}), r"spatial_batchnorm_forward: x must have shape \(N, C, H, W\)"),
        (lambda: spatial_batchnorm_forward(X4, np.ones(3), np.zeros(3), {"mode": "train"}), r"spatial_batchnorm_forward: gamma must have shape \(4,\)"),
        (lambda: spatial_batchnorm_forward(X4, ONES4, ZEROS4, {"mode": "train "}), r"spatial_batchnorm_forward: .*got 'train '"),
        (lambda: spatial_batchnorm_forward(X4, ONES4, ZEROS4, {"mode": "test", "running_var": np.ones(3)}),
         r"spatial_batchnorm_forward: bn_param\['running_var'\] has shape \(3,\)"),
        (lambda: layernorm_forward(X2, ONES4, ZEROS4, {"eps": 0}), r"layernorm_forward: ln_param\['eps'\] must be a positive number, got 0"),
        (lambda: layernorm_forward(X2, np.ones(3), ZEROS4, {}), r"layernorm_forward: gamma must have shape \(4,\)"),
        (lambda: layernorm_forward(X4, ONES4, ZEROS4, {}), r"layernorm_forward: x must have shape \(N, D\)"),
        (lambda: spatial_groupnorm_forward(X4, np.ones((1, 4, 1, 1)), np.zeros((1, 4, 1, 1)), 3, {}), r"dividing C=4, got G=3"),
        (lambda: spatial_groupnorm_forward(X4, np.ones((1, 4, 1, 1)), np.zeros((1, 4, 1, 1)), 0, {}), r"got G=0"),
        (lambda: spatial_groupnorm_forward(X4, np.ones((1, 4, 1, 1)), np.zeros((1, 4, 1, 1)), 2.0, {}), r"got G=2.0"),
        (lambda: spatial_groupnorm_forward(X4, ONES4, ZEROS4, 2, {}), r"gamma must have shape \(1, 4, 1, 1\).*got shape \(4,\)"),
        (lambda: spatial_groupnorm_forward(X2, ONES4, ZEROS4, 2, {}), r"spatial_groupnorm_forward: x must have shape \(N, C, H, W\)"),
        (lambda: spatial_groupnorm_forward(X4, np.ones((1, 4, 1, 1)), np.zeros((1, 4, 1, 1)), 2, {"eps": -1.0}), r"gn_param\['eps'\].*got -1.0"),
    ],
)
def test_bad_input_raises_value_error_naming_the_value(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_backward_rejects_wrong_dout_shape_for_every_layer():
    x4 = np.ones((2, 4, 3, 3))
    _, c_sbn = spatial_batchnorm_forward(x4, np.ones(4), np.zeros(4), {"mode": "train"})
    _, c_ln = layernorm_forward(np.ones((3, 4)), np.ones(4), np.zeros(4), {})
    _, c_gn = spatial_groupnorm_forward(x4, np.ones((1, 4, 1, 1)), np.zeros((1, 4, 1, 1)), 2, {})
    for backward, cache, name in [
        (spatial_batchnorm_backward, c_sbn, "spatial_batchnorm_backward"),
        (layernorm_backward, c_ln, "layernorm_backward"),
        (spatial_groupnorm_backward, c_gn, "spatial_groupnorm_backward"),
    ]:
        with pytest.raises(ValueError, match=rf"{name}: dout has shape \(1, 2\)"):
            backward(np.ones((1, 2)), cache)


# ---------------------------------------------------------------- dtypes


def test_float32_is_preserved_everywhere():
    rng = np.random.default_rng(12)
    f32 = np.float32
    x2 = rng.standard_normal((6, 4)).astype(f32)
    x4 = rng.standard_normal((2, 4, 3, 3)).astype(f32)
    g, b = np.ones(4, dtype=f32), np.zeros(4, dtype=f32)
    g4, b4 = np.ones((1, 4, 1, 1), dtype=f32), np.zeros((1, 4, 1, 1), dtype=f32)

    arrays = []
    for mode in ("train", "test"):
        bn_param = {"mode": mode}
        out, cache = batchnorm_forward(x2, g, b, bn_param)
        arrays += [out, bn_param["running_mean"], bn_param["running_var"]]
        arrays += [*batchnorm_backward(np.ones_like(out), cache), *batchnorm_backward_alt(np.ones_like(out), cache)]
        sbn_param = {"mode": mode}
        out, cache = spatial_batchnorm_forward(x4, g, b, sbn_param)
        arrays += [out, sbn_param["running_mean"], *spatial_batchnorm_backward(np.ones_like(out), cache)]
    out, cache = layernorm_forward(x2, g, b, {})
    arrays += [out, *layernorm_backward(np.ones_like(out), cache)]
    out, cache = spatial_groupnorm_forward(x4, g4, b4, 2, {})
    arrays += [out, *spatial_groupnorm_backward(np.ones_like(out), cache)]
    assert {a.dtype for a in arrays} == {np.dtype(f32)}


def test_integer_input_is_normalised_in_float64():
    out, _ = batchnorm_forward(np.array([[1, 2], [3, 6]]), np.ones(2), np.zeros(2), {"mode": "train"})
    assert out.dtype == np.float64 and np.allclose(np.abs(out), 1, rtol=1e-4)
