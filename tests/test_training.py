"""Tests of the fast-training chapter (book/fast_training.md): the channels-last layers of
cnnbook.nhwc, FastConvNet, sgd_nesterov, softmax_loss_smooth and the Trainer of
cnnbook.training with its checkpoints (killed after an epoch, in the middle of writing a
checkpoint and during the evaluation, in a real subprocess, then resumed), the checks of its
settings, data and checkpoints, and a diverging run.

Everything runs on tiny synthetic uint8 images (no CIFAR-10) and tiny networks.
"""
import copy
import errno
import json
import os
import platform
import re
import signal
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from _support import ROOT

from cnnbook import nhwc, training
from cnnbook.classifiers import FastConvNet, whitening_filters
from cnnbook.gradient_check import eval_numerical_gradient_array, rel_error
from cnnbook.layers import (conv_backward_naive, conv_forward_naive, softmax_loss,
                            softmax_loss_smooth)
from cnnbook.optim import sgd_nesterov
from cnnbook.training import (CHECKPOINT_FORMAT, TRAINER_SETTINGS, CheckpointError, Trainer,
                              TrainingDiverged, channel_stats, load_checkpoint, normalize,
                              one_cycle_lr, random_crop_flip, save_checkpoint)


@pytest.fixture(autouse=True)
def _no_progress_bars(monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")


def _data(n_train=64, n_test=32, size=16, seed=0):
    """Random uint8 images (N, size, size, 3) with random labels in [0, 10)."""
    rng = np.random.default_rng(seed)
    X = rng.integers(0, 256, (n_train + n_test, size, size, 3), dtype=np.uint8)
    y = rng.integers(0, 10, n_train + n_test)
    return {"X_train": X[:n_train], "y_train": y[:n_train],
            "X_test": X[n_train:], "y_test": y[n_train:]}


def _model(data, widths=(4, 4, 4), **kwargs):
    X = data["X_train"]
    return FastConvNet(whitening_filters(normalize(X, *channel_stats(X))), widths=widths,
                       **kwargs)


def _trainer(data=None, widths=(4, 4, 4), **settings):
    data = _data() if data is None else data
    settings = {"epochs": 2, "batch_size": 16, "verbose": False, "threads": 1, **settings}
    return Trainer(_model(data, widths), data, **settings)


# ---------------------------------------------------------------- kill and resume

TRAIN_SCRIPT = """\
import json, os, signal, sys
import numpy as np
from cnnbook.classifiers import FastConvNet, whitening_filters
from cnnbook.training import Trainer, channel_stats, normalize

checkpoint, out, kill_at, where = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
rng = np.random.default_rng(0)
X = rng.integers(0, 256, (96, 16, 16, 3), dtype=np.uint8)
y = rng.integers(0, 10, 96)
data = {"X_train": X[:64], "y_train": y[:64], "X_test": X[64:], "y_test": y[64:]}
model = FastConvNet(whitening_filters(normalize(X[:64], *channel_stats(X[:64]))),
                    widths=(4, 4, 4))


def die():
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


class DieWhileWriting:
    # A file that kills the process once 1000 bytes have been written to it, in mid-write.
    def __init__(self, f):
        self.f, self.written = f, 0

    def write(self, data):
        data = bytes(data)
        self.written += len(data)
        if self.written > 1000:
            self.f.write(data[:len(data) // 2])
            self.f.flush()
            die()
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)


def on_epoch_end(trainer):  # the checkpoint of this epoch, test accuracy included, is written
    if where == "epoch-end" and trainer.epoch == kill_at:
        die()


real_savez, real_evaluate = np.savez, Trainer.evaluate


def savez(f, *args, **kwargs):  # the first write of epoch kill_at (before its evaluation)
    if where == "save" and trainer.epoch == kill_at:
        f = DieWhileWriting(f)
    return real_savez(f, *args, **kwargs)


def evaluate(self):
    if where == "evaluate" and self.epoch == kill_at:
        die()
    return real_evaluate(self)


np.savez, Trainer.evaluate = savez, evaluate
trainer = Trainer(model, data, epochs=3, batch_size=16, checkpoint=checkpoint,
                  on_epoch_end=on_epoch_end)
history = trainer.train()
arrays = {f"param/{k}": v for k, v in model.params.items()}
arrays.update({f"bn/{name}/{k}": v for name, bn in model.bn_params.items()
               for k, v in bn.items() if k.startswith("running_")})
np.savez(out, **arrays)
with open(out + ".json", "w") as f:
    json.dump(history, f)
print("finished", flush=True)
"""


def _run_script(folder, checkpoint, out, kill_at=0, where="nowhere"):
    script = folder / "train.py"
    script.write_text(TRAIN_SCRIPT)
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OPENBLAS_NUM_THREADS="1",
               OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TQDM_DISABLE="1")
    return subprocess.run([sys.executable, str(script), str(checkpoint), str(out),
                           str(kill_at), where], env=env, capture_output=True, text=True,
                          timeout=300)


def _describe(proc):
    return f"returncode {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"


def _results(out):
    """The parameters, batch-norm averages and history a finished script run wrote to ``out``."""
    with np.load(out) as z:
        arrays = {k: z[k] for k in z.files}
    return arrays, json.loads(Path(str(out) + ".json").read_text())


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The results of the script's run when nothing interrupts it."""
    folder = tmp_path_factory.mktemp("uninterrupted")
    proc = _run_script(folder, folder / "run.ckpt.npz", folder / "out.npz")
    assert proc.returncode == 0, _describe(proc)
    assert "resumed from" not in proc.stdout
    assert not list(folder.glob("*.tmp"))
    return _results(folder / "out.npz")


KILLS = {  # where: (epoch at which the process is killed, epoch in the checkpoint it leaves)
    "epoch-end": (1, 1),  # after the epoch and its two checkpoint writes
    "save": (2, 1),       # in the middle of writing the checkpoint of epoch 2
    "evaluate": (2, 2),   # evaluating epoch 2, after its checkpoint was written
}


@pytest.mark.parametrize("where", sorted(KILLS))
def test_killed_training_resumes_to_the_same_result_as_an_uninterrupted_one(tmp_path, where,
                                                                             uninterrupted):
    kill_at, kept = KILLS[where]
    checkpoint, out = tmp_path / "run.ckpt.npz", tmp_path / "resumed.npz"
    killed = _run_script(tmp_path, checkpoint, out, kill_at, where)
    assert killed.returncode == -signal.SIGKILL, _describe(killed)
    assert "epoch  1/3" in killed.stdout and "epoch  2/3" not in killed.stdout, _describe(killed)
    assert not out.exists()
    _, meta = load_checkpoint(checkpoint)
    assert meta["format"] == CHECKPOINT_FORMAT and meta["epoch"] == kept
    lengths = {key: len(values) for key, values in meta["history"].items()}
    pending = 1 if where == "evaluate" else 0  # the test accuracy of epoch 2 was never measured
    assert lengths == {"loss": kept, "train_acc": kept, "test_acc": kept - pending, "lr": kept,
                       "seconds": kept}
    stale = sorted(tmp_path.glob("*.tmp"))
    if where == "save":  # the half-written temporary file is left behind, and is no checkpoint
        assert len(stale) == 1 and stale[0].name.startswith("run.ckpt.npz.")
        assert stale[0].stat().st_size > 0
        with pytest.raises(CheckpointError, match="not a readable"):
            load_checkpoint(stale[0])
    else:
        assert not stale

    resumed = _run_script(tmp_path, checkpoint, out)
    assert resumed.returncode == 0, _describe(resumed)
    assert f"resumed from {checkpoint} after epoch {kept}" in resumed.stdout, _describe(resumed)
    assert f"epoch  {kept}/3  loss" not in resumed.stdout and "epoch  3/3  loss" in resumed.stdout
    assert (f"epoch  {kept}/3  test acc" in resumed.stdout) == (where == "evaluate")
    assert resumed.stdout.rstrip().endswith("finished")
    assert sorted(tmp_path.glob("*.tmp")) == stale  # the resumed run's writes left none
    _, final = load_checkpoint(checkpoint)
    assert final["epoch"] == 3 and all(len(v) == 3 for v in final["history"].values())

    (a, h_resumed), (b, h_fresh) = _results(out), uninterrupted
    assert sorted(a) == sorted(b) and any(k.startswith("bn/") for k in a)
    for k in a:
        assert a[k].dtype == b[k].dtype
        assert np.array_equal(a[k], b[k]), f"{k} differs after resuming"
    for key in ("loss", "train_acc", "test_acc", "lr"):
        assert h_resumed[key] == h_fresh[key], key
    assert len(h_resumed["seconds"]) == 3


# ---------------------------------------------------------------- determinism


