"""Unit and property tests of the convolutional layer (defined in book/convolution.md).

cnnbook.layers: conv_output_size, conv_forward_naive, conv_backward_naive (exact and floor
rounding);
cnnbook.fast_layers: im2col, col2im, conv_forward_fast, conv_backward_fast;
cnnbook.plotting: animation_html.
"""
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cnnbook.fast_layers import col2im, conv_backward_fast, conv_forward_fast, im2col
from cnnbook.gradient_check import eval_numerical_gradient_array, rel_error
from cnnbook.layers import conv_backward_naive, conv_forward_naive, conv_output_size

FORWARDS = [conv_forward_naive, conv_forward_fast]
PAIRS = [(conv_forward_naive, conv_backward_naive), (conv_forward_fast, conv_backward_fast)]

# ------------------------------------------------------------------- conv_output_size


def test_output_size_formula():
    assert conv_output_size(7, 3, 1, 0) == 5
    assert conv_output_size(7, 3, 2, 0) == 3
    assert conv_output_size(5, 3, 2, 1) == 3
    assert conv_output_size(227, 11, 4, 0) == 55
    assert all(conv_output_size(32, f, 1, (f - 1) // 2) == 32 for f in (1, 3, 5, 7))
    assert conv_output_size(np.int64(8), np.int32(2), np.int64(2)) == 4


def test_output_size_alexnet_224_does_not_tile():
    with pytest.raises(ValueError) as e:
        conv_output_size(224, 11, stride=4, pad=0)
    msg = str(e.value)
    assert "(224 - 11 + 2*0)/4 + 1 = 54.25" in msg and "not an integer" in msg


@pytest.mark.parametrize(
    "args, words",
    [
        ((7, 3, 0, 0), ["stride S", "got 0"]),
        ((7, 3, -1, 0), ["stride S", "got -1"]),
        ((7, 3, 1.5, 0), ["stride S", "1.5"]),
        ((7, 3, True, 0), ["stride S", "True"]),
        ((7, 3, 1, -1), ["pad P", "got -1"]),
        ((7, 0, 1, 0), ["filter size F", "got 0"]),
        ((0, 3, 1, 0), ["input size W", "got 0"]),
        ((4, 7, 1, 1), ["larger than the padded input", "F=7", "4 + 2*1 = 6"]),
        ((8, 3, 2, 0), ["(8 - 3 + 2*0)/2 + 1 = 3.5", "not an integer"]),
    ],
)
def test_output_size_bad_values(args, words):
    with pytest.raises(ValueError) as e:
        conv_output_size(*args)
    for word in words:
        assert word in str(e.value)


def test_output_size_floor_rounds_down():
    assert conv_output_size(32, 3, 2, 1, rounding="floor") == 16  # ResNet's downsampling
    assert conv_output_size(224, 11, 4, 0, rounding="floor") == 54
    assert conv_output_size(224, 7, 2, 3, rounding="floor") == 112
    assert conv_output_size(7, 3, 2, 0, rounding="floor") == 3  # tiling: same as "exact"
    with pytest.raises(ValueError, match="larger than the padded input"):
        conv_output_size(4, 7, 1, 1, rounding="floor")
    with pytest.raises(ValueError, match="rounding must be 'exact' or 'floor', got 'ceil'"):
        conv_output_size(32, 3, 2, 1, rounding="ceil")


def test_output_size_names_the_caller_and_window():
    with pytest.raises(ValueError, match=r"max_pool: the pool window \(F=5\) is larger"):
        conv_output_size(4, 5, 1, 0, name="max_pool", what="pool window")


# ------------------------------------------------------------------- hand-computed cases


def test_single_window_is_a_dot_product():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 2, 3, 3))
    w = rng.standard_normal((2, 2, 3, 3))
    b = np.array([0.5, -1.0])
    for forward in FORWARDS:
        out, _ = forward(x, w, b, {"stride": 1, "pad": 0})
        assert out.shape == (1, 2, 1, 1)
        assert np.allclose(out[0, :, 0, 0], w.reshape(2, -1) @ x.ravel() + b)


def test_worked_example_shape_and_padding():
    x = np.ones((1, 3, 5, 5))
    w = np.ones((2, 3, 3, 3))
    b = np.array([1.0, 0.0])
    for forward in FORWARDS:
        out, _ = forward(x, w, b, {"stride": 2, "pad": 1})
        assert out.shape == (1, 2, 3, 3)
        # a corner window covers 2x2 input pixels per channel, the centre one 3x3
        assert out[0, 0, 0, 0] == 3 * 4 + 1 and out[0, 0, 1, 1] == 3 * 9 + 1
        assert out[0, 1, 0, 1] == 3 * 6


