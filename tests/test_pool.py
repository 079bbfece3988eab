"""Tests of the pooling layers of cnnbook.layers and cnnbook.fast_layers (book/pooling.md)."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cnnbook.fast_layers import (
    avg_pool_backward_fast,
    avg_pool_forward_fast,
    col2im,
    im2col,
    max_pool_backward_fast,
    max_pool_forward_fast,
)
from cnnbook.gradient_check import eval_numerical_gradient_array, rel_error
from cnnbook.layers import (
    avg_pool_backward_naive,
    avg_pool_forward_naive,
    max_pool_backward_naive,
    max_pool_forward_naive,
)

FORWARDS = (max_pool_forward_naive, max_pool_forward_fast, avg_pool_forward_naive,
            avg_pool_forward_fast)
PAIRS = ((max_pool_forward_naive, max_pool_backward_naive),
         (max_pool_forward_fast, max_pool_backward_fast),
         (avg_pool_forward_naive, avg_pool_backward_naive),
         (avg_pool_forward_fast, avg_pool_backward_fast))
POOL_2X2 = {"pool_height": 2, "pool_width": 2, "stride": 2}


def param(PH, PW, S):
    return {"pool_height": PH, "pool_width": PW, "stride": S}


@st.composite
def pool_cases(draw):
    """(x, pool_param) with windows that fit x: H = PH + S * (H_out - 1), likewise W. The values
    of x are random integers from -2 to 2 (windows full of ties) or random normal numbers."""
    PH, PW, S = draw(st.integers(1, 4)), draw(st.integers(1, 4)), draw(st.integers(1, 4))
    H_out, W_out = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    N, C = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    shape = (N, C, PH + S * (H_out - 1), PW + S * (W_out - 1))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    ties = draw(st.booleans())
    x = rng.integers(-2, 3, size=shape) if ties else rng.standard_normal(shape)
    return x.astype(dtype), param(PH, PW, S)


# ------------------------------------------------------------------ examples


def test_max_pool_hand_computed():
    x = np.array([[1, 1, 2, 4], [5, 6, 7, 8], [3, 2, 1, 0], [1, 2, 3, 4]], float)[None, None]
    for forward, backward in PAIRS[:2]:
        out, cache = forward(x, POOL_2X2)
        assert np.array_equal(out[0, 0], [[6, 8], [3, 4]])
        dx = backward(np.array([[1.0, 2.0], [3.0, 4.0]]).reshape(1, 1, 2, 2), cache)
        expected = np.zeros((4, 4))
        expected[1, 1], expected[1, 3], expected[2, 0], expected[3, 3] = 1, 2, 3, 4
        assert np.array_equal(dx[0, 0], expected)


def test_avg_pool_hand_computed():
    x = np.arange(16.0).reshape(1, 1, 4, 4)
    for forward, backward in PAIRS[2:]:
        out, cache = forward(x, POOL_2X2)
        assert np.array_equal(out[0, 0], [[2.5, 4.5], [10.5, 12.5]])
        dx = backward(np.full((1, 1, 2, 2), 4.0), cache)
        assert np.array_equal(dx, np.ones((1, 1, 4, 4)))


@pytest.mark.parametrize("forward, backward", PAIRS[:2])
def test_ties_go_to_the_first_maximum_in_row_major_order(forward, backward):
    x = np.array([[0, 0, 1, 2, 7, 3],
                  [0, 0, 5, 5, 7, 7]], float).reshape(1, 1, 2, 6)
    _, cache = forward(x, POOL_2X2)
    dx = backward(np.array([[[[1.0, 2.0, 3.0]]]]), cache)
    assert np.array_equal(dx[0, 0], [[1, 0, 0, 0, 3, 0], [0, 0, 2, 0, 0, 0]])
    # overlapping windows: the shared maximum collects both gradients
    x = np.array([[0.0, 1.0, 1.0, 1.0, 0.0]]).reshape(1, 1, 1, 5)
    _, cache = forward(x, param(1, 3, 2))
    dx = backward(np.array([[[[1.0, 10.0]]]]), cache)
    assert np.array_equal(dx[0, 0, 0], [0, 1, 10, 0, 0])


@pytest.mark.parametrize("forward, backward", PAIRS)
@pytest.mark.parametrize("shape, pool", [((2, 3, 8, 8), POOL_2X2), ((2, 2, 7, 7), param(3, 3, 2)),
                                         ((2, 2, 6, 7), param(2, 3, 1))])
def test_gradient_check(forward, backward, shape, pool):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape)
    out, cache = forward(x, pool)
    dout = rng.standard_normal(out.shape)
    dx_num = eval_numerical_gradient_array(lambda x: forward(x, pool)[0], x, dout)
    assert rel_error(backward(dout, cache), dx_num) < 1e-8


@pytest.mark.parametrize("forward, backward", PAIRS)
def test_dtypes(forward, backward):
    for dtype in (np.float32, np.float64):
        x = np.ones((1, 2, 4, 4), dtype=dtype)
        out, cache = forward(x, POOL_2X2)
        dx = backward(np.ones(out.shape), cache)  # a float64 dout does not change the dtype
        assert out.dtype == dx.dtype == dtype
    out, cache = forward(np.ones((1, 1, 4, 4), dtype=np.int64), POOL_2X2)
    assert out.dtype == backward(np.ones(out.shape), cache).dtype == np.float64


def test_fast_layers_accept_non_contiguous_input():
    x = np.random.default_rng(0).standard_normal((4, 6, 6, 2)).transpose(0, 3, 1, 2)
    for (naive_f, naive_b), (fast_f, fast_b) in (PAIRS[:2], PAIRS[2:]):
        out_naive, cache_naive = naive_f(x, POOL_2X2)
        out_fast, cache_fast = fast_f(x, POOL_2X2)
        assert np.allclose(out_naive, out_fast)
        dout = np.ones(out_naive.shape)
        assert np.allclose(naive_b(dout, cache_naive), fast_b(dout, cache_fast))


@settings(max_examples=100, deadline=None)
@given(pool_cases())
def test_max_pool_equals_the_maximum_of_im2col_columns(case):
    """An independent route (book/pooling.md): every depth slice as an example of one channel,
    one window per im2col column; the argmax of a column is the first maximum in row-major order."""
    x, pool = case
    N, C, H, W = x.shape
    F_h, F_w, S = pool["pool_height"], pool["pool_width"], pool["stride"]
    out, cache = max_pool_forward_fast(x, pool)
    cols = im2col(x.reshape(N * C, 1, H, W), F_h, F_w, S, 0)
    rows, columns = cols.argmax(axis=0), np.arange(cols.shape[1])
    assert np.array_equal(cols[rows, columns].reshape(out.shape), out)
    dout = np.random.default_rng(x.size).standard_normal(out.shape).astype(x.dtype)
    dcols = np.zeros_like(cols)
    dcols[rows, columns] = dout.ravel()
    dx = col2im(dcols, (N * C, 1, H, W), F_h, F_w, S, 0).reshape(x.shape)
    tol = 1e-5 if x.dtype == np.float32 else 1e-12
    assert np.allclose(dx, max_pool_backward_fast(dout, cache), rtol=tol, atol=tol)


# ------------------------------------------------------------------ properties


@settings(max_examples=300, deadline=None)
@given(pool_cases())
def test_fast_max_pool_equals_naive(case):
    x, pool = case
    out_naive, cache_naive = max_pool_forward_naive(x, pool)
    out_fast, cache_fast = max_pool_forward_fast(x, pool)
    assert out_fast.dtype == x.dtype and np.array_equal(out_naive, out_fast)
    dout = np.random.default_rng(x.size).standard_normal(out_naive.shape).astype(x.dtype)
    dx_naive = max_pool_backward_naive(dout, cache_naive)
    dx_fast = max_pool_backward_fast(dout, cache_fast)
    assert dx_fast.dtype == x.dtype and np.array_equal(dx_naive, dx_fast)
    assert np.isclose(dx_fast.sum(dtype=np.float64), dout.sum(dtype=np.float64), rtol=1e-5)


@settings(max_examples=300, deadline=None)
@given(pool_cases())
def test_fast_avg_pool_equals_naive(case):
    x, pool = case
    out_naive, cache_naive = avg_pool_forward_naive(x, pool)
    out_fast, cache_fast = avg_pool_forward_fast(x, pool)
    tol = 1e-5 if x.dtype == np.float32 else 1e-12
    assert out_fast.dtype == x.dtype and np.allclose(out_naive, out_fast, rtol=tol, atol=tol * 10)
    dout = np.random.default_rng(x.size).standard_normal(out_naive.shape).astype(x.dtype)
    dx_naive = avg_pool_backward_naive(dout, cache_naive)
    dx_fast = avg_pool_backward_fast(dout, cache_fast)
    assert dx_fast.dtype == x.dtype and np.array_equal(dx_naive, dx_fast)  # same order of sums


@settings(max_examples=300, deadline=None)
@given(H=st.integers(1, 8), W=st.integers(1, 8), PH=st.integers(-1, 9), PW=st.integers(-1, 9),
       S=st.integers(-2, 4))
def test_every_combination_is_computed_or_refused(H, W, PH, PW, S):
    """A valid geometry gives the output of the formula; any other raises a ValueError."""
    x = np.zeros((2, 1, H, W))
    valid = (PH >= 1 and PW >= 1 and S >= 1 and PH <= H and PW <= W
             and (H - PH) % S == 0 and (W - PW) % S == 0)
    for forward in FORWARDS:
        if valid:
            out, _ = forward(x, param(PH, PW, S))
            assert out.shape == (2, 1, (H - PH) // S + 1, (W - PW) // S + 1)
        else:
            with pytest.raises(ValueError, match=forward.__name__):
                forward(x, param(PH, PW, S))


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize("forward", FORWARDS)
def test_window_larger_than_input(forward):
    with pytest.raises(ValueError, match=r"pool window \(F=3\) is larger than the padded input.*"
                                         r"x of shape \(2, 16, 2, 2\)"):
        forward(np.zeros((2, 16, 2, 2)), param(3, 3, 2))
    with pytest.raises(ValueError, match=r"\(width\): the pool window \(F=4\)"):
        forward(np.zeros((1, 1, 8, 3)), param(2, 4, 1))


@pytest.mark.parametrize("forward", FORWARDS)
def test_windows_that_do_not_tile(forward):
    with pytest.raises(ValueError, match=r"\(5 - 2 \+ 2\*0\)/2 \+ 1 = 2.5 is not an integer"):
        forward(np.zeros((1, 1, 5, 4)), POOL_2X2)


@pytest.mark.parametrize("forward", FORWARDS)
@pytest.mark.parametrize("value", [0, -1, 1.5, 2.0, True, None, "2"])
@pytest.mark.parametrize("key", ["pool_height", "pool_width", "stride"])
def test_bad_pool_param_values(forward, key, value):
    with pytest.raises(ValueError, match=rf"pool_param\['{key}'\] must be a positive integer, "
                                         rf"got {value!r}"):
        forward(np.zeros((1, 1, 4, 4)), dict(POOL_2X2, **{key: value}))


@pytest.mark.parametrize("forward", FORWARDS)
def test_bad_pool_param_container(forward):
    with pytest.raises(ValueError, match="pool_param has no 'stride'"):
        forward(np.zeros((1, 1, 4, 4)), {"pool_height": 2, "pool_width": 2})
    with pytest.raises(ValueError, match="pool_param must be a dict"):
        forward(np.zeros((1, 1, 4, 4)), (2, 2, 2))


@pytest.mark.parametrize("forward", FORWARDS)
@pytest.mark.parametrize("shape", [(4, 4), (1, 4, 4), (1, 1, 1, 4, 4), (0, 1, 4, 4), (1, 0, 4, 4)])
def test_bad_input_shapes(forward, shape):
    with pytest.raises(ValueError, match=rf"x must be a non-empty array of shape \(N, C, H, W\), "
                                         rf"got shape {re_shape(shape)}"):
        forward(np.zeros(shape), POOL_2X2)


def re_shape(shape):
    return str(shape).replace("(", r"\(").replace(")", r"\)")


@pytest.mark.parametrize("forward, backward", PAIRS)
def test_dout_of_the_wrong_shape(forward, backward):
    _, cache = forward(np.zeros((2, 3, 4, 4)), POOL_2X2)
    with pytest.raises(ValueError, match=rf"{backward.__name__}: dout has shape \(2, 3, 4, 4\) "
                                         r"but the forward output had shape \(2, 3, 2, 2\)"):
        backward(np.zeros((2, 3, 4, 4)), cache)