def test_same_seed_same_parameters_other_seed_other_parameters():
    runs = {}
    for label, seed in (("a", 0), ("b", 0), ("c", 1)):
        trainer = _trainer(seed=seed)
        history = trainer.train()
        runs[label] = ({k: v.copy() for k, v in trainer.model.params.items()}, history)
    (pa, ha), (pb, hb), (pc, hc) = runs["a"], runs["b"], runs["c"]
    assert all(np.array_equal(pa[k], pb[k]) for k in pa)
    assert ha["loss"] == hb["loss"] and ha["test_acc"] == hb["test_acc"]
    assert not all(np.array_equal(pa[k], pc[k]) for k in pa)
    assert ha["loss"] != hc["loss"]


def test_training_changes_the_parameters_in_place():
    trainer = _trainer(epochs=1)
    arrays = dict(trainer.model.params)
    before = {k: v.copy() for k, v in arrays.items()}
    trainer.train()
    assert all(trainer.model.params[k] is arrays[k] for k in arrays)
    assert not np.array_equal(before["W1"], arrays["W1"])
    assert all(np.isfinite(v).all() for v in arrays.values())


# ---------------------------------------------------------------- settings and data


def test_numpy_settings_are_stored_as_python_numbers_and_the_checkpoint_is_written(tmp_path):
    path = tmp_path / "run.npz"
    trainer = _trainer(epochs=np.int64(1), batch_size=np.int32(16), learning_rate=np.float32(0.25),
                       warmup=np.float64(0.5), momentum=np.float32(0.5), weight_decay=np.int64(0),
                       pad=np.uint8(2), seed=np.int64(3), checkpoint=path)
    trainer.train()
    _, meta = load_checkpoint(path)
    assert meta["epoch"] == 1 and meta["settings"] == trainer.settings
    for name, (kind, _, _) in TRAINER_SETTINGS.items():
        assert type(trainer.settings[name]) is kind, name
    assert (trainer.epochs, trainer.batch_size, trainer.settings["pad"]) == (1, 16, 2)
    assert trainer.settings["learning_rate"] == 0.25 and trainer.settings["seed"] == 3
    assert type(trainer.epochs) is int and type(trainer.steps_per_epoch) is int


BAD_SETTINGS = [("epochs", 0), ("epochs", -1), ("epochs", 2.0), ("epochs", True),
                ("epochs", "2"), ("epochs", np.int64(0)), ("batch_size", -16), ("batch_size", 0),
                ("batch_size", None), ("learning_rate", 0), ("learning_rate", -0.1),
                ("learning_rate", float("nan")), ("learning_rate", float("inf")),
                ("learning_rate", "0.4"), ("warmup", 1.0), ("warmup", -0.1), ("momentum", 1),
                ("momentum", np.float32(-0.5)), ("weight_decay", -1e-4),
                ("weight_decay", float("nan")), ("pad", -1), ("pad", 1.5), ("seed", -1),
                ("seed", 0.5), ("seed", "0"), ("seed", None), ("lr_start", 1.5), ("lr_end", -0.1),
                ("bn_scale_lr", -1.0), ("bn_bias_lr", 0), ("reflect", 1), ("reflect", "yes"),
                ("alternate_flips", None), ("eval_images", 0), ("eval_images", 0.5)]


@pytest.mark.parametrize("name, value", BAD_SETTINGS,
                         ids=[f"{n}={v!r}" for n, v in BAD_SETTINGS])
def test_bad_setting_is_refused_before_any_work(monkeypatch, name, value):
    data = _data()
    model = _model(data)

    def no_work(*args, **kwargs):
        raise AssertionError("the trainer started working before checking its settings")

    for function in ("channel_stats", "_data_fingerprint", "_check_data"):
        monkeypatch.setattr(training, function, no_work)
    with pytest.raises(ValueError) as info:
        Trainer(model, data, **{"epochs": 2, "batch_size": 16, name: value})
    message = str(info.value)
    assert message.startswith(f"Trainer: {name} must be ") and message.endswith(f"got {value!r}")


def _drop(key):
    return lambda d: d.pop(key)


def _replace(key, change):
    return lambda d: d.update({key: change(d[key])})


BAD_DATA = {
    "no y_test": (_drop("y_test"), "data must be a dict"),
    "float images": (_replace("X_train", lambda X: X.astype(np.float32)), "data['X_train']"),
    "grey images": (_replace("X_train", lambda X: X[..., 0]), "data['X_train']"),
    "no test images": (lambda d: d.update(X_test=d["X_test"][:0], y_test=d["y_test"][:0]),
                       "data['X_test']"),
    "label missing": (_replace("y_train", lambda y: y[:-1]), "data['y_train'] must be 64"),
    "float labels": (_replace("y_test", lambda y: y.astype(float)), "data['y_test']"),
    "negative label": (_replace("y_train", lambda y: np.where(y == y[3], -1, y)), "negative"),
    "test images of another size": (_replace("X_test", lambda X: X[:, :12]), "differ in size"),
    "fewer images than a batch": (_replace("X_train", lambda X: X), "fewer than one batch"),
}


@pytest.mark.parametrize("case", sorted(BAD_DATA))
def test_bad_data_is_refused_before_any_work(monkeypatch, case):
    damage, words = BAD_DATA[case]
    data = _data()
    model = _model(data)
    damage(data)
    monkeypatch.setattr(training, "channel_stats", None)  # called only after the checks
    batch_size = 128 if case == "fewer images than a batch" else 16
    with pytest.raises(ValueError, match=re.escape(words)):
        Trainer(model, data, epochs=2, batch_size=batch_size)


# ---------------------------------------------------------------- a diverging run


def _poison(trainer, run_step, what):
    """Make the model's training loss (what="loss") or its W2 gradient (what="gradient") nan at
    step ``run_step`` (counted from 1) of the run; returns a dict that then receives a copy of
    the parameters as they were before that step."""
    real_loss, calls, before = trainer.model.loss, [0], {}

    def loss(X, y=None):
        if y is None:
            return real_loss(X)
        value, grads = real_loss(X, y)
        calls[0] += 1
        if calls[0] == run_step:
            before.update({k: v.copy() for k, v in trainer.model.params.items()})
            if what == "loss":
                value = np.float32(np.nan)
            else:
                grads["W2"] = grads["W2"].copy()  # may be all zeros: the tiny net's ReLUs die
                grads["W2"].flat[0] = np.inf
        return value, grads

    trainer.model.loss = loss
    return before


@pytest.mark.parametrize("what", ["loss", "gradient"])
def test_diverging_run_stops_before_the_update_and_keeps_the_last_good_checkpoint(tmp_path, what):
    path, written = tmp_path / "run.npz", {}
    trainer = _trainer(epochs=3, checkpoint=path,
                       on_epoch_end=lambda t: written.update({t.epoch: path.read_bytes()}))
    before = _poison(trainer, 6, what)  # 4 steps per epoch: step 2 of epoch 2
    with pytest.raises(TrainingDiverged) as info:
        trainer.train()
    message = str(info.value)
    assert "at epoch 2/3, step 2 of 4 (step 6 of the run)" in message, message
    assert f"{path} still holds epoch 1" in message
    assert ("the loss is nan" in message) == (what == "loss")
    n_params = len(trainer.model.params)
    assert (f"1 of {n_params} gradients are not finite (W2)" in message) == (what == "gradient")
    assert issubclass(TrainingDiverged, RuntimeError)
    for k, v in trainer.model.params.items():  # not updated with the bad gradients
        assert np.array_equal(v, before[k]), k
    assert list(written) == [1] and path.read_bytes() == written[1]
    assert not list(tmp_path.glob("*.tmp"))
    resumed = _trainer(epochs=3, checkpoint=path)  # the last good checkpoint still resumes
    resumed.train()
    assert resumed.epoch == 3


def test_far_too_high_learning_rate_is_stopped_with_the_last_good_checkpoint(tmp_path):
    path = tmp_path / "run.npz"
    trainer = _trainer(epochs=3, learning_rate=1e6, checkpoint=path)
    with np.errstate(all="ignore"), pytest.raises(TrainingDiverged) as info:
        trainer.train()
    epoch = int(re.search(r"diverged at epoch (\d)/3, step \d of 4 ", str(info.value)).group(1))
    if epoch == 1:
        assert not path.exists()
    else:
        arrays, meta = load_checkpoint(path)
        assert meta["epoch"] == epoch - 1 and f"{path} still holds epoch" in str(info.value)
        assert all(np.isfinite(a).all() for a in arrays.values())
        assert all(np.isfinite(v).all() for v in meta["history"]["loss"])


# ---------------------------------------------------------------- restoring a checkpoint


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """The checkpoint files of epochs 1 and 2 of a 2-epoch run of ``_trainer``."""
    folder = tmp_path_factory.mktemp("checkpoints")
    path, paths = folder / "run.npz", {}

    def keep(trainer):
        paths[trainer.epoch] = folder / f"epoch{trainer.epoch}.npz"
        paths[trainer.epoch].write_bytes(path.read_bytes())

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TQDM_DISABLE", "1")
        _trainer(epochs=2, checkpoint=path, on_epoch_end=keep).train()
    return paths