def test_backward_all_ones_counts_windows():
    x = np.zeros((1, 1, 4, 4))
    w = np.ones((1, 1, 3, 3))
    for forward, backward in PAIRS:
        out, cache = forward(x, w, np.zeros(1), {"stride": 1, "pad": 1})
        dx, dw, db = backward(np.ones_like(out), cache)
        # each pixel's gradient counts the windows that contain it
        assert np.array_equal(dx[0, 0], [[4, 6, 6, 4], [6, 9, 9, 6], [6, 9, 9, 6], [4, 6, 6, 4]])
        assert db[0] == 16 and dw.shape == w.shape


def _checked_gradients(forward, backward, rng, x_shape, cp, out_shape=None):
    """Random float64 x (x_shape), w (4, 3, 3, 3), b, dout; assert that the analytic
    gradients of the layer match the numerical ones (< 1e-7); return dx."""
    x = rng.standard_normal(x_shape)
    w = rng.standard_normal((4, 3, 3, 3))
    b = rng.standard_normal(4)
    out, cache = forward(x, w, b, cp)
    if out_shape is not None:
        assert out.shape == out_shape
    dout = rng.standard_normal(out.shape)
    dx, dw, db = backward(dout, cache)
    num_dx = eval_numerical_gradient_array(lambda x: forward(x, w, b, cp)[0], x, dout)
    num_dw = eval_numerical_gradient_array(lambda w: forward(x, w, b, cp)[0], w, dout)
    num_db = eval_numerical_gradient_array(lambda b: forward(x, w, b, cp)[0], b, dout)
    assert rel_error(dx, num_dx) < 1e-7
    assert rel_error(dw, num_dw) < 1e-7
    assert rel_error(db, num_db) < 1e-7
    return dx


@pytest.mark.parametrize("forward, backward", PAIRS)
def test_gradient_check_float64(forward, backward):
    rng = np.random.default_rng(3)  # the chapter's gradient check
    _checked_gradients(forward, backward, rng, (2, 3, 7, 7), {"stride": 2, "pad": 1})


@pytest.mark.parametrize("forward, backward", PAIRS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_is_kept(forward, backward, dtype):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 2, 5, 5)).astype(dtype)
    w = rng.standard_normal((3, 2, 3, 3)).astype(dtype)
    b = np.zeros(3, dtype)
    out, cache = forward(x, w, b, {"stride": 1, "pad": 1})
    grads = backward(np.ones_like(out), cache)
    assert out.dtype == dtype and all(g.dtype == dtype for g in grads)


def test_integer_input_is_computed_in_float64():
    x = np.arange(2 * 1 * 4 * 4).reshape(2, 1, 4, 4)
    w = np.ones((1, 1, 2, 2), dtype=int)
    for forward in FORWARDS:
        out, _ = forward(x, w, np.zeros(1, dtype=int), {"stride": 2, "pad": 0})
        assert out.dtype == np.float64 and out[0, 0, 0, 0] == 0 + 1 + 4 + 5


def test_fast_output_is_contiguous():
    out, _ = conv_forward_fast(np.ones((2, 3, 6, 6)), np.ones((4, 3, 3, 3)), np.zeros(4),
                               {"stride": 1, "pad": 1})
    assert out.flags.c_contiguous and out.shape == (2, 4, 6, 6)


@pytest.mark.parametrize("block", [1, 2 * 27 * 16, 3 * 27 * 16 + 5, 1 << 22])
def test_backward_blocks_of_examples(monkeypatch, block):
    """conv_backward_fast computes dx for blocks of examples; any block size gives the same."""
    import cnnbook.fast_layers as fl

    monkeypatch.setattr(fl, "DX_BLOCK", block)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((7, 3, 4, 4))
    w = rng.standard_normal((2, 3, 3, 3))
    b = rng.standard_normal(2)
    cp = {"stride": 1, "pad": 1}
    out, cache = conv_forward_fast(x, w, b, cp)
    dout = rng.standard_normal(out.shape)
    expected = conv_backward_naive(dout, conv_forward_naive(x, w, b, cp)[1])
    for got, want in zip(conv_backward_fast(dout, cache), expected):
        assert rel_error(got, want) <= 1e-9


def test_im2col_col2im_are_adjoint():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 7, 6))
    cols = im2col(x, 3, 2, 2, 1)
    assert cols.shape == (3 * 3 * 2, 2 * 4 * 4)
    dcols = rng.standard_normal(cols.shape)
    dx = col2im(dcols, x.shape, 3, 2, 2, 1)
    # <im2col(x), dcols> == <x, col2im(dcols)>
    assert np.isclose(np.sum(cols * dcols), np.sum(x * dx))


