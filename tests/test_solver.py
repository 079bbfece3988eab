"""Unit tests of cnnbook.solver and cnnbook.plotting (defined in book/fc_nets.md), on synthetic data."""
import pickle
import sys
import types

import numpy as np
import pytest

from cnnbook import optim
from cnnbook.classifiers import FullyConnectedNet
from cnnbook.solver import Solver

D, C = 10, 3


def blobs(n, seed, dtype=np.float32):
    """n examples of C well-separated Gaussian clusters in D dimensions."""
    rng = np.random.default_rng(seed)
    centers = 4.0 * np.eye(C, D)
    y = rng.integers(C, size=n)
    X = centers[y] + 0.5 * rng.standard_normal((n, D))
    return X.astype(dtype), y


@pytest.fixture
def data():
    X_train, y_train = blobs(300, seed=0)
    X_val, y_val = blobs(60, seed=1)
    return {"X_train": X_train, "y_train": y_train, "X_val": X_val, "y_val": y_val}


def small_model(dtype=np.float32, seed=0):
    return FullyConnectedNet([16], input_dim=D, num_classes=C, weight_scale=0.1, dtype=dtype, seed=seed)


def quiet(**kwargs):
    kwargs.setdefault("verbose", False)
    kwargs.setdefault("progress", False)
    return kwargs


def test_solver_learns_separable_data(data):
    model = small_model()
    solver = Solver(model, data, **quiet(update_rule="sgd", optim_config={"learning_rate": 0.05},
                                         num_epochs=5, batch_size=30, seed=0))
    solver.train()
    assert solver.train_acc_history[-1] == 1.0
    assert solver.best_val_acc >= 0.95
    assert solver.loss_history[-1] < 0.5 * solver.loss_history[0]
    assert solver.check_accuracy(data["X_val"], data["y_val"]) == solver.best_val_acc