def _snapshot(trainer):
    """A copy of everything ``restore`` may change, and the identity of the parameter arrays."""
    return copy.deepcopy({
        "params": trainer.model.params, "bn_params": trainer.model.bn_params,
        "whitening": trainer.model.whitening, "configs": trainer.configs,
        "rng": trainer.rng.bit_generator.state, "epoch": trainer.epoch, "step": trainer.step,
        "history": trainer.history, "ids": {k: id(v) for k, v in trainer.model.params.items()}})


def _assert_same(a, b, where="trainer"):
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray), where
        assert (a.dtype, a.shape) == (b.dtype, b.shape) and np.array_equal(a, b), where
    else:
        assert type(a) is type(b) and a == b, where


def _set_array(key, change):
    return lambda arrays, meta: arrays.update({key: change(arrays.get(key))})


def _set_meta(*keys, value):
    def damage(arrays, meta):
        for key in keys[:-1]:
            meta = meta[key]
        meta[keys[-1]] = value
    return damage


def _delete(kind, key):
    return lambda arrays, meta: (arrays if kind == "array" else meta).pop(key)


CORRUPT = {  # name: (damage(arrays, meta) of the checkpoint of epoch 2, the entry named)
    "param dtype": (_set_array("param/W1", lambda a: a.astype(np.float64)), "param/W1"),
    "param shape": (_set_array("param/W_fc", lambda a: a[:, :5]), "param/W_fc"),
    "param nan": (_set_array("param/b_fc", lambda a: np.full_like(a, np.nan)), "param/b_fc"),
    "param missing": (_delete("array", "param/gamma2r"), "param/gamma2r"),
    "param unknown": (_set_array("param/W9", lambda a: np.zeros(3, np.float32)), "param/W9"),
    "velocity shape": (_set_array("velocity/W2", lambda a: a[:1]), "velocity/W2"),
    "velocity inf": (_set_array("velocity/W3", lambda a: a + np.inf), "velocity/W3"),
    "velocity missing": (_delete("array", "velocity/beta1"), "velocity/beta1"),
    "velocity unknown": (_set_array("velocity/nonexistent", lambda a: np.zeros(4, np.float32)),
                         "velocity/nonexistent"),
    "bn dtype": (_set_array("bn/1r/running_var", lambda a: a.astype(np.float16)),
                 "bn/1r/running_var"),
    "bn shape": (_set_array("bn/2/running_mean", lambda a: a[None]), "bn/2/running_mean"),
    "bn missing": (_delete("array", "bn/3r/running_mean"), "bn/3r/running_mean"),
    "bn unknown eps": (_set_array("bn/1/eps", lambda a: np.array(1e-5, np.float32)), "bn/1/eps"),
    "bn unknown stat": (_set_array("bn/1/running_foo", lambda a: np.zeros(4, np.float32)),
                        "bn/1/running_foo"),
    "bn unknown layer": (_set_array("bn/7/running_mean", lambda a: np.zeros(4, np.float32)),
                         "bn/7/running_mean"),
    "whitening dtype": (_set_array("fixed/whitening", lambda a: a.astype(np.float64)),
                        "fixed/whitening"),
    "whitening values": (_set_array("fixed/whitening", lambda a: a * 2), "fixed/whitening"),
    "header missing": (_delete("meta", "rng"), "'rng' is missing"),
    "header unknown": (_set_meta("comment", value="hello"), "comment"),
    "rng other kind": (_set_meta("rng", value=np.random.MT19937(0).state), "rng"),
    "rng not a dict": (_set_meta("rng", value=[1, 2]), "rng"),
    "rng state a string": (_set_meta("rng", "state", "state", value="12"), "rng"),
    "rng state a float": (_set_meta("rng", "state", "inc", value=1.5), "rng"),
    "rng state negative": (_set_meta("rng", "state", "state", value=-1), "rng"),
    "rng extra entry": (_set_meta("rng", "seed", value=3), "rng"),
    "epoch too large": (_set_meta("epoch", value=3), "epoch"),
    "epoch negative": (_set_meta("epoch", value=-1), "epoch"),
    "epoch float": (_set_meta("epoch", value=2.0), "epoch"),
    "epoch bool": (_set_meta("epoch", value=True), "epoch"),
    "epoch string": (_set_meta("epoch", value="2"), "epoch"),
    "step inconsistent": (_set_meta("step", value=7), "step"),
    "step float": (_set_meta("step", value=8.0), "step"),
    "epoch and step of epoch 1": (lambda a, m: m.update(epoch=1, step=4), "history/loss"),
    "history not a dict": (_set_meta("history", value=[]), "history"),
    "history key missing": (lambda a, m: m["history"].pop("lr"), "history"),
    "history key unknown": (_set_meta("history", "val_acc", value=[0.1, 0.2]), "history"),
    "history list short": (lambda a, m: m["history"]["loss"].pop(), "history/loss"),
    "history test_acc empty": (_set_meta("history", "test_acc", value=[]), "history/test_acc"),
    "history not a list": (_set_meta("history", "lr", value="0.1"), "history/lr"),
    "history nan": (lambda a, m: m["history"]["seconds"].__setitem__(0, float("nan")),
                    "history/seconds"),
    "history string": (lambda a, m: m["history"]["train_acc"].__setitem__(1, "0.5"),
                       "history/train_acc"),
    "settings": (_set_meta("settings", "learning_rate", value=0.5), "settings"),
    "data": (_set_meta("data", value="sha256:0"), "the data differ"),
}


@pytest.mark.parametrize("case", sorted(CORRUPT))
def test_corrupt_entry_is_refused_by_name_and_changes_nothing(checkpoints, case):
    damage, entry = CORRUPT[case]
    arrays, meta = load_checkpoint(checkpoints[2])
    damage(arrays, meta)
    trainer = _trainer(epochs=2)
    trainer.restore(*load_checkpoint(checkpoints[1]))  # a trainer in the middle of its run
    before = _snapshot(trainer)
    with pytest.raises(CheckpointError) as info:
        trainer.restore(arrays, meta, source="/runs/bad.npz")
    message = str(info.value)
    assert message.startswith("/runs/bad.npz: ") and entry in message, message
    _assert_same(_snapshot(trainer), before)
    trainer.restore(*load_checkpoint(checkpoints[2]))  # a good checkpoint is still taken
    assert trainer.epoch == 2


@pytest.mark.parametrize("case", ["bn unknown eps", "rng state a float", "history list short"])
def test_train_refuses_a_corrupt_checkpoint_file_and_leaves_it_alone(tmp_path, checkpoints, case):
    damage, entry = CORRUPT[case]
    arrays, meta = load_checkpoint(checkpoints[1])
    damage(arrays, meta)
    path = tmp_path / "run.npz"
    save_checkpoint(path, arrays, {k: v for k, v in meta.items() if k != "format"})
    before = path.read_bytes()
    with pytest.raises(CheckpointError) as info:
        _trainer(epochs=2, checkpoint=path).train()
    assert str(info.value).startswith(f"{path}: ") and entry in str(info.value)
    assert path.read_bytes() == before


def test_restoring_an_untrained_state_removes_velocities_and_averages():
    fresh, trained = _trainer(), _trainer()
    arrays, meta = fresh.state()
    assert not [k for k in arrays if not k.startswith(("param/", "fixed/"))]
    arrays = {k: v.copy() for k, v in arrays.items()}
    meta = json.loads(json.dumps(meta))
    trained.train()
    trained.restore(arrays, meta)
    assert (trained.epoch, trained.step) == (0, 0)
    assert not any("velocity" in c for c in trained.configs.values())
    assert not any(k.startswith("running_") for bn in trained.model.bn_params.values() for k in bn)
    fresh.train()
    trained.train()
    for k, v in fresh.model.params.items():
        assert np.array_equal(trained.model.params[k], v), k