def test_fast_cache_ends_with_the_columns():
    """The chapter's GFLOP cell reads cache[-1] as the columns of conv_forward_fast."""
    rng = np.random.default_rng(4)
    x, w, b = rng.standard_normal((2, 3, 7, 6)), rng.standard_normal((4, 3, 3, 2)), np.zeros(4)
    _, cache = conv_forward_fast(x, w, b, {"stride": 2, "pad": 1})
    assert np.array_equal(cache[-1], im2col(x, 3, 2, 2, 1))


def test_col2im_does_not_use_add_at():
    import inspect

    import cnnbook.fast_layers as fl

    assert "np.add.at(" not in inspect.getsource(fl)  # (a comment may name it)


# ------------------------------------------------------------------- floor mode


FLOOR = {"stride": 2, "pad": 0, "rounding": "floor"}


@pytest.mark.parametrize("forward, backward", PAIRS)
def test_floor_mode_gradient_check_float64(forward, backward):
    rng = np.random.default_rng(11)  # the chapter's floor-mode check: row 7 is never read
    dx = _checked_gradients(forward, backward, rng, (2, 3, 8, 9), FLOOR, out_shape=(2, 4, 3, 4))
    assert not dx[:, :, 7].any() and dx[:, :, :7].all()  # the unread row gets zero gradient


@pytest.mark.parametrize("forward", FORWARDS)
def test_floor_mode_ignores_what_follows_the_last_window(forward):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((1, 2, 8, 8))
    w = rng.standard_normal((3, 2, 3, 3))
    b = rng.standard_normal(3)
    out, _ = forward(x, w, b, FLOOR)  # windows start at 0, 2, 4: row and column 7 are unread
    x2 = x.copy()
    x2[:, :, 7, :] = 100.0
    x2[:, :, :, 7] = -100.0
    assert np.array_equal(forward(x2, w, b, FLOOR)[0], out)
    assert np.allclose(out, forward(x[:, :, :7, :7], w, b, {"stride": 2, "pad": 0})[0])


@pytest.mark.parametrize("forward", FORWARDS)
def test_floor_mode_resnet_downsampling(forward):
    x, w = np.ones((1, 1, 32, 32)), np.ones((1, 1, 3, 3))
    with pytest.raises(ValueError, match="16.5 is not an integer"):
        forward(x, w, np.zeros(1), {"stride": 2, "pad": 1})
    out, _ = forward(x, w, np.zeros(1), {"stride": 2, "pad": 1, "rounding": "floor"})
    assert out.shape == (1, 1, 16, 16)
    # the first window covers one padding zero and input 0..1; the last (start 30 of the padded
    # 34) covers input 29..31, and the padding after it is never read
    assert out[0, 0, 0, 0] == 4 and out[0, 0, -1, -1] == 9 and out[0, 0, 0, -1] == 6


@pytest.mark.parametrize("forward", FORWARDS)
@pytest.mark.parametrize("rounding", ["ceil", "Floor", None, 1])
def test_bad_rounding_raises(forward, rounding):
    with pytest.raises(ValueError, match=r"conv_param\['rounding'\] must be 'exact' or 'floor'"):
        forward(np.zeros((1, 1, 8, 8)), np.zeros((1, 1, 3, 3)), np.zeros(1),
                {"stride": 2, "pad": 1, "rounding": rounding})


@pytest.mark.parametrize("S, P", [(1, 0), (1, 1), (2, 1), (2, 2), (3, 0)])
def test_backward_is_a_convolution(S, P):
    """dx: full convolution of spread dout with the rotated filters; dw: x correlated with dout."""
    rng = np.random.default_rng(12)
    H = 3 * S + 5 - 2 * P  # tiles: (H - 5 + 2P)/S = 3
    x, w = rng.standard_normal((2, 3, H, H)), rng.standard_normal((4, 3, 5, 5))
    out, cache = conv_forward_naive(x, w, np.zeros(4), {"stride": S, "pad": P})
    dout = rng.standard_normal(out.shape)
    dx, dw, _ = conv_backward_naive(dout, cache)
    d = np.zeros((2, 4, 3 * S + 1, 3 * S + 1))
    d[:, :, ::S, ::S] = dout
    w_rot = w.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1]
    dx_conv = conv_forward_fast(d, w_rot, np.zeros(3), {"stride": 1, "pad": 5 - 1 - P})[0]
    dw_conv = conv_forward_fast(x.transpose(1, 0, 2, 3), d.transpose(1, 0, 2, 3), np.zeros(4),
                                {"stride": 1, "pad": P})[0].transpose(1, 0, 2, 3)
    assert np.abs(dx_conv - dx).max() < 1e-10 and np.abs(dw_conv - dw).max() < 1e-10


