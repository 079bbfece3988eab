"""Unit tests of cnnbook.gradient_check (defined in book/gradient_checking.md)."""
import numpy as np
import pytest

from cnnbook.gradient_check import (
    eval_numerical_gradient,
    eval_numerical_gradient_array,
    grad_check_sparse,
    rel_error,
)


# ---------------------------------------------------------------- rel_error


def test_rel_error_hand_computed():
    assert rel_error(np.array([1.0, 2.0]), np.array([1.0, 2.0])) == 0.0
    # |1 - 3| / (1 + 3) = 0.5 is the largest of the two elements
    assert rel_error(np.array([1.0, 2.0]), np.array([3.0, 2.2])) == pytest.approx(0.5)
    assert rel_error(2.0, -2.0) == pytest.approx(1.0)


def test_rel_error_floor_avoids_division_by_zero():
    assert rel_error(np.zeros(3), np.zeros(3)) == 0.0
    # the denominator is floored at 1e-8
    assert rel_error(0.0, 1e-10) == pytest.approx(1e-2)


def test_rel_error_is_scale_invariant_and_returns_float():
    a = np.array([1.0, -2.0, 3.0])
    b = a * (1 + 1e-6)
    err = rel_error(a, b)
    assert isinstance(err, float)
    assert rel_error(1e6 * a, 1e6 * b) == pytest.approx(err)


def test_rel_error_empty_and_nan():
    assert rel_error(np.zeros((0, 3)), np.zeros((0, 3))) == 0.0
    assert np.isnan(rel_error(np.array([np.nan]), np.array([1.0])))


def test_rel_error_shape_mismatch():
    with pytest.raises(ValueError, match=r"x has shape \(3,\) but y has shape \(3, 1\)"):
        rel_error(np.zeros(3), np.zeros((3, 1)))


# ---------------------------------------------------- eval_numerical_gradient


def test_eval_numerical_gradient_quadratic():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 4))
    x_before = x.copy()
    grad = eval_numerical_gradient(lambda z: np.sum(z**2), x, verbose=False)
    assert grad.shape == x.shape and grad.dtype == x.dtype
    assert rel_error(grad, 2 * x) < 1e-8
    assert np.array_equal(x, x_before)  # restored exactly


def test_eval_numerical_gradient_centred_beats_one_sided():
    # f = sum(exp(x)): the centred difference error is O(h^2), far below h = 1e-5
    x = np.linspace(-1, 1, 7)
    grad = eval_numerical_gradient(lambda z: np.sum(np.exp(z)), x, verbose=False)
    assert rel_error(grad, np.exp(x)) < 1e-8


def test_eval_numerical_gradient_verbose_prints_every_element(capsys):
    x = np.array([1.0, 2.0, 3.0])
    eval_numerical_gradient(lambda z: np.sum(z**2), x, verbose=True)
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("(0,)")


def test_eval_numerical_gradient_restores_x_when_f_raises():
    x = np.array([1.0, 2.0])
    calls = []

    def f(z):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom")
        return np.sum(z)

    with pytest.raises(RuntimeError):
        eval_numerical_gradient(f, x, verbose=False)
    assert np.array_equal(x, [1.0, 2.0])


def test_eval_numerical_gradient_bad_inputs():
    with pytest.raises(ValueError, match="NumPy array"):
        eval_numerical_gradient(np.sum, [1.0, 2.0], verbose=False)
    with pytest.raises(ValueError, match=r"floating-point dtype, got int32 of shape \(2,\)"):
        eval_numerical_gradient(np.sum, np.array([1, 2], dtype=np.int32), verbose=False)
    with pytest.raises(ValueError, match="positive finite"):
        eval_numerical_gradient(np.sum, np.ones(2), verbose=False, h=0.0)
    with pytest.raises(ValueError, match=r"f must return a scalar.*shape \(2,\)"):
        eval_numerical_gradient(lambda z: 2 * z, np.ones(2), verbose=False)


# ---------------------------------------------- eval_numerical_gradient_array


def test_eval_numerical_gradient_array_matrix_product():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 3))
    a = rng.standard_normal((3, 5))
    df = rng.standard_normal((4, 5))
    x_before = x.copy()
    grad = eval_numerical_gradient_array(lambda z: z @ a, x, df)
    # d/dx sum((x @ a) * df) = df @ a.T
    assert rel_error(grad, df @ a.T) < 1e-8
    assert np.array_equal(x, x_before)


def test_eval_numerical_gradient_array_f_returning_a_view_of_x():
    # f returns x itself: the gradient of sum(x * df) is df (needs the copies inside)
    x = np.array([[1.0, -2.0], [0.5, 3.0]])
    df = np.array([[1.0, 2.0], [3.0, 4.0]])
    grad = eval_numerical_gradient_array(lambda z: z, x, df)
    assert rel_error(grad, df) < 1e-8


def test_eval_numerical_gradient_array_df_shape_mismatch():
    x = np.ones((2, 3))
    with pytest.raises(ValueError, match=r"f\(x\) has shape \(2, 3\) but df has shape \(3, 2\)"):
        eval_numerical_gradient_array(lambda z: 2 * z, x, np.ones((3, 2)))
    assert np.array_equal(x, np.ones((2, 3)))  # restored after the error


def test_eval_numerical_gradient_array_bad_x():
    with pytest.raises(ValueError, match="floating-point dtype"):
        eval_numerical_gradient_array(lambda z: z, np.arange(3), np.ones(3))


# ---------------------------------------------------------- grad_check_sparse


def test_grad_check_sparse_correct_and_wrong_gradients(capsys):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((5, 6))
    x_before = x.copy()

    def f(z):
        return np.sum(z**3)

    errs = grad_check_sparse(f, x, 3 * x**2, num_checks=7, seed=0)
    assert errs.shape == (7,)
    assert errs.max() < 1e-7
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 7 and all("numerical:" in line and "relative error:" in line for line in out)
    assert np.array_equal(x, x_before)

    errs_wrong = grad_check_sparse(f, x, 2 * x**2, num_checks=7, seed=0)
    assert np.allclose(errs_wrong, 0.2)  # |3 - 2| / (3 + 2)


def test_grad_check_sparse_seed_is_reproducible(capsys):
    x = np.random.default_rng(3).standard_normal(50)
    errs1 = grad_check_sparse(lambda z: np.sum(z**2), x, 2 * x, num_checks=4, seed=5)
    out1 = capsys.readouterr().out
    errs2 = grad_check_sparse(lambda z: np.sum(z**2), x, 2 * x, num_checks=4, seed=5)
    out2 = capsys.readouterr().out
    assert out1 == out2 and np.array_equal(errs1, errs2)


def test_grad_check_sparse_bad_inputs():
    x = np.ones((3, 4))
    with pytest.raises(ValueError, match=r"analytic_grad has shape \(4, 3\) but x has shape \(3, 4\)"):
        grad_check_sparse(np.sum, x, np.ones((4, 3)))
    with pytest.raises(ValueError, match="num_checks must be a positive integer"):
        grad_check_sparse(np.sum, x, np.ones((3, 4)), num_checks=0)
    with pytest.raises(ValueError, match=r"no elements"):
        grad_check_sparse(np.sum, np.ones((0, 2)), np.ones((0, 2)))
    with pytest.raises(ValueError, match="floating-point dtype"):
        grad_check_sparse(np.sum, np.ones(3, dtype=int), np.ones(3))
