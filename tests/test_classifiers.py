"""Unit tests of cnnbook.classifiers (defined in book/fc_nets.md): TwoLayerNet and FullyConnectedNet."""
import numpy as np
import pytest

import cnnbook.layers
from cnnbook.classifiers import FullyConnectedNet, TwoLayerNet
from cnnbook.gradient_check import eval_numerical_gradient, rel_error

N, D, C = 3, 5, 7


@pytest.fixture
def batch():
    rng = np.random.default_rng(0)
    return rng.standard_normal((N, D)), rng.integers(C, size=N)


def max_grad_error(model, X, y):
    """Largest relative error between the analytic and the numerical gradient over all params."""
    _, grads = model.loss(X, y)
    assert set(grads) == set(model.params)
    errors = {}
    for name in grads:
        assert grads[name].shape == model.params[name].shape
        num = eval_numerical_gradient(lambda _: model.loss(X, y)[0], model.params[name], verbose=False)
        errors[name] = rel_error(grads[name], num)
    return max(errors.values()), errors


# ---------------------------------------------------------------- TwoLayerNet


def test_two_layer_params_and_scores_shape():
    net = TwoLayerNet(input_dim=12, hidden_dim=6, num_classes=4, seed=0)
    assert {k: v.shape for k, v in net.params.items()} == {"W1": (12, 6), "b1": (6,), "W2": (6, 4), "b2": (4,)}
    assert all(v.dtype == np.float64 for v in net.params.values())
    assert not net.params["b1"].any() and not net.params["b2"].any()
    scores = net.loss(np.ones((9, 3, 2, 2)))  # trailing dimensions are flattened
    assert scores.shape == (9, 4)


def test_two_layer_initial_loss_is_log_num_classes():
    rng = np.random.default_rng(1)
    net = TwoLayerNet(input_dim=30, hidden_dim=20, num_classes=10, weight_scale=1e-4, seed=1)
    loss, _ = net.loss(rng.standard_normal((40, 30)), rng.integers(10, size=40))
    assert abs(loss - np.log(10)) < 1e-3


def test_two_layer_hand_computed_scores():
    net = TwoLayerNet(input_dim=2, hidden_dim=2, num_classes=2)
    net.params = {
        "W1": np.array([[1.0, -1.0], [0.0, 2.0]]),
        "b1": np.array([0.0, 1.0]),
        "W2": np.array([[1.0, 0.0], [1.0, 3.0]]),
        "b2": np.array([0.5, 0.0]),
    }
    # h = relu([1, 1] @ W1 + b1) = relu([1, 2]) = [1, 2]; s = h @ W2 + b2 = [3.5, 6]
    assert np.allclose(net.loss(np.array([[1.0, 1.0]])), [[3.5, 6.0]])


@pytest.mark.parametrize("reg", [0.0, 3.14])
def test_two_layer_gradient_check(batch, reg):
    X, y = batch
    net = TwoLayerNet(input_dim=D, hidden_dim=10, num_classes=C, weight_scale=1e-1, reg=reg, seed=2)
    worst, errors = max_grad_error(net, X, y)
    assert worst < 1e-6, errors


def test_two_layer_regularization_term(batch):
    X, y = batch
    plain = TwoLayerNet(input_dim=D, hidden_dim=10, num_classes=C, weight_scale=1e-1, reg=0.0, seed=3)
    reg = TwoLayerNet(input_dim=D, hidden_dim=10, num_classes=C, weight_scale=1e-1, reg=0.7, seed=3)
    loss0, grads0 = plain.loss(X, y)
    loss1, grads1 = reg.loss(X, y)
    W1, W2 = plain.params["W1"], plain.params["W2"]
    assert np.isclose(loss1 - loss0, 0.5 * 0.7 * (np.sum(W1**2) + np.sum(W2**2)))
    assert np.allclose(grads1["W1"] - grads0["W1"], 0.7 * W1)
    assert np.allclose(grads1["W2"] - grads0["W2"], 0.7 * W2)
    assert np.array_equal(grads1["b1"], grads0["b1"]) and np.array_equal(grads1["b2"], grads0["b2"])


def test_two_layer_seed_reproducible():
    a, b = TwoLayerNet(seed=5), TwoLayerNet(seed=5)
    assert all(np.array_equal(a.params[k], b.params[k]) for k in a.params)