# ------------------------------------------------------------------- bad input


GOOD = dict(x=np.zeros((2, 3, 8, 8)), w=np.zeros((4, 3, 3, 3)), b=np.zeros(4),
            conv_param={"stride": 1, "pad": 1})


@pytest.mark.parametrize("forward", FORWARDS)
@pytest.mark.parametrize(
    "change, words",
    [
        (dict(w=np.zeros((4, 2, 3, 3))), ["(2, 3, 8, 8)", "C=3", "(4, 2, 3, 3)", "C=2"]),
        (dict(x=np.zeros((3, 8, 8))), ["(N, C, H, W)", "(3, 8, 8)"]),
        (dict(x=np.zeros((1, 2, 3, 8, 8))), ["(N, C, H, W)", "(1, 2, 3, 8, 8)"]),
        (dict(w=np.zeros((3, 3, 3))), ["(F, C, HH, WW)", "(3, 3, 3)"]),
        (dict(x=np.zeros((0, 3, 8, 8))), ["non-empty", "(0, 3, 8, 8)"]),
        (dict(b=np.zeros(3)), ["b must have shape (4,)", "(3,)"]),
        (dict(conv_param={"stride": 0, "pad": 1}), ["conv_param['stride']", "got 0"]),
        (dict(conv_param={"stride": -2, "pad": 1}), ["conv_param['stride']", "got -2"]),
        (dict(conv_param={"stride": 1.5, "pad": 1}), ["conv_param['stride']", "got 1.5"]),
        (dict(conv_param={"stride": 1, "pad": -1}), ["conv_param['pad']", "got -1"]),
        (dict(conv_param={"stride": 2, "pad": 0}), ["(8 - 3 + 2*0)/2 + 1 = 3.5"]),
        (dict(w=np.zeros((4, 3, 11, 11))), ["F=11", "larger than the padded input", "10"]),
        (dict(conv_param={"stride": 1}), ["'stride' and 'pad'"]),
        (dict(conv_param=None), ["'stride' and 'pad'"]),
    ],
)
def test_bad_input_raises(forward, change, words):
    args = {**GOOD, **change}
    with pytest.raises(ValueError) as e:
        forward(args["x"], args["w"], args["b"], args["conv_param"])
    for word in words:
        assert word in str(e.value), str(e.value)


def test_width_checked_separately_from_height():
    with pytest.raises(ValueError, match=r"\(width\).*\(6 - 3 \+ 2\*0\)/2"):
        conv_forward_fast(np.zeros((1, 1, 7, 6)), np.zeros((1, 1, 3, 3)), np.zeros(1),
                          {"stride": 2, "pad": 0})


@pytest.mark.parametrize("forward, backward", PAIRS)
def test_backward_bad_dout(forward, backward):
    out, cache = forward(GOOD["x"], GOOD["w"], GOOD["b"], GOOD["conv_param"])
    with pytest.raises(ValueError, match=r"dout has shape \(2, 4, 8, 7\).*\(2, 4, 8, 8\)"):
        backward(np.zeros((2, 4, 8, 7)), cache)


# ------------------------------------------------------------------- properties


@st.composite
def conv_problems(draw):
    """A random valid convolution: shapes, stride and pad that tile the input."""
    N = draw(st.integers(1, 3))
    C = draw(st.integers(1, 3))
    F = draw(st.integers(1, 3))
    HH = draw(st.integers(1, 4))
    WW = draw(st.integers(1, 4))
    S = draw(st.integers(1, 3))
    P = draw(st.integers(0, 2))
    H_out = draw(st.integers(1, 4))
    W_out = draw(st.integers(1, 4))
    H = (H_out - 1) * S + HH - 2 * P
    W = (W_out - 1) * S + WW - 2 * P
    if H < 1 or W < 1:
        P = 0
        H, W = (H_out - 1) * S + HH, (W_out - 1) * S + WW
    seed = draw(st.integers(0, 2**32 - 1))
    return (N, C, H, W), (F, C, HH, WW), S, P, seed


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(conv_problems())
def test_fast_equals_naive(problem):
    x_shape, w_shape, S, P, seed = problem
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(x_shape)
    w = rng.standard_normal(w_shape)
    b = rng.standard_normal(w_shape[0])
    cp = {"stride": S, "pad": P}
    out_n, cache_n = conv_forward_naive(x, w, b, cp)
    out_f, cache_f = conv_forward_fast(x, w, b, cp)
    assert out_f.shape == out_n.shape == (x_shape[0], w_shape[0],
                                          conv_output_size(x_shape[2], w_shape[2], S, P),
                                          conv_output_size(x_shape[3], w_shape[3], S, P))
    assert rel_error(out_f, out_n) <= 1e-9
    dout = rng.standard_normal(out_n.shape)
    for g_f, g_n in zip(conv_backward_fast(dout, cache_f), conv_backward_naive(dout, cache_n)):
        assert g_f.shape == g_n.shape
        assert rel_error(g_f, g_n) <= 1e-9


