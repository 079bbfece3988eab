"""Unit tests of cnnbook.architectures (defined in book/architectures.md): specs, layer tables,
the layer pattern, SpecNet, the sizing-rule checker and the case studies."""
import warnings

import numpy as np
import pytest

from cnnbook.architectures import (SpecNet, alexnet, avgpool, batchnorm, check_sizing_rules,
                                   check_spec, conv, fc, format_table, googlenet, inception,
                                   input_layer, layer_table, lenet5, pattern_spec, pool,
                                   receptive_field, relu, residual, resnet, table_totals,
                                   traced_memory, vgg16, zfnet)
from cnnbook.gradient_check import eval_numerical_gradient, rel_error


# ---------------------------------------------------------------- specs and tables


def test_conv_row_counts():
    rows = layer_table([input_layer(3, 32), conv(16, 5, stride=1, pad=2), relu(), pool(2),
                        fc(10)])
    assert [r["name"] for r in rows] == ["input", "conv1", "relu1", "pool1", "fc1"]
    assert rows[1]["shape"] == (16, 32, 32)
    assert rows[1]["params"] == 16 * 3 * 25 + 16 and rows[1]["weights"] == 16 * 3 * 25
    assert rows[1]["macs"] == 32 * 32 * 16 * 3 * 25 and rows[1]["activations"] == 16 * 32 * 32
    assert rows[2]["activations"] == 0 and rows[2]["shape"] == (16, 32, 32)
    assert rows[3]["shape"] == (16, 16, 16) and rows[3]["params"] == 0
    assert rows[4]["params"] == 16 * 16 * 16 * 10 + 10 and rows[4]["shape"] == (10, 1, 1)
    assert rows[0]["activations"] == 3 * 32 * 32


def test_groups_and_rounding():
    rows = layer_table([input_layer(4, 9), conv(6, 3, groups=2, pad=1), pool(2, rounding="ceil"),
                        avgpool(2, rounding="floor")])
    assert rows[1]["weights"] == 6 * 2 * 9
    assert rows[2]["shape"] == (6, 5, 5) and rows[3]["shape"] == (6, 2, 2)


def test_inception_counts():
    rows = layer_table([input_layer(192, 28), inception(64, 96, 128, 16, 32, 32)])
    assert rows[1]["shape"] == (256, 28, 28)
    assert rows[1]["weights"] == 163_328  # GoogLeNet Table 1: 159K (K = 1024)
    assert rows[1]["macs"] == 163_328 * 28 * 28


def test_hand_written_dicts_get_defaults():
    layers = check_spec([{"kind": "input", "channels": 1, "height": 8, "width": 8},
                         {"kind": "conv", "filters": 2, "size": 3}, {"kind": "pool", "size": 2}])
    assert layers[1]["stride"] == 1 and layers[1]["pad"] == 0 and layers[1]["groups"] == 1
    assert layers[2]["stride"] == 2 and layers[2]["rounding"] == "exact"


def test_format_table_hides_relu_and_totals():
    rows = layer_table(pattern_spec(1, 1, 1))
    text = format_table(rows)
    assert "relu" not in text and text.splitlines()[-1].startswith("total")
    assert "relu1" in format_table(rows, hide=())
    totals = table_totals(rows)
    assert totals["params"] == sum(r["params"] for r in rows)


@pytest.mark.parametrize("spec, words", [
    ([input_layer(3, 32), {"kind": "deconv", "filters": 8}], ["layer 1", "deconv"]),
    ([input_layer(3, 32), conv(-8, 3)], ["layer 1 (conv1)", "filters", "-8"]),
    ([input_layer(3, 32), conv(8, 3, pad=-1)], ["conv1", "pad", "-1"]),
    ([input_layer(3, 32), pool(2), conv(8, 5, stride=2)], ["conv1", "16", "5", "2", "6.5"]),
    ([input_layer(3, 32), conv(8, 3, groups=2)], ["conv1", "groups=2", "C=3"]),
    ([input_layer(3, 32), conv(8, 3, rounding="nearest")], ["conv1", "rounding"]),
    ([input_layer(3, 32), {**conv(8, 3), "colour": "red"}], ["conv1", "colour"]),
    ([conv(8, 3)], ["input"]),
    ([input_layer(3, 32), input_layer(3, 32)], ["layer 1", "input"]),
    ([input_layer(3, 4), conv(8, 7)], ["conv1", "larger than the padded input"]),
    ([], ["empty"]),
    ("conv", ["list"]),
    ([input_layer(3, 32), conv(8, 3, bias="no")], ["conv1", "bias"]),
    ([input_layer(3, 32), pool(2, pad=-1)], ["pool1", "pad"]),
    ([input_layer(3, 32), residual([])], ["residual1", "no layers"]),
    ([input_layer(3, 32), residual([conv(-1, 3)])], ["(residual1) body", "conv1", "filters"]),
    ([input_layer(3, 32), residual([conv(8, 3, pad=1)])], ["residual1", "(8, 32, 32)",
                                                            "(3, 32, 32)", "same shape"]),
    ([input_layer(3, 32), residual([conv(3, 3, 2, 1, rounding="floor")], [pool(4)])],
     ["residual1", "(3, 16, 16)", "(3, 8, 8)"]),
])
def test_bad_specs_raise_naming_the_layer(spec, words):
    with pytest.raises(ValueError) as info:
        layer_table(spec)
    for word in words:
        assert word in str(info.value)