def test_two_layer_rejects_bad_input(batch):
    X, y = batch
    net = TwoLayerNet(input_dim=D, hidden_dim=4, num_classes=C)
    with pytest.raises(ValueError, match=r"input_dim=5"):
        net.loss(np.zeros((N, D + 1)))
    with pytest.raises(ValueError, match=r"\[0, 7\)"):
        net.loss(X, np.array([0, 7, 1]))
    with pytest.raises(ValueError, match=r"shape"):
        net.loss(X, y[:2])


# ---------------------------------------------------------- FullyConnectedNet


def test_fc_params_shapes_dtype_and_init():
    net = FullyConnectedNet([4, 6], input_dim=12, num_classes=3, weight_scale=0.5, seed=0)
    shapes = {k: v.shape for k, v in net.params.items()}
    assert shapes == {"W1": (12, 4), "b1": (4,), "W2": (4, 6), "b2": (6,), "W3": (6, 3), "b3": (3,)}
    assert net.num_layers == 3
    assert all(v.dtype == np.float32 for v in net.params.values())
    # W1 is weight_scale * default_rng(seed).standard_normal, cast to the dtype
    expected = (0.5 * np.random.default_rng(0).standard_normal((12, 4))).astype(np.float32)
    assert np.array_equal(net.params["W1"], expected)
    assert not any(net.params[f"b{i}"].any() for i in (1, 2, 3))
    assert net.dropout_param == {} and net.bn_params == []


def test_fc_scores_shape_and_float32_throughout():
    rng = np.random.default_rng(1)
    net = FullyConnectedNet([8, 8, 8], input_dim=2 * 3 * 3, num_classes=4, seed=1)
    X = rng.standard_normal((6, 2, 3, 3))  # float64 input is cast to the model's dtype
    scores = net.loss(X)
    assert scores.shape == (6, 4) and scores.dtype == np.float32
    loss, grads = net.loss(X, rng.integers(4, size=6))
    assert np.isfinite(loss)
    assert all(g.dtype == np.float32 for g in grads.values())


@pytest.mark.parametrize("hidden_dims", [[2, 4], [6, 8, 4]])
@pytest.mark.parametrize("reg", [0.0, 3.14])
def test_fc_gradient_check(batch, hidden_dims, reg):
    X, y = batch
    net = FullyConnectedNet(hidden_dims, input_dim=D, num_classes=C, reg=reg, weight_scale=5e-1, dtype=np.float64, seed=3)
    worst, errors = max_grad_error(net, X, y)
    assert worst < 1e-6, errors


def test_fc_regularization_term(batch):
    X, y = batch
    kwargs = dict(input_dim=D, num_classes=C, weight_scale=0.3, dtype=np.float64, seed=4)
    plain, reg = FullyConnectedNet([5, 5], reg=0.0, **kwargs), FullyConnectedNet([5, 5], reg=2.0, **kwargs)
    (loss0, grads0), (loss1, grads1) = plain.loss(X, y), reg.loss(X, y)
    Ws = [plain.params[f"W{i}"] for i in (1, 2, 3)]
    assert np.isclose(loss1 - loss0, 0.5 * 2.0 * sum(np.sum(W**2) for W in Ws))
    for i, W in enumerate(Ws, start=1):
        assert np.allclose(grads1[f"W{i}"] - grads0[f"W{i}"], 2.0 * W)
        assert np.array_equal(grads1[f"b{i}"], grads0[f"b{i}"])


@pytest.mark.parametrize("hidden_dims", [[6, 8], [6, 8, 4, 5]])
def test_fc_homogeneity_scaling(batch, hidden_dims):
    """The chapter's scaling argument: with zero biases, weights scaled by a multiply the scores
    by a**L, and (while the softmax stays uniform, i.e. tiny scores) every weight gradient by
    a**(L - 1)."""
    X, y = batch
    L, a = len(hidden_dims) + 1, 4.0  # a power of two: the scaling of the scores is exact
    kwargs = dict(input_dim=D, num_classes=C, weight_scale=1e-3, dtype=np.float64, seed=5)
    net, scaled = FullyConnectedNet(hidden_dims, **kwargs), FullyConnectedNet(hidden_dims, **kwargs)
    for i in range(1, L + 1):
        scaled.params[f"W{i}"] = a * net.params[f"W{i}"]
    assert np.array_equal(scaled.loss(X), a**L * net.loss(X))
    (_, grads), (_, grads_scaled) = net.loss(X, y), scaled.loss(X, y)
    for i in range(1, L + 1):
        expected = a ** (L - 1) * grads[f"W{i}"]
        assert np.linalg.norm(grads_scaled[f"W{i}"] - expected) < 1e-4 * np.linalg.norm(expected)


