"""Unit tests of cnnbook.layers and cnnbook.layer_utils (defined in book/fc_layers.md)."""
import numpy as np
import pytest

from cnnbook.gradient_check import eval_numerical_gradient, eval_numerical_gradient_array, rel_error
from cnnbook.layer_utils import affine_relu_backward, affine_relu_forward
from cnnbook.layers import (
    affine_backward,
    affine_forward,
    relu_backward,
    relu_forward,
    softmax_loss,
    svm_loss,
)

# ------------------------------------------------------------------- affine

X = np.array([[1.0, 2.0], [3.0, 4.0]])
W = np.array([[1.0, 0.0, -1.0], [2.0, 1.0, 0.0]])
B = np.array([0.5, -1.0, 0.0])


def test_affine_forward_hand_computed():
    out, cache = affine_forward(X, W, B)
    assert np.array_equal(out, [[5.5, 1.0, -1.0], [11.5, 3.0, -3.0]])
    x, w, b = cache
    assert x is X and w is W and b is B


def test_affine_backward_hand_computed():
    _, cache = affine_forward(X, W, B)
    dout = np.array([[1.0, 0.0, 2.0], [0.0, 1.0, 0.0]])
    dx, dw, db = affine_backward(dout, cache)
    assert np.array_equal(dx, dout @ W.T)
    assert np.array_equal(dx, [[-1.0, 2.0], [0.0, 1.0]])
    assert np.array_equal(dw, [[1.0, 3.0, 2.0], [2.0, 4.0, 4.0]])
    assert np.array_equal(db, [1.0, 1.0, 2.0])


def test_affine_flattens_trailing_dimensions():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 2, 2, 2))
    w = rng.standard_normal((8, 4))
    b = rng.standard_normal(4)
    out, cache = affine_forward(x, w, b)
    assert out.shape == (3, 4)
    assert np.allclose(out, x.reshape(3, 8) @ w + b)
    dx, dw, db = affine_backward(np.ones((3, 4)), cache)
    assert dx.shape == x.shape and dw.shape == w.shape and db.shape == b.shape


def test_affine_gradient_check():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 2, 3))
    w = rng.standard_normal((6, 5))
    b = rng.standard_normal(5)
    dout = rng.standard_normal((4, 5))
    dx, dw, db = affine_backward(dout, affine_forward(x, w, b)[1])
    assert rel_error(dx, eval_numerical_gradient_array(lambda x: affine_forward(x, w, b)[0], x, dout)) < 1e-7
    assert rel_error(dw, eval_numerical_gradient_array(lambda w: affine_forward(x, w, b)[0], w, dout)) < 1e-7
    assert rel_error(db, eval_numerical_gradient_array(lambda b: affine_forward(x, w, b)[0], b, dout)) < 1e-7


def test_affine_forward_errors():
    with pytest.raises(
        ValueError,
        match=r"affine_forward: x of shape \(2, 4, 5\) flattens to D=20 features but w has shape \(12, 3\)",
    ):
        affine_forward(np.zeros((2, 4, 5)), np.zeros((12, 3)), np.zeros(3))
    with pytest.raises(ValueError, match=r"b must have shape \(3,\) to match w of shape \(2, 3\), got shape \(1, 3\)"):
        affine_forward(X, W, np.zeros((1, 3)))
    with pytest.raises(ValueError, match=r"w must have shape \(D, M\), got shape \(2,\)"):
        affine_forward(X, np.zeros(2), np.zeros(1))
    with pytest.raises(ValueError, match="batch dimension"):
        affine_forward(np.float64(1.0), W, B)


def test_affine_backward_dout_shape_error():
    _, cache = affine_forward(X, W, B)
    with pytest.raises(ValueError, match=r"dout has shape \(3, 2\) but the forward output had shape \(2, 3\)"):
        affine_backward(np.zeros((3, 2)), cache)


# --------------------------------------------------------------------- relu


def test_relu_hand_computed():
    x = np.array([[-1.0, 0.0, 2.0], [3.0, -0.5, 0.25]])
    out, cache = relu_forward(x)
    assert np.array_equal(out, [[0.0, 0.0, 2.0], [3.0, 0.0, 0.25]])
    dx = relu_backward(np.array([[5.0, 6.0, 7.0], [-1.0, -2.0, -3.0]]), cache)
    # the gradient passes only where x > 0 (0 at the kink x = 0)
    assert np.array_equal(dx, [[0.0, 0.0, 7.0], [-1.0, 0.0, -3.0]])
    assert np.array_equal(x, [[-1.0, 0.0, 2.0], [3.0, -0.5, 0.25]])  # input untouched


def test_relu_gradient_check():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((5, 6))
    dout = rng.standard_normal((5, 6))
    dx = relu_backward(dout, relu_forward(x)[1])
    assert rel_error(dx, eval_numerical_gradient_array(lambda x: relu_forward(x)[0], x, dout)) < 1e-7


def test_relu_backward_dout_shape_error():
    _, cache = relu_forward(np.zeros((4, 3)))
    with pytest.raises(ValueError, match=r"dout has shape \(3, 4\) but the forward input x had shape \(4, 3\)"):
        relu_backward(np.zeros((3, 4)), cache)


# --------------------------------------------------------------- affine_relu


