"""Tests of the conv sandwich layers (cnnbook.layer_utils) and ThreeLayerConvNet
(cnnbook.classifiers), defined in book/convnet.md."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cnnbook.classifiers import ThreeLayerConvNet
from cnnbook.gradient_check import eval_numerical_gradient, eval_numerical_gradient_array, rel_error
from cnnbook.layer_utils import (
    conv_bn_relu_backward,
    conv_bn_relu_forward,
    conv_relu_backward,
    conv_relu_forward,
    conv_relu_pool_backward,
    conv_relu_pool_forward,
)
from cnnbook.layers import (
    conv_backward_naive,
    conv_forward_naive,
    max_pool_backward_naive,
    max_pool_forward_naive,
    relu_backward,
    relu_forward,
)
from cnnbook.solver import Solver

CONV = {"stride": 1, "pad": 1}
POOL = {"pool_height": 2, "pool_width": 2, "stride": 2}


def small_conv_inputs(seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((2, 3, 6, 6)), rng.standard_normal((4, 3, 3, 3)),
            rng.standard_normal(4), rng)


def numeric_grads(forward, args, dout):
    grads = []
    for i in range(len(args)):
        f = lambda v: forward(*args[:i], v, *args[i + 1:])[0]  # noqa: E731
        grads.append(eval_numerical_gradient_array(f, args[i], dout))
    return grads


# ------------------------------------------------------------------ sandwiches


@pytest.mark.parametrize("forward, backward", [
    (lambda x, w, b: conv_relu_forward(x, w, b, CONV), conv_relu_backward),
    (lambda x, w, b: conv_relu_pool_forward(x, w, b, CONV, POOL), conv_relu_pool_backward),
])
def test_conv_sandwich_gradients(forward, backward):
    x, w, b, rng = small_conv_inputs()
    out, cache = forward(x, w, b)
    dout = rng.standard_normal(out.shape)
    for grad, num in zip(backward(dout, cache), numeric_grads(forward, [x, w, b], dout)):
        assert rel_error(grad, num) < 1e-7


def test_conv_bn_relu_gradients():
    x, w, b, rng = small_conv_inputs(1)
    gamma, beta = rng.standard_normal(4), rng.standard_normal(4)
    bn_param = {"mode": "train"}

    def forward(x, w, b, gamma, beta):
        return conv_bn_relu_forward(x, w, b, gamma, beta, CONV, bn_param)

    out, cache = forward(x, w, b, gamma, beta)
    dout = rng.standard_normal(out.shape)
    grads = conv_bn_relu_backward(dout, cache)
    assert len(grads) == 5
    nums = numeric_grads(forward, [x, w, b, gamma, beta], dout)
    for name, grad, num in zip(["dx", "dw", "db", "dgamma", "dbeta"], grads, nums):
        if name == "db":  # batch normalization subtracts the mean: the bias has no effect
            assert np.abs(grad).max() < 1e-12 and np.abs(num).max() < 1e-9
        else:
            assert rel_error(grad, num) < 1e-5, name
    assert set(bn_param) >= {"running_mean", "running_var"}


def test_conv_relu_pool_equals_the_naive_layers():
    x, w, b, rng = small_conv_inputs(2)
    out, cache = conv_relu_pool_forward(x, w, b, CONV, POOL)
    a, conv_cache = conv_forward_naive(x, w, b, CONV)
    s, relu_cache = relu_forward(a)
    expected, pool_cache = max_pool_forward_naive(s, POOL)
    assert np.allclose(out, expected)
    dout = rng.standard_normal(out.shape)
    dx, dw, db = conv_relu_pool_backward(dout, cache)
    ex, ew, eb = conv_backward_naive(relu_backward(max_pool_backward_naive(dout, pool_cache),
                                                   relu_cache), conv_cache)
    assert np.allclose(dx, ex) and np.allclose(dw, ew) and np.allclose(db, eb)


def test_sandwich_reports_a_pool_that_does_not_fit():
    x, w, b, _ = small_conv_inputs()
    with pytest.raises(ValueError, match="max_pool_forward_fast"):
        conv_relu_pool_forward(x[:, :, :5, :5], w, b, CONV, POOL)


# ------------------------------------------------------------------ ThreeLayerConvNet


def test_default_parameters_follow_cs231n():
    model = ThreeLayerConvNet(seed=0)
    shapes = {k: v.shape for k, v in model.params.items()}
    assert shapes == {"W1": (32, 3, 7, 7), "b1": (32,), "W2": (32 * 16 * 16, 100), "b2": (100,),
                      "W3": (100, 10), "b3": (10,)}
    assert all(v.dtype == np.float32 for v in model.params.values())
    assert model.conv_param == {"stride": 1, "pad": 3}
    assert model.pool_param == POOL
    assert 0.9e-3 < model.params["W2"].std() < 1.1e-3 and not model.params["b2"].any()


def test_seed_makes_the_initial_weights_reproducible():
    a, b, c = (ThreeLayerConvNet(num_filters=4, hidden_dim=8, seed=s) for s in (1, 1, 2))
    assert all(np.array_equal(a.params[k], b.params[k]) for k in a.params)
    assert not np.array_equal(a.params["W1"], c.params["W1"])


def test_loss_contract_and_initial_loss():
    model = ThreeLayerConvNet(input_dim=(3, 8, 8), num_filters=4, filter_size=3, hidden_dim=10,
                              seed=0)
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((6, 3, 8, 8)), rng.integers(10, size=6)
    scores = model.loss(X)
    assert scores.shape == (6, 10) and scores.dtype == np.float32
    loss, grads = model.loss(X, y)
    assert abs(loss - math.log(10)) < 0.01
    assert set(grads) == set(model.params)
    assert all(grads[k].shape == model.params[k].shape and grads[k].dtype == np.float32
               for k in grads)


def test_regularization_adds_reg_times_w():
    rng = np.random.default_rng(1)
    X, y = rng.standard_normal((3, 2, 4, 4)), rng.integers(5, size=3)
    kwargs = dict(input_dim=(2, 4, 4), num_filters=2, filter_size=3, hidden_dim=4, num_classes=5,
                  weight_scale=0.1, dtype=np.float64, seed=3)
    plain, regularized = ThreeLayerConvNet(**kwargs), ThreeLayerConvNet(reg=0.7, **kwargs)
    loss0, grads0 = plain.loss(X, y)
    loss1, grads1 = regularized.loss(X, y)
    W = plain.params
    assert np.isclose(loss1 - loss0, 0.35 * sum(np.sum(W[k] ** 2) for k in ("W1", "W2", "W3")))
    for k in grads0:
        extra = 0.7 * W[k] if k.startswith("W") else 0
        assert np.allclose(grads1[k], grads0[k] + extra)


@pytest.mark.parametrize("reg", [0.0, 0.3])
def test_gradient_check(reg):
    rng = np.random.default_rng(4)
    X, y = rng.standard_normal((2, 3, 8, 8)), rng.integers(4, size=2)
    model = ThreeLayerConvNet(input_dim=(3, 8, 8), num_filters=2, filter_size=3, hidden_dim=5,
                              num_classes=4, weight_scale=0.1, reg=reg, dtype=np.float64, seed=4)
    _, grads = model.loss(X, y)
    for name, grad in grads.items():
        num = eval_numerical_gradient(lambda _: model.loss(X, y)[0], model.params[name],
                                      verbose=False)
        assert rel_error(grad, num) < 1e-6, name


def test_solver_overfits_a_tiny_dataset():
    rng = np.random.default_rng(5)
    data = {"X_train": rng.standard_normal((20, 3, 8, 8)), "y_train": rng.integers(3, size=20)}
    data.update(X_val=data["X_train"][:5], y_val=data["y_train"][:5])
    model = ThreeLayerConvNet(input_dim=(3, 8, 8), num_filters=4, filter_size=3, hidden_dim=20,
                              num_classes=3, weight_scale=0.1, seed=5)
    solver = Solver(model, data, update_rule="adam", optim_config={"learning_rate": 1e-2},
                    num_epochs=30, batch_size=10, seed=5, verbose=False, progress=False)
    solver.train()
    assert max(solver.train_acc_history) == 1.0


@settings(max_examples=60, deadline=None)
@given(C=st.integers(1, 3), H=st.integers(1, 4), W=st.integers(1, 4), K=st.integers(1, 4),
       F=st.sampled_from([1, 3, 5]), hidden=st.integers(1, 6), classes=st.integers(1, 5),
       N=st.integers(1, 3))
def test_shapes_for_any_valid_arguments(C, H, W, K, F, hidden, classes, N):
    H, W = 2 * H, 2 * W
    model = ThreeLayerConvNet(input_dim=(C, H, W), num_filters=K, filter_size=F, hidden_dim=hidden,
                              num_classes=classes, dtype=np.float64, seed=0)
    assert model.params["W1"].shape == (K, C, F, F)
    assert model.params["W2"].shape == (K * (H // 2) * (W // 2), hidden)
    assert model.params["W3"].shape == (hidden, classes)
    X = np.random.default_rng(0).standard_normal((N, C, H, W))
    assert model.loss(X).shape == (N, classes)
    loss, grads = model.loss(X, np.zeros(N, dtype=int))
    assert np.isfinite(loss) and all(grads[k].shape == model.params[k].shape for k in grads)


@settings(max_examples=60, deadline=None)
@given(H=st.integers(1, 9), W=st.integers(1, 9), F=st.integers(1, 6))
def test_odd_sizes_and_even_filters_are_refused(H, W, F):
    if H % 2 == 0 and W % 2 == 0 and F % 2 == 1:
        ThreeLayerConvNet(input_dim=(1, H, W), num_filters=1, filter_size=F, hidden_dim=1)
    else:
        with pytest.raises(ValueError, match="ThreeLayerConvNet"):
            ThreeLayerConvNet(input_dim=(1, H, W), num_filters=1, filter_size=F, hidden_dim=1)


@pytest.mark.parametrize("kwargs, message", [
    ({"filter_size": 4}, r"filter_size must be odd.*got F=4"),
    ({"input_dim": (3, 31, 32)}, r"even height and width, got input_dim=\(3, 31, 32\)"),
    ({"input_dim": (32, 32)}, r"input_dim must be \(C, H, W\), got \(32, 32\)"),
    ({"input_dim": 32}, r"input_dim must be \(C, H, W\), got 32"),
    ({"num_filters": 0}, "num_filters must be a positive integer, got 0"),
    ({"hidden_dim": 2.5}, "hidden_dim must be a positive integer, got 2.5"),
    ({"num_classes": True}, "num_classes must be a positive integer, got True"),
    ({"dtype": np.int32}, "dtype must be a floating-point type, got int32"),
])
def test_constructor_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ThreeLayerConvNet(**kwargs)


def test_loss_input_errors():
    model = ThreeLayerConvNet(input_dim=(3, 8, 8), num_filters=2, filter_size=3, hidden_dim=4)
    with pytest.raises(ValueError, match=r"X must have shape \(N, 3, 8, 8\), got shape \(2, 8, 8"):
        model.loss(np.zeros((2, 8, 8, 3)))
    with pytest.raises(ValueError, match=r"X must have shape \(N, 3, 8, 8\), got shape \(2, 192\)"):
        model.loss(np.zeros((2, 192)))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, num_classes\)"):
        model.loss(np.zeros((2, 3, 8, 8)), np.array([0, 10]))
    with pytest.raises(ValueError, match=r"y must have shape \(2,\)"):
        model.loss(np.zeros((2, 3, 8, 8)), np.array([0, 1, 2]))