def test_receptive_field():
    assert receptive_field([input_layer(1, 32)] + [conv(1, 3, pad=1), relu()] * 3) == 7
    assert receptive_field([input_layer(1, 32), conv(1, 3), pool(2), conv(1, 3)]) == 8
    with pytest.raises(ValueError, match="fc1"):
        receptive_field([input_layer(1, 8), fc(3)])


# ---------------------------------------------------------------- the pattern


def test_pattern_structure():
    spec = pattern_spec(2, 3, 2, filters=[4, 8, 16], hidden=20, num_classes=5)
    kinds = [layer["kind"] for layer in spec]
    assert kinds == (["input"] + (["conv", "relu"] * 2 + ["pool"]) * 3 + ["fc", "relu"] * 2
                     + ["fc"])
    assert layer_table(spec)[-1]["shape"] == (5, 1, 1)
    assert [layer["kind"] for layer in pattern_spec(0, 0, 0)] == ["input", "fc"]
    assert "pool" not in [layer["kind"] for layer in pattern_spec(1, 2, 0, pool=False)]


@pytest.mark.parametrize("counts, label", [((-1, 1, 1), "N"), ((1, -2, 1), "M"),
                                           ((1, 1, -1), "K"), ((1.5, 1, 1), "N"),
                                           ((True, 1, 1), "N")])
def test_pattern_bad_counts(counts, label):
    with pytest.raises(ValueError, match=rf"pattern_spec: {label} "):
        pattern_spec(*counts)


def test_pattern_filters_per_stage_must_match_M():
    with pytest.raises(ValueError, match="M=2"):
        pattern_spec(1, 2, 1, filters=[8])


def test_pattern_warns_outside_usual_range():
    for counts in ((4, 1, 1), (1, 1, 3)):
        with pytest.warns(UserWarning, match="usual range"):
            pattern_spec(*counts)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pattern_spec(3, 2, 2)


# ---------------------------------------------------------------- SpecNet


def test_specnet_contract_and_gradients():
    spec = pattern_spec(1, 1, 1, input_shape=(2, 6, 6), filters=3, hidden=5, num_classes=4)
    net = SpecNet(spec, weight_scale=0.3, reg=0.1, dtype=np.float64, seed=1)
    assert {k: v.shape for k, v in net.params.items()} == {
        "W1": (3, 2, 3, 3), "b1": (3,), "W2": (27, 5), "b2": (5,), "W3": (5, 4), "b3": (4,)}
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((3, 2, 6, 6)), rng.integers(4, size=3)
    assert net.loss(X).shape == (3, 4)
    _, grads = net.loss(X, y)
    for name in net.params:
        numeric = eval_numerical_gradient(lambda _: net.loss(X, y)[0], net.params[name],
                                          verbose=False)
        assert rel_error(grads[name], numeric) < 1e-6, name


def test_specnet_matches_three_layer_convnet():
    from cnnbook.classifiers import ThreeLayerConvNet
    model = ThreeLayerConvNet(input_dim=(3, 8, 8), num_filters=4, filter_size=3, hidden_dim=6,
                              num_classes=5, weight_scale=0.1, dtype=np.float64, seed=0)
    spec = [input_layer(3, 8), conv(4, 3, pad=1), relu(), pool(2), fc(6), relu(), fc(5)]
    net = SpecNet(spec, dtype=np.float64)
    net.params = model.params
    rng = np.random.default_rng(1)
    X, y = rng.standard_normal((2, 3, 8, 8)), rng.integers(5, size=2)
    assert np.allclose(net.loss(X), model.loss(X))
    loss_a, grads_a = net.loss(X, y)
    loss_b, grads_b = model.loss(X, y)
    assert np.isclose(loss_a, loss_b)
    assert all(np.allclose(grads_a[k], grads_b[k]) for k in grads_b)


