"""Unit tests of cnnbook.memory (defined in book/memory.md): the memory calculator."""
import numpy as np
import pytest

from cnnbook.architectures import conv, fc, input_layer, layer_table, pool, relu, vgg16
from cnnbook.memory import OPTIMIZER_STATE, max_batch_size, memory_estimate

SPEC = [input_layer(3, 8), conv(4, 3, pad=1), relu(), pool(2), fc(5), relu(), fc(3)]
PARAMS = 4 * 3 * 9 + 4 + 4 * 4 * 4 * 5 + 5 + 5 * 3 + 3


def test_parts_of_a_small_spec():
    e = memory_estimate(SPEC, 2, dtype=np.float64, optimizer="adam")
    acts = 4 * 8 * 8 + 4 * 4 * 4 + 5 + 3  # conv, pool, fc, fc (ReLU in place)
    assert e["activations"] == e["activation_grads"] == 2 * acts * 8
    assert e["params"] == e["param_grads"] == PARAMS * 8
    assert e["optimizer_state"] == 2 * PARAMS * 8
    assert e["data"] == 2 * 3 * 8 * 8 * 8 and e["im2col"] == 0
    parts = ("activations", "activation_grads", "params", "param_grads", "optimizer_state",
             "data", "im2col")
    assert e["train"] == sum(e[p] for p in parts)
    # test time: the largest input + output of one layer is the conv's
    assert e["inference"] == PARAMS * 8 + 2 * (3 * 64 + 4 * 64) * 8
    assert e["inference_keep_all"] == PARAMS * 8 + e["data"] + e["activations"]


def test_relu_and_im2col_options():
    base = memory_estimate(SPEC, 1)
    more = memory_estimate(SPEC, 1, relu_inplace=False, im2col=True)
    assert more["activations"] - base["activations"] == (4 * 64 + 5) * 4
    assert more["im2col"] == 2 * (3 * 9 * 64) * 4  # cached, plus the gradient of the largest


@pytest.mark.parametrize("optimizer, copies", sorted(OPTIMIZER_STATE.items()))
def test_optimizer_state(optimizer, copies):
    e = memory_estimate(SPEC, 1, optimizer=optimizer)
    assert e["optimizer_state"] == copies * e["params"]


def test_linear_in_batch_and_dtype():
    a, b = memory_estimate(vgg16(), 1), memory_estimate(vgg16(), 3)
    assert b["activations"] == 3 * a["activations"] and b["params"] == a["params"]
    half = memory_estimate(vgg16(), 1, dtype=np.float16)
    assert 2 * half["train"] == a["train"]


def test_vgg16_inference_trick():
    e = memory_estimate(vgg16(), 1)
    assert e["inference"] - e["params"] == 2 * 224 * 224 * 64 * 4
    assert e["params"] == 138_357_544 * 4


def test_max_batch_size():
    e10 = memory_estimate(SPEC, 10)["train"]
    assert max_batch_size(SPEC, e10) == 10
    assert max_batch_size(SPEC, e10 - 1) == 9
    assert max_batch_size(SPEC, 1) == 0
    n = max_batch_size(vgg16(), 12 * 2**30)
    fits, too_big = (memory_estimate(vgg16(), m)["train"] for m in (n, n + 1))
    assert fits <= 12 * 2**30 < too_big


@pytest.mark.parametrize("kwargs, match", [
    ({"batch_size": 0}, "batch_size"), ({"batch_size": -3}, "batch_size"),
    ({"batch_size": 2.5}, "batch_size"), ({"batch_size": 1, "optimizer": "lbfgs"}, "lbfgs"),
    ({"batch_size": 1, "dtype": np.int32}, "floating"),
    ({"batch_size": 1, "data_copies": 0}, "data_copies"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        memory_estimate(SPEC, **kwargs)


def test_bad_spec_names_the_layer():
    with pytest.raises(ValueError, match=r"pool2.*7"):
        memory_estimate([input_layer(3, 30), conv(8, 3, pad=1), pool(2), pool(2)], 8)
    with pytest.raises(ValueError, match="deconv"):
        memory_estimate([input_layer(3, 8), {"kind": "deconv"}], 1)
    with pytest.raises(ValueError, match="no layer after its input"):
        memory_estimate([input_layer(3, 8)], 1)
    with pytest.raises(ValueError, match="memory_bytes"):
        max_batch_size(SPEC, -1)


def test_im2col_gradient_in_blocks():
    cols = 3 * 9 * 64  # im2col numbers of one example of SPEC's conv layer
    full = memory_estimate(SPEC, 10, im2col=True)
    assert full["im2col"] == (10 + 10) * cols * 4
    blocked = memory_estimate(SPEC, 10, im2col=True, im2col_grad_block=3 * cols + 5)
    assert blocked["im2col"] == (10 + 3) * cols * 4
    tiny = memory_estimate(SPEC, 10, im2col=True, im2col_grad_block=1)  # at least one example
    assert tiny["im2col"] == (10 + 1) * cols * 4
    with pytest.raises(ValueError, match="im2col_grad_block"):
        memory_estimate(SPEC, 10, im2col=True, im2col_grad_block=0)


def test_max_batch_size_with_blocked_im2col_gradient():
    # the im2col gradient stops growing once the batch fills a block: not linear in the batch
    kwargs = {"im2col": True, "im2col_grad_block": 3 * 3 * 9 * 64}
    for memory in (memory_estimate(SPEC, n, **kwargs)["train"] for n in (2, 5, 40)):
        n = max_batch_size(SPEC, memory, **kwargs)
        fits, too_big = (memory_estimate(SPEC, m, **kwargs)["train"] for m in (n, n + 1))
        assert fits <= memory < too_big


def test_grouped_conv_im2col_counts_every_group():
    spec = [input_layer(4, 8), conv(6, 3, pad=1, groups=2), fc(3)]
    e = memory_estimate(spec, 1, im2col=True)
    assert e["im2col"] == 2 * (4 * 9 * 64) * 4  # g matrices of (C/g) k^2 rows, and a gradient