def test_fc_with_one_hidden_layer_equals_two_layer_net(batch):
    X, y = batch
    two = TwoLayerNet(input_dim=D, hidden_dim=6, num_classes=C, weight_scale=0.5, reg=0.7, seed=3)
    fc = FullyConnectedNet([6], input_dim=D, num_classes=C, weight_scale=0.5, reg=0.7, dtype=np.float64, seed=3)
    (loss_two, grads_two), (loss_fc, grads_fc) = two.loss(X, y), fc.loss(X, y)
    assert abs(loss_two - loss_fc) < 1e-12
    assert all(np.array_equal(two.params[k], fc.params[k]) for k in two.params)
    assert all(np.array_equal(grads_two[k], grads_fc[k]) for k in grads_two)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(hidden_dims=[]), "hidden_dims"),
        (dict(hidden_dims=[4, 0]), "hidden_dims"),
        (dict(hidden_dims=[4, -2]), "hidden_dims"),
        (dict(hidden_dims=[4], normalization="groupnorm"), "normalization"),
        (dict(hidden_dims=[4], dropout_keep_ratio=0), "dropout_keep_ratio"),
        (dict(hidden_dims=[4], dropout_keep_ratio=1.5), "dropout_keep_ratio"),
        (dict(hidden_dims=[4], input_dim=0), "input_dim"),
    ],
)
def test_fc_constructor_validates(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FullyConnectedNet(**kwargs)


def test_fc_loss_validates_inputs(batch):
    X, y = batch
    net = FullyConnectedNet([4], input_dim=D, num_classes=C, dtype=np.float64)
    with pytest.raises(ValueError, match=r"\(3, 2, 3\).*input_dim=5"):
        net.loss(np.zeros((3, 2, 3)))
    with pytest.raises(ValueError, match=r"from -1 to"):
        net.loss(X, np.array([0, -1, 2]))
    with pytest.raises(ValueError, match=r"\[0, 7\)"):
        net.loss(X, np.array([0, 1, 9]))
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        net.loss(X, np.array([[0, 1, 2]]))


# ------------------------------------- optional layers from later chapters


@pytest.mark.parametrize(
    "normalization, missing, chapter",
    [
        ("batchnorm", "batchnorm_forward", "Normalization chapter"),
        ("batchnorm", "batchnorm_backward", "Normalization chapter"),
        ("layernorm", "layernorm_forward", "Normalization chapter"),
        ("layernorm", "layernorm_backward", "Normalization chapter"),
    ],
)
def test_fc_normalization_missing_layer(monkeypatch, normalization, missing, chapter):
    for name in ("batchnorm_forward", "batchnorm_backward", "layernorm_forward", "layernorm_backward"):
        monkeypatch.setattr(cnnbook.layers, name, lambda *a: None, raising=False)
    monkeypatch.delattr(cnnbook.layers, missing)
    with pytest.raises(NotImplementedError, match=rf"{missing}.*{chapter}"):
        FullyConnectedNet([4], normalization=normalization)


@pytest.mark.parametrize("missing", ["dropout_forward", "dropout_backward"])
def test_fc_dropout_missing_layer(monkeypatch, missing):
    for name in ("dropout_forward", "dropout_backward"):
        monkeypatch.setattr(cnnbook.layers, name, lambda *a: None, raising=False)
    monkeypatch.delattr(cnnbook.layers, missing)
    with pytest.raises(NotImplementedError, match=rf"{missing}.*Dropout chapter"):
        FullyConnectedNet([4], dropout_keep_ratio=0.5)
    FullyConnectedNet([4], dropout_keep_ratio=1)  # no dropout: nothing is needed


class FakeNorm:
    """Stand-in for a normalization layer: out = gamma * x + beta, with a correct backward pass.
    Records the mode it sees, so the tests can check the wiring of FullyConnectedNet."""

    def __init__(self):
        self.modes = []

    def forward(self, x, gamma, beta, param):
        self.modes.append(param.get("mode"))
        return gamma * x + beta, (x, gamma)

    def backward(self, dout, cache):
        x, gamma = cache
        return dout * gamma, np.sum(dout * x, axis=0), np.sum(dout, axis=0)


@pytest.mark.parametrize("normalization", ["batchnorm", "layernorm"])
def test_fc_normalization_wiring(monkeypatch, batch, normalization):
    X, y = batch
    fake = FakeNorm()
    monkeypatch.setattr(cnnbook.layers, f"{normalization}_forward", fake.forward, raising=False)
    monkeypatch.setattr(cnnbook.layers, f"{normalization}_backward", fake.backward, raising=False)
    monkeypatch.delattr(cnnbook.layers, "batchnorm_backward_alt", raising=False)
    net = FullyConnectedNet([4, 6], input_dim=D, num_classes=C, normalization=normalization,
                            weight_scale=0.5, reg=0.1, dtype=np.float64, seed=0)
    assert net.bn_params == [{"mode": "train"}, {"mode": "train"}]
    for i, width in ((1, 4), (2, 6)):
        assert np.array_equal(net.params[f"gamma{i}"], np.ones(width))
        assert np.array_equal(net.params[f"beta{i}"], np.zeros(width))
    assert "gamma3" not in net.params and "beta3" not in net.params
    # perturb gamma/beta so that their gradients are exercised away from the initial values
    rng = np.random.default_rng(1)
    for i in (1, 2):
        net.params[f"gamma{i}"] += 0.3 * rng.standard_normal(net.params[f"gamma{i}"].shape)
        net.params[f"beta{i}"] += 0.3 * rng.standard_normal(net.params[f"beta{i}"].shape)
    worst, errors = max_grad_error(net, X, y)
    assert worst < 1e-6, errors
    fake.modes.clear()
    net.loss(X)
    assert fake.modes == ["test", "test"] and all(p["mode"] == "test" for p in net.bn_params)
    net.loss(X, y)
    assert fake.modes[2:] == ["train", "train"]


def test_fc_batchnorm_prefers_backward_alt(monkeypatch, batch):
    X, y = batch
    fake = FakeNorm()
    calls = []

    def alt(dout, cache):
        calls.append("alt")
        return fake.backward(dout, cache)

    def slow(dout, cache):
        calls.append("plain")
        return fake.backward(dout, cache)

    monkeypatch.setattr(cnnbook.layers, "batchnorm_forward", fake.forward, raising=False)
    monkeypatch.setattr(cnnbook.layers, "batchnorm_backward", slow, raising=False)
    monkeypatch.setattr(cnnbook.layers, "batchnorm_backward_alt", alt, raising=False)
    net = FullyConnectedNet([4], input_dim=D, num_classes=C, normalization="batchnorm", dtype=np.float64)
    net.loss(X, y)
    assert calls == ["alt"]


def test_fc_dropout_wiring(monkeypatch, batch):
    X, y = batch
    seen = []

    def dropout_forward(x, param):
        seen.append(dict(param))
        mask = np.ones_like(x) if param["mode"] == "test" else (np.arange(x.size).reshape(x.shape) % 2) / param["p"]
        return x * mask, mask

    def dropout_backward(dout, mask):
        return dout * mask

    monkeypatch.setattr(cnnbook.layers, "dropout_forward", dropout_forward, raising=False)
    monkeypatch.setattr(cnnbook.layers, "dropout_backward", dropout_backward, raising=False)
    net = FullyConnectedNet([6, 6], input_dim=D, num_classes=C, dropout_keep_ratio=0.5,
                            weight_scale=0.5, dtype=np.float64, seed=7)
    assert net.dropout_param == {"mode": "train", "p": 0.5, "seed": 7}
    assert "seed" not in FullyConnectedNet([6], dropout_keep_ratio=0.5).dropout_param
    worst, errors = max_grad_error(net, X, y)
    assert worst < 1e-6, errors
    seen.clear()
    net.loss(X)
    assert [p["mode"] for p in seen] == ["test", "test"]
    net.loss(X, y)
    assert [p["mode"] for p in seen[2:]] == ["train", "train"]