@st.composite
def floor_problems(draw):
    """A random convolution in floor mode: the windows need not tile the input."""
    N, C, F = draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    HH, WW, S, P = (draw(st.integers(1, 4)), draw(st.integers(1, 4)), draw(st.integers(1, 4)),
                    draw(st.integers(0, 2)))
    H = draw(st.integers(max(1, HH - 2 * P), 10))
    W = draw(st.integers(max(1, WW - 2 * P), 10))
    return (N, C, H, W), (F, C, HH, WW), S, P, draw(st.integers(0, 2**32 - 1))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(floor_problems())
def test_fast_equals_naive_floor(problem):
    x_shape, w_shape, S, P, seed = problem
    rng = np.random.default_rng(seed)
    x, w, b = (rng.standard_normal(x_shape), rng.standard_normal(w_shape),
               rng.standard_normal(w_shape[0]))
    cp = {"stride": S, "pad": P, "rounding": "floor"}
    out_n, cache_n = conv_forward_naive(x, w, b, cp)
    out_f, cache_f = conv_forward_fast(x, w, b, cp)
    H_out = (x_shape[2] + 2 * P - w_shape[2]) // S + 1
    W_out = (x_shape[3] + 2 * P - w_shape[3]) // S + 1
    assert out_f.shape == out_n.shape == (x_shape[0], w_shape[0], H_out, W_out)
    assert rel_error(out_f, out_n) <= 1e-9
    dout = rng.standard_normal(out_n.shape)
    grads_n = conv_backward_naive(dout, cache_n)
    for g_f, g_n in zip(conv_backward_fast(dout, cache_f), grads_n):
        assert g_f.shape == g_n.shape and rel_error(g_f, g_n) <= 1e-9
    # rows and columns after the last window (in x's coordinates) get no gradient
    assert not grads_n[0][:, :, max(0, (H_out - 1) * S + w_shape[2] - P):].any()
    assert not grads_n[0][:, :, :, max(0, (W_out - 1) * S + w_shape[3] - P):].any()


@settings(max_examples=30, deadline=None)
@given(
    H=st.integers(1, 9), W=st.integers(1, 9), HH=st.integers(1, 5), WW=st.integers(1, 5),
    S=st.integers(-1, 4), P=st.integers(-1, 3), C_x=st.integers(1, 3), C_w=st.integers(1, 3),
)
def test_bad_combinations_raise(H, W, HH, WW, S, P, C_x, C_w):
    """Every combination either gives the size the formula says, or raises ValueError."""
    x, w, b = np.ones((1, C_x, H, W)), np.ones((2, C_w, HH, WW)), np.zeros(2)
    valid = (S >= 1 and P >= 0 and C_x == C_w and H + 2 * P >= HH and W + 2 * P >= WW
             and (H + 2 * P - HH) % S == 0 and (W + 2 * P - WW) % S == 0)
    for forward in FORWARDS:
        if valid:
            out, _ = forward(x, w, b, {"stride": S, "pad": P})
            assert out.shape == (1, 2, (H + 2 * P - HH) // S + 1, (W + 2 * P - WW) // S + 1)
        else:
            with pytest.raises(ValueError):
                forward(x, w, b, {"stride": S, "pad": P})


# ------------------------------------------------------------------- animation_html


def test_animation_html_is_self_contained_and_deterministic():
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.animation import FuncAnimation

    from cnnbook.plotting import animation_html

    def make():
        fig, ax = plt.subplots(figsize=(1, 1), dpi=20)
        (line,) = ax.plot([0, 1], [0, 1])
        anim = FuncAnimation(fig, lambda i: line.set_ydata([0, i]), frames=2)
        html = animation_html(anim, "test_anim")
        plt.close(fig)
        return html

    html = make()
    assert html == make()
    assert "font-awesome" not in html and "http" not in html
    assert 'id="_anim_imgtest_anim"' in html and "fa fa-" not in html
    assert len(re.findall(r"data:image/png;base64,", html)) == 2
    with pytest.raises(ValueError, match="JavaScript identifier"):
        animation_html(None, "not-an-id")