def test_history_lengths_and_epochs(data):
    solver = Solver(small_model(), data, **quiet(num_epochs=3, batch_size=50, seed=0))
    solver.train()
    iterations = 3 * (300 // 50)
    assert len(solver.loss_history) == iterations
    assert len(solver.train_acc_history) == len(solver.val_acc_history) == 3 + 1
    assert solver.epoch == 3
    assert all(isinstance(v, float) for v in solver.loss_history)


def test_best_params_restored(data):
    model = small_model()
    solver = Solver(model, data, **quiet(optim_config={"learning_rate": 0.01}, num_epochs=4, batch_size=30, seed=0))
    solver.train()
    assert solver.best_val_acc == max(solver.val_acc_history)
    assert set(model.params) == set(solver.best_params)
    for k, v in solver.best_params.items():
        assert np.array_equal(model.params[k], v)
        assert model.params[k] is not v  # a copy: further training must not alter best_params
    assert solver.check_accuracy(data["X_val"], data["y_val"]) == solver.best_val_acc


class Counter:
    """A model with one parameter w, which the update rule below increments at every step;
    its predictions are right exactly when w is in ``good``."""

    def __init__(self, labels, good):
        self.params = {"w": np.zeros(1)}
        self.labels, self.good = labels, good

    def loss(self, X, y=None):
        scores = np.zeros((len(X), C))
        right = self.labels[: len(X)] if self.params["w"][0] in self.good else (self.labels[: len(X)] + 1) % C
        scores[np.arange(len(X)), right] = 1.0
        if y is None:
            return scores
        return 1.0, {"w": np.ones(1)}


def plus_one(w, dw, config=None):
    return w + 1.0, config


def test_best_params_are_those_of_the_best_epoch(data):
    val = {"X_train": data["X_val"], "y_train": data["y_val"], "X_val": data["X_val"], "y_val": data["y_val"]}
    model = Counter(data["y_val"], good={2.0})
    # 60 examples, batches of 30: 2 iterations per epoch; checks after steps 1, 2, 4, 6 (w = 1, 2, 4, 6)
    solver = Solver(model, val, **quiet(update_rule=plus_one, num_epochs=3, batch_size=30, seed=0))
    solver.train()
    assert solver.val_acc_history == [0.0, 1.0, 0.0, 0.0]
    assert solver.best_val_acc == 1.0
    assert solver.best_params["w"][0] == 2.0 and model.params["w"][0] == 2.0


def test_best_params_kept_even_if_accuracy_is_always_zero(data):
    val = {"X_train": data["X_val"], "y_train": data["y_val"], "X_val": data["X_val"], "y_val": data["y_val"]}
    model = Counter(data["y_val"], good=set())
    solver = Solver(model, val, **quiet(update_rule=plus_one, num_epochs=2, batch_size=30, seed=0))
    solver.train()
    assert solver.val_acc_history == [0.0, 0.0, 0.0]
    assert solver.best_params["w"][0] == 1.0 and model.params["w"][0] == 1.0  # the first check's parameters


def test_unknown_kwarg_is_an_error(data):
    with pytest.raises(ValueError, match="learning_rate"):
        Solver(small_model(), data, learning_rate=1e-3)
    with pytest.raises(ValueError, match="bogus.*typo|typo.*bogus"):
        Solver(small_model(), data, bogus=1, typo=2)


def test_unknown_update_rule_and_missing_data(data):
    with pytest.raises(ValueError, match="no_such_rule"):
        Solver(small_model(), data, update_rule="no_such_rule")
    with pytest.raises(ValueError, match="y_val"):
        Solver(small_model(), {k: v for k, v in data.items() if k != "y_val"})


def test_update_rule_by_name_is_looked_up_in_optim(data):
    solver = Solver(small_model(), data, **quiet(update_rule="sgd"))
    assert solver.update_rule is optim.sgd


def test_update_rule_callable_gets_one_config_per_parameter(data):
    calls = []

    def my_sgd(w, dw, config=None):
        calls.append((w.shape, dw.shape))
        assert w.dtype == dw.dtype == np.float32  # the solver does not upcast
        config["steps"] = config.get("steps", 0) + 1
        return w - config["learning_rate"] * dw, config

    model = small_model()
    solver = Solver(model, data, **quiet(update_rule=my_sgd, optim_config={"learning_rate": 0.05},
                                         num_epochs=2, batch_size=100, seed=0))
    solver.train()
    iterations = 2 * 3
    assert len(calls) == iterations * len(model.params)
    assert all(w == dw for w, dw in calls)
    assert set(solver.optim_configs) == set(model.params)
    assert all(c["steps"] == iterations for c in solver.optim_configs.values())
    assert len({id(c) for c in solver.optim_configs.values()}) == len(model.params)  # separate dicts
    assert solver.optim_config == {"learning_rate": 0.05}  # the template is not modified
    assert solver.loss_history[-1] < solver.loss_history[0]


def test_lr_decay_applied_once_per_epoch(data):
    solver = Solver(small_model(), data, **quiet(update_rule="sgd", optim_config={"learning_rate": 0.01},
                                                 lr_decay=0.5, num_epochs=3, batch_size=100, seed=0))
    solver.train()
    for config in solver.optim_configs.values():
        assert config["learning_rate"] == pytest.approx(0.01 * 0.5**3)


def test_checkpoints_written(data, tmp_path):
    name = str(tmp_path / "fc")
    solver = Solver(small_model(), data, **quiet(num_epochs=2, batch_size=100, checkpoint_name=name, seed=0))
    solver.train()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["fc_epoch_0.pkl", "fc_epoch_1.pkl", "fc_epoch_2.pkl"]
    with open(tmp_path / "fc_epoch_2.pkl", "rb") as f:
        checkpoint = pickle.load(f)
    assert checkpoint["epoch"] == 2
    assert checkpoint["batch_size"] == 100
    assert len(checkpoint["loss_history"]) == 6
    assert checkpoint["val_acc_history"] == solver.val_acc_history
    assert set(checkpoint["model"].params) == set(solver.model.params)


def test_float32_model_trains_in_float32(data):
    model = small_model(np.float32)
    solver = Solver(model, data, **quiet(update_rule="sgd", num_epochs=1, batch_size=50, seed=0))
    solver.train()
    assert all(v.dtype == np.float32 for v in model.params.values())
    assert all(v.dtype == np.float32 for v in solver.best_params.values())
    assert data["X_train"].dtype == np.float32  # the data were not converted in place either


def test_seed_makes_training_reproducible(data):
    runs = []
    for _ in range(2):
        solver = Solver(small_model(seed=3), data, **quiet(num_epochs=2, batch_size=20, seed=11))
        solver.train()
        runs.append((solver.loss_history, solver.train_acc_history, solver.val_acc_history))
    assert runs[0] == runs[1]
    other = Solver(small_model(seed=3), data, **quiet(num_epochs=2, batch_size=20, seed=12))
    other.train()
    assert other.loss_history != runs[0][0]


def test_check_accuracy_in_batches(data):
    class Oracle:
        params = {}

        def loss(self, X, y=None):
            assert y is None and len(X) <= 7
            return np.eye(C)[np.argmax(X[:, :C], axis=1)]  # the blob center is the largest coordinate

    solver = Solver(Oracle(), data, **quiet())
    assert solver.check_accuracy(data["X_val"], data["y_val"], batch_size=7) == 1.0
    assert solver.check_accuracy(data["X_val"], (data["y_val"] + 1) % C, batch_size=7) == 0.0
    assert solver.check_accuracy(data["X_val"], data["y_val"], num_samples=10, batch_size=7) == 1.0


def test_verbose_output(data, capsys):
    solver = Solver(small_model(), data, num_epochs=1, batch_size=100, print_every=2, progress=False, seed=0)
    solver.train()
    out = capsys.readouterr().out
    assert "(Iteration 1 / 3) loss:" in out and "(Iteration 3 / 3) loss:" in out
    assert "(Epoch 0 / 1) train acc:" in out and "(Epoch 1 / 1) train acc:" in out


def test_progress_bar_optional(data, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)  # as if tqdm were not installed
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    Solver(small_model(), data, **quiet(progress=True, num_epochs=1, batch_size=100)).train()
    assert capsys.readouterr().err == ""


class FakeTqdm:
    """Records what the Solver does with its progress bar."""

    instances = []

    def __init__(self, total=None, **kwargs):
        self.total, self.n, self.closed, self.lines = total, 0, False, []
        FakeTqdm.instances.append(self)

    def update(self, n=1):
        self.n += n

    def set_postfix(self, *args, **kwargs):
        pass

    def write(self, message):
        self.lines.append(message)

    def close(self):
        self.closed = True


def test_progress_bar_shown_unless_disabled(data, capsys, monkeypatch):
    fake_module = types.ModuleType("tqdm")
    fake_module.tqdm = FakeTqdm
    monkeypatch.setitem(sys.modules, "tqdm", fake_module)
    monkeypatch.setattr(FakeTqdm, "instances", [])
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    Solver(small_model(), data, num_epochs=2, batch_size=100, print_every=1, progress=True, seed=0).train()
    (bar,) = FakeTqdm.instances
    assert (bar.total, bar.n, bar.closed) == (6, 6, True)
    assert any("(Iteration 1 / 6)" in line for line in bar.lines)  # verbose output goes through the bar
    assert capsys.readouterr().out == ""
    # progress=False, or TQDM_DISABLE set: no bar at all
    Solver(small_model(), data, **quiet(progress=False, num_epochs=1, batch_size=100)).train()
    monkeypatch.setenv("TQDM_DISABLE", "1")
    Solver(small_model(), data, **quiet(progress=True, num_epochs=1, batch_size=100)).train()
    assert len(FakeTqdm.instances) == 1


def test_plotting_returns_figures(data):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cnnbook.plotting import plot_histories, plot_solver_history

    solvers = {}
    for rule in ("sgd", "adam"):
        solvers[rule] = Solver(small_model(), data, **quiet(update_rule=rule, num_epochs=2, batch_size=100, seed=0))
        solvers[rule].train()
    fig = plot_solver_history(solvers["sgd"], title="one run")
    assert isinstance(fig, matplotlib.figure.Figure) and len(fig.axes) == 2
    fig2 = plot_histories(solvers, title="two runs")
    assert len(fig2.axes) == 3
    assert [t.get_text() for t in fig2.axes[0].get_legend().get_texts()] == ["sgd", "adam"]
    fig3, axes = plt.subplots(1, 2)
    assert plot_solver_history(solvers["adam"], axes=axes) is fig3
    for f in (fig, fig2, fig3):
        plt.close(f)


class Recorder:
    """A model that records the first feature (the example's index) of every training batch."""

    def __init__(self):
        self.params = {"w": np.zeros(1)}
        self.batches = []

    def loss(self, X, y=None):
        if y is None:
            return np.zeros((len(X), C))
        self.batches.append(X[:, 0].astype(int))
        return 0.0, {"w": np.zeros(1)}


def indexed_data(n):
    X = np.arange(n, dtype=np.float64)[:, None]
    y = np.zeros(n, dtype=int)
    return {"X_train": X, "y_train": y, "X_val": X[:5], "y_val": y[:5]}


def test_sampling_permutation_visits_every_example_once_per_epoch():
    model = Recorder()
    solver = Solver(model, indexed_data(103), **quiet(sampling="permutation", num_epochs=3,
                                                      batch_size=10, seed=0))
    solver.train()
    assert solver.sampling == "permutation" and len(model.batches) == 3 * 10
    epochs = [np.concatenate(model.batches[e * 10:(e + 1) * 10]) for e in range(3)]
    for seen in epochs:
        assert len(seen) == 100 and len(np.unique(seen)) == 100  # no example twice in an epoch
    assert not np.array_equal(epochs[0], epochs[1])  # a new shuffle every epoch


def test_sampling_replacement_is_the_default_and_repeats_examples():
    model = Recorder()
    solver = Solver(model, indexed_data(1000), **quiet(num_epochs=1, batch_size=50, seed=0))
    solver.train()
    seen = np.concatenate(model.batches)
    assert solver.sampling == "replacement" and len(seen) == 1000
    assert 0.55 < len(np.unique(seen)) / 1000 < 0.72  # about 1 - 1/e = 63 % distinct


def test_sampling_replacement_draws_as_before():
    """The default draws rng.choice(num_train, batch_size) per step: outputs of chapters stay."""
    model = Recorder()
    Solver(model, indexed_data(60), **quiet(num_epochs=1, batch_size=20, seed=5)).train()
    rng = np.random.default_rng(5)
    for batch in model.batches:
        np.testing.assert_array_equal(batch, rng.choice(60, 20))


def test_sampling_permutation_batch_larger_than_the_data():
    model = Recorder()
    Solver(model, indexed_data(7), **quiet(sampling="permutation", num_epochs=2, batch_size=10,
                                           seed=0)).train()
    assert [sorted(b) for b in model.batches] == [list(range(7))] * 2


def test_sampling_is_validated(data):
    with pytest.raises(ValueError, match="sampling must be 'replacement' or 'permutation'.*'shuffle'"):
        Solver(small_model(), data, sampling="shuffle")