def test_checkpoint_of_other_training_data_is_refused(tmp_path):
    data, path = _data(), tmp_path / "run.npz"
    _trainer(data, epochs=1, checkpoint=path).train()
    before = path.read_bytes()
    one_pixel = dict(data, X_train=data["X_train"].copy())
    one_pixel["X_train"][5, 3, 2, 1] ^= 1
    one_label = dict(data, y_train=(data["y_train"] + np.arange(64) // 63) % 10)
    for other in (one_pixel, one_label):
        trainer = Trainer(_model(data), other, epochs=1, batch_size=16, checkpoint=path)
        with pytest.raises(CheckpointError, match="the data differ") as info:
            trainer.train()
        assert str(info.value).startswith(f"{path}: 'data'")
        assert trainer.data_fingerprint in str(info.value)
        assert path.read_bytes() == before
    same = dict(data, y_train=data["y_train"].astype(np.int32))  # labels of another int type
    trainer = Trainer(_model(data), same, epochs=1, batch_size=16)
    trainer.restore(*load_checkpoint(path))
    assert trainer.epoch == 1 and trainer.data_fingerprint.startswith("sha256:")


@pytest.mark.parametrize("change", [{"batch_size": 32}, {"widths": (4, 4, 8)}, {"seed": 3},
                                    {"weight_decay": 0.0}])
def test_checkpoint_of_a_run_with_other_settings_is_refused(tmp_path, change):
    path = tmp_path / "run.npz"
    _trainer(epochs=1, checkpoint=path).train()
    before = path.read_bytes()
    settings = {"epochs": 1, "checkpoint": path, **change}
    trainer = _trainer(**settings)
    with pytest.raises(CheckpointError, match="settings") as info:
        trainer.train()
    assert str(path) in str(info.value)
    assert path.read_bytes() == before  # the other run's checkpoint is not overwritten


@pytest.mark.parametrize("damage", ["shape", "missing"])
def test_checkpoint_with_wrong_parameters_is_refused(tmp_path, damage):
    path = tmp_path / "run.npz"
    trainer = _trainer(epochs=1, checkpoint=path)
    trainer.train()
    arrays, meta = load_checkpoint(path)
    if damage == "shape":
        arrays["param/W_fc"] = np.zeros((4, 3), np.float32)
    else:
        del arrays["param/W_fc"]
    meta.pop("format")
    save_checkpoint(path, arrays, meta)
    with pytest.raises(CheckpointError, match="W_fc"):
        _trainer(epochs=1, checkpoint=path).train()


def test_checkpoint_of_a_model_with_other_whitening_filters_is_refused(tmp_path):
    data = _data()
    path = tmp_path / "run.npz"
    Trainer(_model(data), data, epochs=1, batch_size=16, checkpoint=path, verbose=False).train()
    model = _model(data)
    model.whitening = model.whitening * 2
    with pytest.raises(CheckpointError, match="whitening"):
        Trainer(model, data, epochs=1, batch_size=16, checkpoint=path, verbose=False).train()


def test_checkpoint_of_a_model_with_other_class_count_is_refused(tmp_path):
    data = _data()
    data["y_train"], data["y_test"] = data["y_train"] % 5, data["y_test"] % 5
    path = tmp_path / "run.npz"
    Trainer(_model(data), data, epochs=1, batch_size=16, checkpoint=path, verbose=False).train()
    other = Trainer(_model(data, num_classes=5), data, epochs=1, batch_size=16, checkpoint=path,
                    verbose=False)
    with pytest.raises(CheckpointError, match="shape"):
        other.train()


def test_checkpoint_round_trip_restores_the_state(tmp_path):
    path = tmp_path / "run.npz"
    trainer = _trainer(epochs=2, checkpoint=path)
    trainer.train()
    other = _trainer(epochs=2, checkpoint=path)
    other.restore(*load_checkpoint(path))
    assert (other.epoch, other.step) == (2, trainer.step)
    assert other.history == json.loads(json.dumps(trainer.history))
    for k, v in trainer.model.params.items():
        assert np.array_equal(other.model.params[k], v)
        assert np.array_equal(other.configs[k]["velocity"], trainer.configs[k]["velocity"])
    assert other.rng.bit_generator.state == trainer.rng.bit_generator.state
    assert other.train() == other.history  # nothing left to do: no epoch runs


# ---------------------------------------------------------------- corrupt checkpoints


def _real_checkpoint(path):
    save_checkpoint(path, {"param/W": np.arange(2000.0).reshape(40, 50)}, {"epoch": 1})
    return path


@pytest.mark.parametrize("kind", ["garbage", "truncated", "flipped byte", "empty", "directory"])
def test_unreadable_checkpoint_raises_checkpoint_error_naming_the_path(tmp_path, kind):
    path = tmp_path / "bad.npz"
    if kind == "garbage":
        path.write_bytes(b"this is not a checkpoint \x00\x01\x02\xff" * 20)
    elif kind == "truncated":
        data = _real_checkpoint(tmp_path / "good.npz").read_bytes()
        path.write_bytes(data[:len(data) // 2])
    elif kind == "flipped byte":  # the zip's CRC-32 notices
        data = bytearray(_real_checkpoint(tmp_path / "good.npz").read_bytes())
        data[data.index(b"param/W.npy") + 500] ^= 0xFF
        path.write_bytes(bytes(data))
    elif kind == "empty":
        path.write_bytes(b"")
    else:
        path.mkdir()
    with pytest.raises(CheckpointError, match=re.escape(str(path))):
        load_checkpoint(path)
    assert issubclass(CheckpointError, ValueError)


def test_npy_file_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "array.npy"
    np.save(path, np.arange(3))
    with pytest.raises(CheckpointError, match=re.escape(str(path))):
        load_checkpoint(path)


def test_npz_without_header_raises_checkpoint_error(tmp_path):
    path = tmp_path / "plain.npz"
    np.savez(path, a=np.ones(3))
    with pytest.raises(CheckpointError, match="cnnbook checkpoint") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("header", [
    json.dumps({"format": "other-program/3", "epoch": 1}),
    json.dumps({"format": "cnnbook-checkpoint/1", "epoch": 1}),  # the format before data checks
    json.dumps({"epoch": 1}),
    json.dumps(["cnnbook-checkpoint/1"]),
    "{not json",
])
def test_header_of_another_format_raises_checkpoint_error(tmp_path, header):
    path = tmp_path / "other.npz"
    np.savez(path, __header__=np.array(header), w=np.ones(2))
    with pytest.raises(CheckpointError, match=re.escape(str(path))) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert "format" in message or "cnnbook checkpoint" in message
    if header.startswith('{"format"'):
        assert json.loads(header)["format"] in message and CHECKPOINT_FORMAT in message


# ---------------------------------------------------------------- atomic writes


def test_save_checkpoint_round_trip_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "ckpt.npz"
    arrays = {"param/W": np.arange(6, dtype=np.float32).reshape(2, 3), "v": np.ones(2)}
    save_checkpoint(path, arrays, {"epoch": 3, "history": {"loss": [0.5]}})
    save_checkpoint(path, arrays, {"epoch": 4, "history": {"loss": [0.5, 0.25]}})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.npz"]
    loaded, meta = load_checkpoint(path)
    assert meta == {"format": CHECKPOINT_FORMAT, "epoch": 4, "history": {"loss": [0.5, 0.25]}}
    assert loaded.keys() == arrays.keys()
    for k in arrays:
        assert loaded[k].dtype == arrays[k].dtype and np.array_equal(loaded[k], arrays[k])


def _record_syncs(monkeypatch, events, directory_errno=None):
    """Record os.fsync (of a file or a directory) and os.replace calls in ``events``; with
    ``directory_errno``, an fsync of a directory fails with that error."""
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        kind = "directory" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"
        events.append(("fsync", kind))
        if kind == "directory" and directory_errno is not None:
            raise OSError(directory_errno, os.strerror(directory_errno))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", Path(src), Path(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(training.os, "fsync", fsync)
    monkeypatch.setattr(training.os, "replace", replace)


def test_save_checkpoint_syncs_the_file_renames_it_then_syncs_the_directory(tmp_path,
                                                                            monkeypatch):
    path, events = tmp_path / "ckpt.npz", []
    _record_syncs(monkeypatch, events)
    save_checkpoint(path, {"w": np.ones(3)}, {"epoch": 1})
    assert [e[:2] if e[0] == "fsync" else e[0] for e in events] == [
        ("fsync", "file"), "replace", ("fsync", "directory")]
    tmp, target = events[1][1:]
    assert target == path and tmp.parent == tmp_path
    assert re.fullmatch(r"ckpt\.npz\..+\.tmp", tmp.name), tmp.name


def test_save_checkpoint_where_directories_cannot_be_synced(tmp_path, monkeypatch):
    events = []
    _record_syncs(monkeypatch, events, directory_errno=errno.EINVAL)
    save_checkpoint(tmp_path / "a.npz", {"w": np.ones(3)}, {"epoch": 1})  # EINVAL: no error
    assert events[-1] == ("fsync", "directory")
    monkeypatch.setattr(training, "_O_DIRECTORY", None)  # as on Windows: not even tried
    events.clear()
    save_checkpoint(tmp_path / "b.npz", {"w": np.ones(3)}, {"epoch": 2})
    assert ("fsync", "directory") not in events and load_checkpoint(tmp_path / "b.npz")[1]["epoch"]


def test_save_checkpoint_reports_a_failed_directory_sync(tmp_path, monkeypatch):
    _record_syncs(monkeypatch, [], directory_errno=errno.EIO)
    with pytest.raises(OSError, match="Input/output error|I/O"):
        save_checkpoint(tmp_path / "a.npz", {"w": np.ones(3)}, {"epoch": 1})


def test_stale_temporary_files_do_not_get_in_the_way(tmp_path):
    path = tmp_path / "ckpt.npz"
    stale = [tmp_path / "ckpt.npz.tmp", tmp_path / "ckpt.npz.k1ll3d.tmp"]
    for p in stale:
        p.write_bytes(b"PK\x03\x04 half of a killed write")
        p.chmod(0o400)  # not even writable
    save_checkpoint(path, {"w": np.ones(3)}, {"epoch": 1})
    save_checkpoint(path, {"w": np.zeros(3)}, {"epoch": 2})
    assert load_checkpoint(path)[1]["epoch"] == 2
    assert sorted(tmp_path.iterdir()) == sorted([path, *stale])
    assert all(p.read_bytes() == b"PK\x03\x04 half of a killed write" for p in stale)


def test_header_that_is_not_json_fails_before_any_file_is_written(tmp_path):
    path = tmp_path / "ckpt.npz"
    save_checkpoint(path, {"w": np.ones(3)}, {"epoch": 1})
    before = path.read_bytes()
    with pytest.raises(TypeError, match="int64"):
        save_checkpoint(path, {"w": np.ones(3)}, {"epoch": np.int64(2)})
    assert path.read_bytes() == before and sorted(tmp_path.iterdir()) == [path]


def _failing_savez(f, *args, **kwargs):
    f.write(b"PK\x03\x04 half of a zip file")
    raise OSError("no space left on device (simulated)")


def test_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.npz"
    old = {"param/W": np.full((3, 3), 7.0)}
    save_checkpoint(path, old, {"epoch": 1})
    monkeypatch.setattr(training.np, "savez", _failing_savez)
    with pytest.raises(OSError, match="simulated"):
        save_checkpoint(path, {"param/W": np.zeros((3, 3))}, {"epoch": 2})
    assert not list(tmp_path.glob("*.tmp"))
    monkeypatch.undo()
    arrays, meta = load_checkpoint(path)
    assert meta["epoch"] == 1
    assert np.array_equal(arrays["param/W"], old["param/W"])
    save_checkpoint(path, {"param/W": np.zeros((3, 3))}, {"epoch": 2})  # a later save works
    assert load_checkpoint(path)[1]["epoch"] == 2
    assert not list(tmp_path.glob("*.tmp"))


# ---------------------------------------------------------------- augmentation and schedule


def test_random_crop_flip_shape_dtype_and_reproducibility():
    X = _data(n_train=8, n_test=0)["X_train"]
    copy = X.copy()
    out = random_crop_flip(X, np.random.default_rng(5))
    assert out.shape == X.shape and out.dtype == X.dtype
    assert np.array_equal(X, copy)  # the input is not modified
    assert np.array_equal(out, random_crop_flip(X, np.random.default_rng(5)))
    assert not np.array_equal(out, random_crop_flip(X, np.random.default_rng(6)))


def test_random_crop_flip_without_padding_only_mirrors():
    X = _data(n_train=32, n_test=0, size=8)["X_train"]
    out = random_crop_flip(X, np.random.default_rng(1), pad=0)
    same = [np.array_equal(o, x) for o, x in zip(out, X)]
    mirrored = [np.array_equal(o, x[:, ::-1]) for o, x in zip(out, X)]
    assert all(s or m for s, m in zip(same, mirrored))
    assert any(same) and any(mirrored)


def test_random_crop_flip_is_a_shifted_crop_of_the_padded_image():
    pad, X = 2, _data(n_train=6, n_test=0, size=8)["X_train"]
    out = random_crop_flip(X, np.random.default_rng(2), pad=pad)
    padded = np.pad(X, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    H, W = X.shape[1:3]
    found = []
    for n in range(len(X)):
        crops = {(dy, dx): padded[n, dy:dy + H, dx:dx + W]
                 for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)}
        matches = [(dy, dx, flip) for (dy, dx), crop in crops.items() for flip in (False, True)
                   if np.array_equal(out[n], crop[:, ::-1] if flip else crop)]
        assert matches, f"image {n} is no shifted (mirrored) crop of the padded input"
        found.append(matches[0])
    assert len(set(found)) > 1


def test_one_cycle_lr():
    total, peak = 100, 0.4
    lrs = np.array([one_cycle_lr(s, total, peak, warmup=0.25) for s in range(total)])
    assert lrs[0] == 0
    assert lrs[25] == pytest.approx(peak) and lrs.max() == lrs[25]
    assert np.all(np.diff(lrs[:26]) > 0)
    assert np.all(np.diff(lrs[25:]) < 0)
    assert lrs[-1] > 0
    for step in (-1, total, total + 5):
        with pytest.raises(ValueError, match="outside"):
            one_cycle_lr(step, total, peak)


def test_one_cycle_lr_from_and_to_a_fraction_of_the_peak():
    total, peak = 100, 0.5
    lrs = np.array([one_cycle_lr(s, total, peak, 0.2, start=0.2, end=0.1) for s in range(total)])
    assert lrs[0] == pytest.approx(0.1) and lrs[20] == pytest.approx(peak)
    assert lrs[-1] == pytest.approx(0.05 + 0.45 / 80)  # one step before the end value 0.05
    assert np.all(np.diff(lrs[:21]) > 0) and np.all(np.diff(lrs[20:]) < 0)


def test_random_crop_flip_with_reflected_border_and_given_flips():
    X = np.random.default_rng(0).integers(0, 256, (6, 5, 5, 3), dtype=np.uint8)
    flips = np.array([True, False] * 3)
    out = random_crop_flip(X, np.random.default_rng(1), pad=0, flip=flips, mode="reflect")
    assert np.array_equal(out[flips], X[flips, :, ::-1]) and np.array_equal(out[~flips], X[~flips])
    out = random_crop_flip(X, np.random.default_rng(1), pad=2, flip=np.zeros(6, bool),
                           mode="reflect")
    padded = np.pad(X, ((0, 0), (2, 2), (2, 2), (0, 0)), mode="reflect")
    for n in range(6):  # each output is a 5x5 window of the reflected image
        assert any(np.array_equal(out[n], padded[n, a:a + 5, b:b + 5])
                   for a in range(5) for b in range(5))


def test_augmentation_and_schedule_refuse_bad_arguments():
    X = np.zeros((4, 8, 8, 3), np.uint8)
    rng = np.random.default_rng(0)
    for kwargs in ({"pad": -1}, {"pad": 1.5}, {"flip": np.zeros(3, bool)}):
        with pytest.raises(ValueError, match="random_crop_flip"):
            random_crop_flip(X, rng, **{"pad": 2, **kwargs})
    with pytest.raises(ValueError, match="random_crop_flip"):
        random_crop_flip(X[0], rng)
    for kwargs in ({"warmup": 1.0}, {"start": -0.1}, {"end": 1.5}):
        with pytest.raises(ValueError, match="one_cycle_lr"):
            one_cycle_lr(0, 10, 0.1, **{"warmup": 0.2, **kwargs})


def test_whitening_keeps_the_loudest_directions_and_whitens_them():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((200, 8, 8, 3)) @ rng.standard_normal((3, 3))  # correlated channels
    w = whitening_filters(X, eps=0.0, keep=5)
    assert w.shape == (2, 2, 3, 10)
    out, _ = nhwc.conv_forward(X, w, 0)
    cov = np.cov(out[..., :5].reshape(-1, 5), rowvar=False)
    assert np.allclose(cov, np.eye(5), atol=1e-8)               # the kept outputs are white
    assert np.array_equal(out[..., 5:], -out[..., :5])         # and the negatives follow
    full = whitening_filters(X, eps=0.0)
    assert np.allclose(full[..., 7:12], w[..., :5])            # the 5 loudest of the 12
    with pytest.raises(ValueError, match="keep"):
        whitening_filters(X, keep=13)


def test_alternating_flips_mirror_each_image_in_every_other_epoch(monkeypatch):
    seen = []  # per epoch: image index -> mirrored
    data = _data(n_train=64)
    index = {image.tobytes(): i for i, image in enumerate(data["X_train"])}
    real = training.random_crop_flip

    def record(X, rng, pad=4, flip=None, mode="constant"):
        flips = np.zeros(len(index), bool)
        flips[[index[image.tobytes()] for image in X]] = flip
        seen.append(flips)
        return real(X, rng, pad, flip, mode)

    monkeypatch.setattr(training, "random_crop_flip", record)
    _trainer(data, epochs=3, batch_size=64).train()  # one batch: every image
    assert len(seen) == 3 and 0 < seen[0].sum() < 64
    assert np.array_equal(seen[1], ~seen[0]) and np.array_equal(seen[2], seen[0])


def test_lookahead_ends_on_the_slow_weights_and_can_be_switched_off(tmp_path):
    data = _data()
    off = _trainer(data, epochs=3, lookahead=False)
    off.train()
    assert off.slow == {}
    on = _trainer(data, epochs=3, lookahead=True, checkpoint=tmp_path / "run.npz")
    on.train()
    for key, array in on._averaged_arrays().items():
        assert np.array_equal(array, on.slow[key]), key
    assert any(not np.array_equal(on.model.params[k], off.model.params[k]) for k in on.model.params)
    arrays, _ = load_checkpoint(tmp_path / "run.npz")
    assert {f"slow/{k}" for k in on._averaged_arrays()} <= set(arrays)


def test_lookahead_pulls_the_weights_every_fifth_step():
    trainer = _trainer(epochs=10, lookahead=True)  # 4 steps an epoch, 40 in all
    seen = []
    for _ in range(6):
        X = normalize(trainer.data["X_train"][:16], trainer.mean, trainer.std)
        trainer.train_step(X, trainer.data["y_train"][:16])
        seen.append(all(np.array_equal(v, trainer.slow[k])
                        for k, v in trainer._averaged_arrays().items()))
    assert seen == [True, False, False, False, True, False]  # steps 1 (copy) and 5 (pull)


def test_two_threads_train_like_one():
    data = _data(n_train=64)
    results = []
    for threads in (1, 2):
        trainer = Trainer(_model(data), data, epochs=2, batch_size=16, threads=threads,
                          verbose=False)
        trainer.train()
        results.append(trainer.model.params)
    for k in results[0]:
        assert np.allclose(results[0][k], results[1][k], rtol=1e-3, atol=1e-4), k


def test_predict_with_test_time_augmentation():
    trainer = _trainer(epochs=1)
    trainer.train()
    X = trainer.data["X_test"][:5]
    x = normalize(X, trainer.mean, trainer.std)
    plain = trainer.model.loss(x)
    assert np.allclose(trainer.predict(X, tta=0), plain, atol=1e-6)
    mirrored = trainer.model.loss(np.ascontiguousarray(x[:, :, ::-1]))
    assert np.allclose(trainer.predict(X, tta=1), (plain + mirrored) / 2, atol=1e-6)
    assert trainer.predict(X, tta=2).shape == plain.shape
    assert not np.allclose(trainer.predict(X, tta=2), trainer.predict(X, tta=1))
    levels = trainer.predict(X, tta=2, every_level=True)
    for tta in (0, 1, 2):
        assert np.allclose(levels[tta], trainer.predict(X, tta=tta), atol=1e-6), tta
    with pytest.raises(ValueError, match="tta"):
        trainer.predict(X, tta=True)


# ---------------------------------------------------------------- sgd_nesterov


def test_sgd_nesterov_matches_a_hand_computation():
    rng = np.random.default_rng(0)
    w0, dw1, dw2 = rng.standard_normal((3, 4, 5))
    lr, mu, wd = 0.1, 0.9, 0.01
    config = {"learning_rate": lr, "momentum": mu, "weight_decay": wd}
    w1, config = sgd_nesterov(w0, dw1, config)
    w2, config = sgd_nesterov(w1, dw2, config)
    g1 = dw1 + wd * w0
    v1 = g1
    e1 = w0 - lr * (g1 + mu * v1)
    g2 = dw2 + wd * e1
    v2 = mu * v1 + g2
    e2 = e1 - lr * (g2 + mu * v2)
    assert np.allclose(w1, e1, rtol=1e-14, atol=1e-14)
    assert np.allclose(w2, e2, rtol=1e-14, atol=1e-14)
    assert np.allclose(config["velocity"], v2, rtol=1e-14, atol=1e-14)


def test_sgd_nesterov_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    w0, grads = rng.standard_normal((5, 6)), rng.standard_normal((3, 5, 6))
    lr, mu, wd = 0.05, 0.9, 5e-4
    param = torch.nn.Parameter(torch.tensor(w0))
    opt = torch.optim.SGD([param], lr=lr, momentum=mu, nesterov=True, weight_decay=wd)
    w, config = w0, {"learning_rate": lr, "momentum": mu, "weight_decay": wd}
    for g in grads:
        param.grad = torch.tensor(g)
        opt.step()
        w, config = sgd_nesterov(w, g, config)
        assert np.allclose(w, param.detach().numpy(), rtol=1e-12, atol=1e-14)


def test_sgd_nesterov_defaults_errors_and_dtype():
    rng = np.random.default_rng(2)
    w, dw = rng.standard_normal((2, 3)), rng.standard_normal((2, 3))
    w_before = w.copy()
    config = {"learning_rate": 0.1, "momentum": 0.5}
    out, config = sgd_nesterov(w, dw, config)
    assert config["weight_decay"] == 0
    assert np.allclose(out, w - 0.1 * (dw + 0.5 * dw))
    assert np.array_equal(w, w_before)  # not modified in place
    with pytest.raises(ValueError, match="weight_decay"):
        sgd_nesterov(w, dw, {"weight_decay": -1e-4})
    w32, dw32 = w.astype(np.float32), dw.astype(np.float32)
    out32, config32 = sgd_nesterov(w32, dw32, {"weight_decay": 1e-3})
    out32, config32 = sgd_nesterov(out32, dw32, config32)
    assert out32.dtype == np.float32 and config32["velocity"].dtype == np.float32


# ---------------------------------------------------------------- softmax_loss_smooth


def test_softmax_loss_smooth_without_smoothing_is_softmax_loss():
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((7, 5)) * 3, rng.integers(0, 5, 7)
    loss, dx = softmax_loss_smooth(x, y, 0.0)
    loss0, dx0 = softmax_loss(x, y)
    assert loss == pytest.approx(loss0, rel=1e-12)
    assert np.allclose(dx, dx0, rtol=1e-12, atol=1e-15)


def test_softmax_loss_smooth_value_and_gradient():
    rng = np.random.default_rng(4)
    x, y, s = rng.standard_normal((6, 4)), rng.integers(0, 4, 6), 0.1
    loss, dx = softmax_loss_smooth(x, y, s)
    log_p = x - np.log(np.exp(x).sum(axis=1, keepdims=True))
    expected = -((1 - s) * log_p[np.arange(6), y] + s * log_p.mean(axis=1)).mean()
    assert loss == pytest.approx(expected, rel=1e-12)
    num = eval_numerical_gradient_array(lambda v: np.array(softmax_loss_smooth(v, y, s)[0]),
                                        x, np.array(1.0))
    assert rel_error(dx, num) < 1e-7


@pytest.mark.parametrize("smoothing", [1.0, -0.1, 1.5])
def test_softmax_loss_smooth_rejects_bad_smoothing(smoothing):
    with pytest.raises(ValueError, match="smoothing"):
        softmax_loss_smooth(np.zeros((2, 3)), np.array([0, 1]), smoothing)


# ---------------------------------------------------------------- channels-last layers


def _naive_conv(x, w, pad, dout):
    """conv_forward_naive / conv_backward_naive (NCHW, zero bias) on NHWC arrays."""
    x_nchw, w_fchw = x.transpose(0, 3, 1, 2), w.transpose(3, 2, 0, 1)
    out, cache = conv_forward_naive(x_nchw, w_fchw, np.zeros(w.shape[3]),
                                    {"stride": 1, "pad": pad})
    dx, dw, _ = conv_backward_naive(dout.transpose(0, 3, 1, 2), cache)
    return out.transpose(0, 2, 3, 1), dx.transpose(0, 2, 3, 1), dw.transpose(2, 3, 1, 0)


def _conv_case(k, pad, H, W, N=3, C=2, F=4, dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, H, W, C)).astype(dtype)
    w = rng.standard_normal((k, k, C, F)).astype(dtype)
    dout = rng.standard_normal((N, H + 2 * pad - k + 1, W + 2 * pad - k + 1, F)).astype(dtype)
    return x, w, dout


@pytest.mark.parametrize("k, pad, H, W", [(3, 1, 5, 7), (2, 0, 5, 7), (3, 0, 7, 5),
                                          (3, 1, 1, 1), (1, 0, 3, 4), (3, 2, 4, 5)])
def test_conv_matches_the_naive_convolution(k, pad, H, W):
    x, w, dout = _conv_case(k, pad, H, W)
    out, cache = nhwc.conv_forward(x, w, pad)
    dx, dw = nhwc.conv_backward(dout, cache)
    ref_out, ref_dx, ref_dw = _naive_conv(x, w, pad, dout)
    assert out.shape == ref_out.shape and dx.shape == x.shape and dw.shape == w.shape
    assert rel_error(out, ref_out) < 1e-12
    assert rel_error(dx, ref_dx) < 1e-12
    assert rel_error(dw, ref_dw) < 1e-12
    assert nhwc.conv_backward(dout, cache, need_dx=False)[0] is None


@pytest.mark.parametrize("k, pad", [(1, 1), (2, 2)])
def test_conv_backward_with_padding_wider_than_the_filter(k, pad):
    x, w, dout = _conv_case(k, pad, 4, 5)
    out, cache = nhwc.conv_forward(x, w, pad)
    dx, dw = nhwc.conv_backward(dout, cache)
    _, ref_dx, ref_dw = _naive_conv(x, w, pad, dout)
    assert rel_error(dx, ref_dx) < 1e-12 and rel_error(dw, ref_dw) < 1e-12


@pytest.mark.parametrize("chunk_bytes", [1, 3000, None, 1 << 30])
def test_conv_in_chunks_gives_the_same_result(chunk_bytes):
    x, w, dout = _conv_case(3, 1, 6, 5, N=5)
    out, cache = nhwc.conv_forward(x, w, 1, chunk_bytes=1 << 30)  # the whole batch at once
    dx, dw = nhwc.conv_backward(dout, cache, chunk_bytes=1 << 30)
    out2, cache2 = nhwc.conv_forward(x, w, 1, chunk_bytes=chunk_bytes)
    dx2, dw2 = nhwc.conv_backward(dout, cache2, chunk_bytes=chunk_bytes)
    assert np.allclose(out, out2, rtol=1e-13, atol=1e-13)
    assert np.allclose(dx, dx2, rtol=1e-13, atol=1e-13)
    assert np.allclose(dw, dw2, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("pads", [((1, 0), (1, 0)), ((0, 1), (2, 0)), ((2, 2), (0, 1)),
                                  ((3, 0), (0, 3))])
def test_conv_with_other_padding_on_each_side_is_the_padded_input_convolved(pads):
    x, w, _ = _conv_case(3, 0, 6, 5, N=2)
    out, cache = nhwc.conv_forward(x, w, pads)
    ref, ref_cache = nhwc.conv_forward(np.pad(x, ((0, 0), *pads, (0, 0))), w, 0)
    assert np.array_equal(out, ref)
    dout = np.random.default_rng(3).standard_normal(out.shape)
    dx, dw = nhwc.conv_backward(dout, cache)
    ref_dxp, ref_dw = nhwc.conv_backward(dout, ref_cache)
    (t, b), (l, r) = pads
    assert rel_error(dx, ref_dxp[:, t:t + x.shape[1], l:l + x.shape[2]]) < 1e-12
    assert rel_error(dw, ref_dw) < 1e-12


@pytest.mark.parametrize("pad", [-1, 1.5, "1", ((1, 0),), ((1, -1), (0, 0)), ((1, 0), (0, 0.5))])
def test_conv_refuses_a_bad_padding_with_its_value(pad):
    x, w, _ = _conv_case(3, 1, 5, 5)
    with pytest.raises(ValueError, match="pad must be"):
        nhwc.conv_forward(x, w, pad)


def test_conv_keeps_float32():
    x, w, dout = _conv_case(3, 1, 5, 5, dtype=np.float32)
    out, cache = nhwc.conv_forward(x, w, 1)
    dx, dw = nhwc.conv_backward(dout, cache)
    assert out.dtype == dx.dtype == dw.dtype == np.float32
    ref_out, ref_dx, ref_dw = _naive_conv(x.astype(np.float64), w.astype(np.float64), 1,
                                          dout.astype(np.float64))
    assert rel_error(out, ref_out) < 1e-5 and rel_error(dw, ref_dw) < 1e-5


def test_conv_errors_name_the_shapes():
    x, w, dout = _conv_case(3, 1, 5, 5)
    with pytest.raises(ValueError, match=re.escape("(3, 5, 5)")):
        nhwc.conv_forward(x[:, :, :, 0], w, 1)
    w4 = np.zeros((3, 3, 4, 2))
    with pytest.raises(ValueError, match=re.escape(f"{x.shape}") + ".*" + re.escape(f"{w4.shape}")):
        nhwc.conv_forward(x, w4, 1)
    with pytest.raises(ValueError, match="float64.*float32"):
        nhwc.conv_forward(x, w.astype(np.float32), 1)
    _, cache = nhwc.conv_forward(x, w, 1)
    wrong = re.escape(f"{dout.shape}") + ".*" + re.escape("(3, 5, 4, 4)")
    with pytest.raises(ValueError, match=wrong):
        nhwc.conv_backward(dout[:, :, :4], cache)
    with pytest.raises(ValueError, match="5x5 filter.*4x4"):
        nhwc.conv_forward(np.zeros((1, 4, 4, 2)), np.zeros((5, 5, 2, 3)), 0)
    with pytest.raises(ValueError, match="float"):
        nhwc.conv_forward(x.astype(np.int64), w.astype(np.int64), 1)


def _rand(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


def test_max_pool_on_odd_sizes():
    x, dout = _rand((2, 5, 7, 3)), _rand((2, 2, 3, 3), seed=1)
    out, cache = nhwc.max_pool_forward(x)
    expected = x[:, :4, :6].reshape(2, 2, 2, 3, 2, 3).max(axis=(2, 4))
    assert np.array_equal(out, expected)
    dx = nhwc.max_pool_backward(dout, cache)
    num = eval_numerical_gradient_array(lambda v: nhwc.max_pool_forward(v)[0], x, dout)
    assert rel_error(dx, num) < 1e-9
    assert not dx[:, 4].any() and not dx[:, :, 6].any()  # the dropped last row and column
    with pytest.raises(ValueError, match="smaller than the 2x2 window"):
        nhwc.max_pool_forward(np.zeros((1, 1, 4, 2)))


def test_max_pool_routes_a_tie_to_one_entry():
    x = np.ones((1, 2, 2, 1))
    out, cache = nhwc.max_pool_forward(x)
    dx = nhwc.max_pool_backward(np.full((1, 1, 1, 1), 3.0), cache)
    assert out.item() == 1 and dx.sum() == 3 and np.count_nonzero(dx) == 1


def test_batchnorm_relu_gradient_and_test_mode():
    x, dout = _rand((3, 4, 5, 2)) * 2 + 1, _rand((3, 4, 5, 2), seed=1)
    gamma, beta = np.array([1.5, 0.7]), np.array([0.2, -0.1])
    bn_param = {"mode": "train"}
    out, cache = nhwc.batchnorm_relu_forward(x, gamma, beta, bn_param)
    dx, dgamma, dbeta = nhwc.batchnorm_relu_backward(dout, cache)
    fwd = lambda a, g, b: nhwc.batchnorm_relu_forward(a, g, b, {"mode": "train"})[0]  # noqa: E731
    assert rel_error(dx, eval_numerical_gradient_array(lambda v: fwd(v, gamma, beta), x,
                                                       dout)) < 1e-7
    assert rel_error(dgamma, eval_numerical_gradient_array(lambda v: fwd(x, v, beta), gamma,
                                                           dout)) < 1e-7
    assert rel_error(dbeta, eval_numerical_gradient_array(lambda v: fwd(x, gamma, v), beta,
                                                          dout)) < 1e-7
    assert set(bn_param) >= {"running_mean", "running_var"}
    test_param = dict(bn_param, mode="test")
    test_out, test_cache = nhwc.batchnorm_relu_forward(x, gamma, beta, test_param)
    assert test_out.shape == x.shape and (test_out >= 0).all()
    # test mode: fixed statistics, the gradient of an affine map (then the ReLU)
    dx_test = nhwc.batchnorm_relu_backward(dout, test_cache)[0]
    fwd_test = lambda a: nhwc.batchnorm_relu_forward(a, gamma, beta, dict(test_param))[0]  # noqa
    assert rel_error(dx_test, eval_numerical_gradient_array(fwd_test, x, dout)) < 1e-7
    with pytest.raises(ValueError, match="running averages"):
        nhwc.batchnorm_relu_forward(x, gamma, beta, {"mode": "test"})
    with pytest.raises(ValueError, match="gamma"):
        nhwc.batchnorm_relu_forward(x, np.ones(3), beta, {"mode": "train"})


def test_batchnorm_relu_backward_rejects_dout_of_another_shape():
    x = _rand((2, 4, 6, 3))
    _, cache = nhwc.batchnorm_relu_forward(x, np.ones(3), np.zeros(3), {"mode": "train"})
    with pytest.raises(ValueError, match=re.escape(f"{x.shape}")):
        nhwc.batchnorm_relu_backward(np.ones((2, 6, 4, 3)), cache)


def test_global_avg_pool_gradient():
    x, dout = _rand((2, 3, 5, 4)), _rand((2, 4), seed=1)
    out, cache = nhwc.global_avg_pool_forward(x)
    assert np.allclose(out, x.mean(axis=(1, 2)))
    dx = nhwc.global_avg_pool_backward(dout, cache)
    num = eval_numerical_gradient_array(lambda v: nhwc.global_avg_pool_forward(v)[0], x, dout)
    assert dx.shape == x.shape and rel_error(dx, num) < 1e-9
    with pytest.raises(ValueError, match=re.escape("(2, 4)")):
        nhwc.global_avg_pool_backward(np.ones((2, 5)), cache)


def test_residual_block_gradient_and_shape_check():
    x, dout = _rand((2, 4, 4, 3)), _rand((2, 4, 4, 3), seed=1)
    w, gamma, beta = _rand((3, 3, 3, 3), seed=2) * 0.3, np.ones(3), np.full(3, 0.1)
    out, cache = nhwc.residual_forward(x, w, gamma, beta, {"mode": "train"})
    dx, dw, _, _ = nhwc.residual_backward(dout, cache)
    fwd = lambda a, b: nhwc.residual_forward(a, b, gamma, beta, {"mode": "train"})[0]  # noqa: E731
    assert rel_error(dx, eval_numerical_gradient_array(lambda v: fwd(v, w), x, dout)) < 1e-6
    assert rel_error(dw, eval_numerical_gradient_array(lambda v: fwd(x, v), w, dout)) < 1e-6
    with pytest.raises(ValueError, match=re.escape("(3, 3, 3, 6)")):
        nhwc.residual_forward(x, _rand((3, 3, 3, 6)), np.ones(6), np.zeros(6), {"mode": "train"})


def test_batchnorm_in_float32_keeps_the_variance_of_an_offset_channel():
    x = (3 + _rand((64, 8, 8, 2))).astype(np.float32)   # mean 3 standard deviations
    out, _ = nhwc.batchnorm_relu_forward(x, np.ones(2, np.float32), np.zeros(2, np.float32),
                                         {"mode": "train"}, relu=False)
    x64 = x.astype(np.float64)
    ref = (x64 - x64.mean(axis=(0, 1, 2))) / np.sqrt(x64.var(axis=(0, 1, 2)) + 1e-5)
    assert out.dtype == np.float32 and np.abs(out - ref).max() < 1e-3


def test_conv_bn_relu_with_pooling_skips_only_what_the_pooling_drops():
    x, w = _rand((2, 7, 5, 3)), _rand((3, 3, 3, 4), seed=1)
    gamma, beta = np.ones(4), np.zeros(4)
    out, cache = nhwc.conv_bn_relu_forward(x, w, gamma, beta, {"mode": "train"}, pool=True)
    full, _ = nhwc.conv_forward(x, w, 1)
    pooled, _ = nhwc.max_pool_forward(full)
    ref, _ = nhwc.batchnorm_relu_forward(pooled, gamma, beta, {"mode": "train"})
    assert out.shape == (2, 3, 2, 4) and rel_error(out, ref) < 1e-12
    assert cache[0][0].shape == (2, 8, 6, 3)  # padded input: one row and column fewer


# ---------------------------------------------------------------- Winograd


@pytest.mark.parametrize("N, H, W, C, F, pad", [(3, 6, 4, 2, 4, 1), (2, 7, 5, 3, 2, 1),
                                                (2, 7, 7, 2, 3, ((1, 0), (1, 0))),
                                                (1, 5, 6, 2, 2, 0), (2, 3, 3, 4, 4, 1),
                                                (2, 4, 4, 1, 1, 2)])
def test_winograd_conv_equals_the_im2col_conv(N, H, W, C, F, pad):
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((N, H, W, C)), rng.standard_normal((3, 3, C, F))
    out, cache = nhwc.winograd_conv_forward(x, w, pad, chunk_bytes=1)
    ref, ref_cache = nhwc.conv_forward(x, w, pad)
    assert out.shape == ref.shape and rel_error(out, ref) < 1e-12
    dout = rng.standard_normal(out.shape)
    dx, dw = nhwc.winograd_conv_backward(dout, cache)
    ref_dx, ref_dw = nhwc.conv_backward(dout, ref_cache)
    assert rel_error(dx, ref_dx) < 1e-12 and rel_error(dw, ref_dw) < 1e-12
    assert nhwc.winograd_conv_backward(dout, cache, need_dx=False)[0] is None


def test_winograd_conv_keeps_float32_and_refuses_other_filters():
    x, w = _rand((2, 6, 6, 3)).astype(np.float32), _rand((3, 3, 3, 5)).astype(np.float32)
    out, cache = nhwc.winograd_conv_forward(x, w)
    dx, dw = nhwc.winograd_conv_backward(np.ones_like(out), cache)
    assert out.dtype == dx.dtype == dw.dtype == np.float32
    with pytest.raises(ValueError, match="3x3"):
        nhwc.winograd_conv_forward(x, _rand((5, 5, 3, 2)).astype(np.float32), 2)


# ---------------------------------------------------------------- DataParallel


def _parallel_case(n=8, sync=True, threads=2, widths=(3, 4, 5)):
    rng = np.random.default_rng(4)
    X = rng.standard_normal((n, 16, 16, 3))
    y = rng.integers(0, 3, n)
    make = lambda: FastConvNet(whitening_filters(X), widths=widths, num_classes=3,  # noqa
                               dtype=np.float64)
    return X, y, make


@pytest.mark.parametrize("n, threads", [(8, 2), (9, 3), (6, 4), (5, 2), (4, 1)])
def test_data_parallel_with_shared_statistics_is_the_one_piece_step(n, threads):
    X, y, make = _parallel_case(n)
    one = make()
    loss, grads = one.loss(X, y)
    model = make()
    parallel = training.DataParallel(model, threads=threads)
    loss_p, grads_p = parallel.loss(X, y)
    assert abs(loss - loss_p) < 1e-12
    for k in grads:
        assert rel_error(grads[k], grads_p[k]) < 1e-8, k
    for name, bn in one.bn_params.items():
        for key in ("running_mean", "running_var"):
            assert rel_error(bn[key], model.bn_params[name][key]) < 1e-12
    assert np.array_equal(model.train_scores.argmax(1), one.train_scores.argmax(1))
    assert np.allclose(parallel.loss(X), one.loss(X), rtol=1e-12, atol=1e-12)  # test mode


def test_data_parallel_with_ghost_statistics_normalizes_each_part():
    X, y, make = _parallel_case(8)
    model = make()
    _, grads = training.DataParallel(model, threads=2, sync_bn=False).loss(X, y)
    halves = [make().loss(X[i:i + 4], y[i:i + 4])[1] for i in (0, 4)]
    for k in grads:
        assert rel_error(grads[k], (halves[0][k] + halves[1][k]) / 2) < 1e-10, k


def test_data_parallel_raises_the_error_of_a_failing_thread_and_keeps_working():
    X, y, make = _parallel_case(8)
    parallel = training.DataParallel(make(), threads=2)
    bad = y.copy()
    bad[6] = 7  # a label out of range, in the second part only
    with pytest.raises(ValueError, match="labels"):
        parallel.loss(X, bad)                  # not a hang: the other thread stops waiting
    loss, grads = parallel.loss(X, y)          # the pool still works
    assert np.isfinite(loss)


def test_data_parallel_refuses_a_bad_thread_count():
    X, y, make = _parallel_case(4)
    for threads in (-1, 0, 1.5):
        with pytest.raises(ValueError, match="threads"):
            training.DataParallel(make(), threads=threads)


# ---------------------------------------------------------------- FastConvNet


def test_fast_convnet_rejects_channels_first():
    model = _model(_data())
    with pytest.raises(ValueError, match="channels last"):
        model.loss(np.zeros((2, 3, 32, 32), np.float32))
    with pytest.raises(ValueError, match="16x16"):
        model.loss(np.zeros((2, 8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="widths"):
        FastConvNet(model.whitening, widths=(4, 4))


def test_fast_convnet_scores_and_grads():
    data = _data()
    model = _model(data, widths=(4, 5, 6), num_classes=7)
    X = normalize(data["X_train"][:6], *channel_stats(data["X_train"]))
    y = data["y_train"][:6] % 7
    with pytest.raises(ValueError, match="running averages"):
        model.loss(X)  # test mode needs the batch-norm statistics of a training pass
    loss, grads = model.loss(X, y)
    assert np.isfinite(loss) and model.train_scores.shape == (6, 7)
    scores = model.loss(X)
    assert scores.shape == (6, 7) and scores.dtype == np.float32
    assert grads.keys() == model.params.keys()
    for k, p in model.params.items():
        assert grads[k].shape == p.shape and grads[k].dtype == p.dtype, k
    assert model.params["W3r"].shape == (3, 3, 6, 6) and model.params["W1"].shape[2] == 24


def test_fast_convnet_gradient_in_float64():
    data = _data(n_train=4, n_test=0)
    model = _model(data, widths=(2, 3, 2), dtype=np.float64, smoothing=0.1, scale=1.0)
    X = normalize(data["X_train"], *channel_stats(data["X_train"])).astype(np.float64)
    y = data["y_train"]
    _, grads = model.loss(X, y)
    for name in ("W_fc", "b_fc", "gamma3r", "beta2", "W3"):
        p = model.params[name]
        num = eval_numerical_gradient_array(lambda v: np.array(model.loss(X, y)[0]), p,
                                            np.array(1.0))
        assert rel_error(grads[name], num) < 1e-5, name


# ---------------------------------------------------------------- memory


def test_keep_freed_memory_returns_a_bool():
    # In a subprocess: the call changes how this process's allocator behaves.
    code = ("from cnnbook.training import keep_freed_memory; r = keep_freed_memory(); "
            "print(type(r).__name__, r)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=str(ROOT / "src")), timeout=120)
    assert proc.returncode == 0, proc.stderr
    kind, value = proc.stdout.split()
    assert kind == "bool"
    if sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc":
        assert value == "True"
