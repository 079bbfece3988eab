"""Unit tests of cnnbook.convert (defined in book/fc_to_conv.md)."""
import numpy as np
import pytest

from cnnbook.convert import fc_stack_to_conv, fc_to_conv
from cnnbook.fast_layers import conv_forward_fast
from cnnbook.layers import affine_forward, conv_forward_naive, relu_forward

VALID = {"stride": 1, "pad": 0}


def _fc_net(x, layers):
    for k, (W, b) in enumerate(layers):
        x = affine_forward(x, W, b)[0]
        if k < len(layers) - 1:
            x = relu_forward(x)[0]
    return x


def _conv_net(x, convs):
    for k, (w, b) in enumerate(convs):
        x = conv_forward_fast(x, w, b, VALID)[0]
        if k < len(convs) - 1:
            x = relu_forward(x)[0]
    return x


def _layers(rng, sizes):
    return [(rng.standard_normal((d, m)), rng.standard_normal(m)) for d, m in zip(sizes, sizes[1:])]


@pytest.mark.parametrize("shape", [(3, 4, 4), (2, 3, 5), (1, 1, 1), (5, 1, 1), (1, 6, 2)])
def test_fc_to_conv_equals_affine(shape):
    rng = np.random.default_rng(0)
    C, H, W_ = shape
    x = rng.standard_normal((4, C, H, W_))
    W, b = rng.standard_normal((C * H * W_, 7)), rng.standard_normal(7)
    w, bc = fc_to_conv(W, b, shape)
    assert w.shape == (7, C, H, W_) and bc.shape == (7,)
    expected = affine_forward(x, W, b)[0]
    for conv in (conv_forward_fast, conv_forward_naive):
        out = conv(x, w, bc, VALID)[0]
        assert out.shape == (4, 7, 1, 1)
        np.testing.assert_allclose(out.reshape(4, 7), expected, rtol=1e-12, atol=1e-12)


def test_fc_to_conv_filter_entries_follow_the_flattening_order():
    C, H, W_, M = 2, 3, 4, 5
    W = np.arange(C * H * W_ * M, dtype=float).reshape(C * H * W_, M)
    w, _ = fc_to_conv(W, np.zeros(M), (C, H, W_))
    for m in range(M):
        for c in range(C):
            for i in range(H):
                for j in range(W_):
                    assert w[m, c, i, j] == W[(c * H + i) * W_ + j, m]


def test_fc_to_conv_returns_copies_and_keeps_dtype():
    W, b = np.ones((12, 2), dtype=np.float32), np.zeros(2, dtype=np.float32)
    w, bc = fc_to_conv(W, b, (3, 2, 2))
    assert w.dtype == np.float32 and bc.dtype == np.float32
    w[...] = 5.0
    bc[...] = 5.0
    assert np.all(W == 1.0) and np.all(b == 0.0)


def test_fc_to_conv_accepts_lists_and_numpy_integers():
    W, b = np.ones((12, 2)), np.zeros(2)
    w, _ = fc_to_conv(W.tolist(), b.tolist(), [np.int64(3), 2, 2])
    assert w.shape == (2, 3, 2, 2)


def test_wrong_flattening_order_gives_wrong_scores():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 2, 3, 3))
    W, b = rng.standard_normal((18, 4)), rng.standard_normal(4)
    channels_last = W.T.reshape(4, 3, 3, 2).transpose(0, 3, 1, 2)
    out = conv_forward_fast(x, channels_last, b, VALID)[0].reshape(3, 4)
    assert not np.allclose(out, affine_forward(x, W, b)[0])


def test_stack_equals_fc_net_and_slides_over_larger_inputs():
    rng = np.random.default_rng(2)
    layers = _layers(rng, [2 * 3 * 3, 6, 5, 4])
    convs = fc_stack_to_conv(layers, (2, 3, 3))
    assert [w.shape for w, _ in convs] == [(6, 2, 3, 3), (5, 6, 1, 1), (4, 5, 1, 1)]
    x = rng.standard_normal((2, 2, 5, 6))  # a larger input: 3 x 4 windows of 3 x 3
    out = _conv_net(x, convs)
    assert out.shape == (2, 4, 3, 4)
    for i in range(3):
        for j in range(4):
            expected = _fc_net(x[:, :, i:i + 3, j:j + 3], layers)
            np.testing.assert_allclose(out[:, :, i, j], expected, rtol=1e-12, atol=1e-12)


def test_empty_stack():
    assert fc_stack_to_conv([], (2, 3, 3)) == []


# ------------------------------------------------------------------- bad input

def test_d_mismatch_names_the_numbers():
    with pytest.raises(ValueError) as e:
        fc_to_conv(np.zeros((60, 8)), np.zeros(8), (3, 4, 4))
    message = str(e.value)
    assert "fc_to_conv" in message and "(60, 8)" in message and "D=60" in message
    assert "(3, 4, 4)" in message and "3*4*4 = 48" in message


def test_bias_shape_mismatch():
    with pytest.raises(ValueError, match=r"b must have shape \(8,\).*got shape \(5,\)"):
        fc_to_conv(np.zeros((48, 8)), np.zeros(5), (3, 4, 4))


@pytest.mark.parametrize("W", [np.zeros(48), np.zeros((48, 8, 1))])
def test_weights_must_be_a_matrix(W):
    with pytest.raises(ValueError, match=r"W must have shape \(D, M\)"):
        fc_to_conv(W, np.zeros(8), (3, 4, 4))


@pytest.mark.parametrize("shape", [(48,), (3, 16), (3, 4, 4, 1), (3, 0, 16), (3, -4, -4),
                                   (3.0, 4, 4), (True, 48, 1), 48, "3x4x4", None])
def test_input_shape_must_be_three_positive_integers(shape):
    with pytest.raises(ValueError, match="input_shape must be the shape"):
        fc_to_conv(np.zeros((48, 8)), np.zeros(8), shape)


def test_stack_mismatch_names_the_layer():
    rng = np.random.default_rng(3)
    layers = _layers(rng, [18, 6, 5, 4])
    with pytest.raises(ValueError) as e:
        fc_stack_to_conv([layers[0], layers[2], layers[1]], (2, 3, 3))
    message = str(e.value)
    assert message.startswith("fc_stack_to_conv: layer 1: fc_to_conv:")
    assert "(5, 4)" in message and "(6, 1, 1)" in message and "6*1*1 = 6" in message
    with pytest.raises(ValueError, match="layer 0: .*2\\*3\\*4 = 24"):
        fc_stack_to_conv(layers, (2, 3, 4))


@pytest.mark.parametrize("layer, got", [
    ((np.zeros((18, 6)),), "tuple of length 1"),
    (np.zeros((18, 6)), "ndarray"),
    ([np.zeros((18, 6)), np.zeros(6), None], "list of length 3"),
])
def test_stack_layer_must_be_a_pair(layer, got):
    with pytest.raises(ValueError, match=f"layer 0 must be a pair \\(W, b\\), got {got}"):
        fc_stack_to_conv([layer], (2, 3, 3))