@pytest.mark.parametrize("spec, match", [
    ([input_layer(3, 8), inception(1, 1, 1, 1, 1, 1), fc(2)], "inception"),
    ([input_layer(3, 8), batchnorm(), fc(2)], "batchnorm"),
    ([input_layer(3, 8), residual([relu()]), fc(2)], "residual"),
    ([input_layer(3, 8), conv(4, 3, pad=1, bias=False), fc(2)], "biases"),
    ([input_layer(3, 8), pool(3, 2, pad=1, rounding="floor"), fc(2)], "rounding"),
    ([input_layer(3, 9), pool(3, 2, pad=1), fc(2)], "padding"),
    ([input_layer(3, 8), conv(4, 3, groups=1, rounding="floor", stride=2), fc(2)], "rounding"),
    ([input_layer(4, 8), conv(4, 3, pad=1, groups=2), fc(2)], "groups"),
    ([input_layer(3, 8), conv(4, 3, pad=1)], "must be fc"),
])
def test_specnet_refuses_what_it_cannot_build(spec, match):
    with pytest.raises(ValueError, match=match):
        SpecNet(spec)


def test_specnet_checks_input_shape():
    net = SpecNet(pattern_spec(1, 1, 1, input_shape=(3, 8, 8), filters=2, hidden=3), seed=0)
    with pytest.raises(ValueError):
        net.loss(np.zeros((2, 3, 4, 16)))


def test_specnet_test_mode_keeps_less_memory():
    net = SpecNet(pattern_spec(2, 2, 1, input_shape=(3, 16, 16), filters=8, hidden=10), seed=0)
    X = np.random.default_rng(0).standard_normal((8, 3, 16, 16)).astype(np.float32)
    _, _, kept = traced_memory(net.loss, X)
    assert kept < 8 * 10 * 4 + 10_000  # the scores and little else remain


# ---------------------------------------------------------------- sizing rules


def test_sizing_rules_pass_for_the_pattern_and_vgg():
    assert check_sizing_rules(pattern_spec(2, 3, 1)) == []
    assert check_sizing_rules(vgg16()) == []


def test_sizing_rules_name_each_broken_rule():
    bad = [input_layer(1, 28), conv(8, 5), relu(), conv(16, 7, pad=3), relu(),
           conv(16, 4, stride=2, pad=1), relu(), pool(3, 2, rounding="floor"), fc(10)]
    messages = check_sizing_rules(bad)
    assert [m.split(":")[0] for m in messages] == [
        "input", "conv1", "conv2", "conv3", "conv3", "pool1", "pool1"]
    assert "28" in messages[0] and "P=(F-1)/2=2" in messages[1] and "7x7" in messages[2]
    assert "S=2" in messages[3] and "F=4" in messages[4] and "F=3, S=2" in messages[5]
    assert "round" in messages[6]


def test_pattern_breaks_rules_with_large_filters_or_small_inputs():
    assert check_sizing_rules(pattern_spec(2, 3, 1, filter_size=5)) == []
    assert len(check_sizing_rules(pattern_spec(2, 2, 1, filter_size=7))) == 3
    assert check_sizing_rules(pattern_spec(2, 2, 1, input_shape=(1, 28, 28)))[0].startswith(
        "input")
    with pytest.raises(ValueError, match="does not tile"):
        check_sizing_rules(pattern_spec(2, 2, 1, filter_size=4))


def test_sizing_rules_look_inside_residual_blocks():
    names = {m.split(":")[0] for m in check_sizing_rules(resnet(18))}
    assert names == {"conv1", "pool1", *(f"conv{i}_1/{path}/conv1" for i in (3, 4, 5)
                                         for path in ("body", "shortcut"))}
    block = [input_layer(8, 16), residual([conv(8, 3, pad=1), batchnorm(), relu(),
                                           conv(8, 3, pad=1), batchnorm()]), relu()]
    assert check_sizing_rules(block) == []


def test_first_layer_may_have_a_large_filter():
    spec = [input_layer(3, 32), conv(8, 7, pad=3), relu(), pool(2), fc(10)]
    assert check_sizing_rules(spec) == []


# ---------------------------------------------------------------- case studies


def test_case_study_totals_against_published_figures():
    totals = {f.__name__: table_totals(layer_table(f()))
              for f in (lenet5, alexnet, zfnet, googlenet, vgg16)}
    assert totals["lenet5"]["params"] == 61_706            # 60,000 + 900 - 44 + 850
    assert abs(totals["alexnet"]["params"] / 60e6 - 1) < 0.02
    assert totals["vgg16"]["params"] == 138_357_544
    assert totals["vgg16"]["activations"] == 15_237_608
    assert abs(totals["vgg16"]["macs"] / 15.3e9 - 1) < 0.02
    assert abs(totals["googlenet"]["weights"] / (6797.7 * 1024) - 1) < 0.01
    assert abs(totals["googlenet"]["macs"] / 1.5e9 - 1) < 0.1
    zf = {r["name"]: r["shape"][1] for r in layer_table(zfnet())}
    assert [zf[n] for n in ("conv1", "pool1", "conv2", "pool2", "pool5")] == [110, 55, 26, 13, 6]