def test_affine_relu_matches_composition_and_gradient_check():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 2, 2))
    w = rng.standard_normal((4, 5))
    b = rng.standard_normal(5)
    dout = rng.standard_normal((3, 5))
    out, cache = affine_relu_forward(x, w, b)
    assert np.array_equal(out, np.maximum(0, x.reshape(3, 4) @ w + b))
    dx, dw, db = affine_relu_backward(dout, cache)
    f = lambda x, w, b: affine_relu_forward(x, w, b)[0]  # noqa: E731
    assert rel_error(dx, eval_numerical_gradient_array(lambda x: f(x, w, b), x, dout)) < 1e-7
    assert rel_error(dw, eval_numerical_gradient_array(lambda w: f(x, w, b), w, dout)) < 1e-7
    assert rel_error(db, eval_numerical_gradient_array(lambda b: f(x, w, b), b, dout)) < 1e-7


def test_affine_relu_errors_propagate():
    with pytest.raises(ValueError, match=r"flattens to D=4 features but w has shape \(5, 2\)"):
        affine_relu_forward(np.zeros((2, 4)), np.zeros((5, 2)), np.zeros(2))
    _, cache = affine_relu_forward(np.zeros((2, 4)), np.zeros((4, 3)), np.zeros(3))
    with pytest.raises(ValueError, match=r"relu_backward: dout has shape \(2, 2\)"):
        affine_relu_backward(np.zeros((2, 2)), cache)


# -------------------------------------------------------------------- losses


def test_svm_loss_hand_computed():
    x = np.array([[1.0, 2.0, 3.0], [3.0, 1.0, 0.0]])
    y = np.array([0, 0])
    loss, dx = svm_loss(x, y)
    # row 0: margins (2 - 1 + 1) + (3 - 1 + 1) = 5; row 1: all satisfied -> 0; mean 2.5
    assert loss == pytest.approx(2.5)
    assert np.allclose(dx, [[-1.0, 0.5, 0.5], [0.0, 0.0, 0.0]])


def test_softmax_loss_hand_computed():
    loss, dx = softmax_loss(np.array([[0.0, 0.0]]), np.array([0]))
    assert loss == pytest.approx(np.log(2))
    assert np.allclose(dx, [[-0.5, 0.5]])
    # probabilities (1/4, 3/4), correct class 1
    loss, dx = softmax_loss(np.array([[0.0, np.log(3.0)]]), np.array([1]))
    assert loss == pytest.approx(-np.log(0.75))
    assert np.allclose(dx, [[0.25, -0.25]])


def test_losses_at_initialisation():
    rng = np.random.default_rng(4)
    N, C = 100, 10
    x = 1e-3 * rng.standard_normal((N, C))
    y = rng.integers(C, size=N)
    assert softmax_loss(x, y)[0] == pytest.approx(np.log(C), abs=1e-2)
    assert svm_loss(x, y)[0] == pytest.approx(C - 1, abs=1e-2)


@pytest.mark.parametrize("loss_fn", [svm_loss, softmax_loss])
def test_loss_gradient_check(loss_fn):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((6, 4))
    y = rng.integers(4, size=6)
    _, dx = loss_fn(x, y)
    dx_num = eval_numerical_gradient(lambda x: loss_fn(x, y)[0], x, verbose=False)
    assert rel_error(dx, dx_num) < 1e-7


@pytest.mark.parametrize("loss_fn", [svm_loss, softmax_loss])
def test_losses_are_shift_invariant(loss_fn):
    rng = np.random.default_rng(6)
    x = rng.standard_normal((5, 3))
    y = rng.integers(3, size=5)
    loss, dx = loss_fn(x, y)
    loss_shifted, dx_shifted = loss_fn(x + rng.standard_normal((5, 1)), y)
    assert loss_shifted == pytest.approx(loss)
    assert np.allclose(dx_shifted, dx)


def test_softmax_loss_is_numerically_stable():
    y = np.array([0])
    reference, dx_ref = softmax_loss(np.array([[0.0, -1.0, -2.0]]), y)
    for offset in [1000.0, -1000.0, 1e300]:
        loss, dx = softmax_loss(np.array([[0.0, -1.0, -2.0]]) + offset, y)
        assert np.isfinite(loss) and np.all(np.isfinite(dx))
        if abs(offset) < 1e10:
            assert loss == pytest.approx(reference) and np.allclose(dx, dx_ref)
    # the gradient of each row sums to zero
    rng = np.random.default_rng(7)
    _, dx = softmax_loss(50 * rng.standard_normal((4, 6)), rng.integers(6, size=4))
    assert np.allclose(dx.sum(axis=1), 0)


@pytest.mark.parametrize("loss_fn", [svm_loss, softmax_loss])
def test_loss_errors(loss_fn):
    name = loss_fn.__name__
    x = np.zeros((4, 5))
    with pytest.raises(ValueError, match=rf"{name}: y must have shape \(4,\), one label per row of x \(shape \(4, 5\)\), got shape \(3,\)"):
        loss_fn(x, np.zeros(3, dtype=int))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, C\) = \[0, 5\) for x of shape \(4, 5\), got labels from 0 to 5"):
        loss_fn(x, np.array([0, 1, 2, 5]))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, C\) = \[0, 5\).*got labels from -1 to 2"):
        loss_fn(x, np.array([0, -1, 2, 2]))
    with pytest.raises(ValueError, match=r"y must hold integer class labels, got dtype float64"):
        loss_fn(x, np.zeros(4))
    with pytest.raises(ValueError, match=r"x must hold class scores of shape \(N, C\), got shape \(5,\)"):
        loss_fn(np.zeros(5), np.zeros(5, dtype=int))
    with pytest.raises(ValueError, match=r"x of shape \(0, 5\) needs at least one example"):
        loss_fn(np.zeros((0, 5)), np.zeros(0, dtype=int))