def test_batchnorm_and_bias_free_conv_counts():
    rows = layer_table([input_layer(3, 8), conv(4, 3, pad=1, bias=False), batchnorm()])
    assert rows[1]["params"] == rows[1]["weights"] == 4 * 3 * 9 and rows[1]["biases"] == 0
    assert (rows[2]["weights"], rows[2]["biases"], rows[2]["macs"]) == (4, 4, 0)
    assert rows[2]["shape"] == (4, 8, 8) and rows[2]["activations"] == 4 * 8 * 8


def test_residual_block_counts_both_paths_and_the_sum():
    body = [conv(8, 3, 2, 1, rounding="floor", bias=False), batchnorm(), relu(),
            conv(8, 3, pad=1, bias=False), batchnorm()]
    shortcut = [conv(8, 1, 2, rounding="floor", bias=False), batchnorm()]
    rows = layer_table([input_layer(4, 8), residual(body, shortcut, name="block")])
    inner = layer_table([input_layer(4, 8), *body])[1:] + layer_table(
        [input_layer(4, 8), *shortcut])[1:]
    assert rows[1]["shape"] == (8, 4, 4) and rows[1]["name"] == "block"
    for key in ("params", "weights", "biases", "macs"):
        assert rows[1][key] == sum(r[key] for r in inner)
    assert rows[1]["activations"] == sum(r["activations"] for r in inner) + 8 * 4 * 4
    identity = layer_table([input_layer(8, 4), residual([conv(8, 3, pad=1)])])[1]
    assert identity["params"] == 8 * 8 * 9 + 8 and identity["activations"] == 2 * 8 * 4 * 4


def test_padded_pool_rounds_down_like_pytorch():
    rows = layer_table([input_layer(64, 112), pool(3, 2, pad=1, rounding="floor")])
    assert rows[1]["shape"] == (64, 56, 56)
    with pytest.raises(ValueError, match="not an integer"):
        layer_table([input_layer(64, 112), pool(3, 2, pad=1)])


@pytest.mark.parametrize("depth, params, gmacs", [
    (18, 11_689_512, 1.8), (34, 21_797_672, 3.6), (50, 25_557_032, 3.8),
    (101, 44_549_160, 7.6), (152, 60_192_808, 11.3),
])
def test_resnet_counts_match_torchvision_and_table1(depth, params, gmacs):
    totals = table_totals(layer_table(resnet(depth)))
    assert totals["params"] == params  # torchvision's resnet{depth}
    assert abs(totals["macs"] / (gmacs * 1e9) - 1) < 0.02  # He et al. (2016), Table 1
    shapes = {r["name"]: r["shape"] for r in layer_table(resnet(depth))}
    assert shapes["pool1"] == (64, 56, 56) and shapes["avgpool"][1:] == (1, 1)


def test_resnet50_stride_placement_changes_macs_not_params():
    a, b = (table_totals(layer_table(resnet(50, stride_in_3x3=s))) for s in (False, True))
    assert a["params"] == b["params"] and 1.05 < b["macs"] / a["macs"] < 1.07
    with pytest.raises(ValueError, match="depth"):
        resnet(20)


def test_googlenet_output_sizes_match_table1():
    shapes = {r["name"]: r["shape"] for r in layer_table(googlenet())}
    depths = {"3a": 256, "3b": 480, "4a": 512, "4b": 512, "4c": 512, "4d": 528, "4e": 832,
              "5a": 832, "5b": 1024}  # Szegedy et al. (2015), Table 1
    sides = {"3": 28, "4": 14, "5": 7}
    for name, depth in depths.items():
        assert shapes[f"inception{name}"] == (depth, sides[name[0]], sides[name[0]])
    assert shapes["conv1"] == (64, 112, 112) and shapes["pool1"] == (64, 56, 56)
    assert shapes["avgpool"] == (1024, 1, 1) and shapes["linear"] == (1000, 1, 1)


def test_alexnet_neurons_after_the_first_layer_match_the_paper():
    acts = {r["name"]: r["activations"] for r in layer_table(alexnet())}
    names = ("conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")
    assert [acts[n] for n in names] == [186_624, 64_896, 64_896, 43_264, 4096, 4096, 1000]
    assert table_totals(layer_table(alexnet()))["params"] == 60_965_224


def test_traced_memory_sees_numpy():
    _, peak, kept = traced_memory(np.ones, 1_000_000)
    assert kept >= 8_000_000 and peak >= kept
