#!/usr/bin/env python
"""Train the chapter's FastConvNet on CIFAR-10 with the Trainer of book/fast_training.md under
changed settings, and print one JSON line per run: the settings, the test accuracy without, with
mirror and with mirror + shift test-time augmentation, the training time and this machine's
np.matmul rate. The runs behind the recipe of the chapter "Training a ConvNet on CIFAR-10 in
minutes" (its choices, and the ablations longer than the chapter can afford).

    .venv/bin/python benchmarks/recipe.py '{"epochs": 8}' '{"epochs": 8, "lookahead": false}' ...

Each argument is a JSON object of ``Trainer`` settings, plus ``FastConvNet``'s ``widths``,
``dirac``, ``bn_momentum``, ``head_pool``, ``smoothing`` and ``scale``, and ``eps`` and ``keep``
of ``whitening_filters``. Needs CIFAR-10
(``CNNBOOK_CIFAR10_DIR`` or the loader's cache); each run takes minutes.
"""
import json
import sys
import time
import warnings

import numpy as np

from cnnbook.classifiers import FastConvNet, whitening_filters
from cnnbook.data import cifar10_fingerprint, load_cifar10
from cnnbook.training import Trainer, channel_stats, keep_freed_memory, normalize, sgemm_gflops

MODEL_KEYS = ("widths", "dirac", "bn_momentum", "head_pool", "smoothing", "scale", "eps", "keep")


def run(settings, data, gflops):
    model_args = {k: settings.pop(k) for k in MODEL_KEYS if k in settings}
    X = data["X_train"]
    whitening = whitening_filters(normalize(X[:5000], *channel_stats(X)),
                                  model_args.get("eps", 5e-4), model_args.get("keep", 12))
    model = FastConvNet(whitening, **{k: v for k, v in model_args.items()
                                      if k not in ("eps", "keep")})
    trainer = Trainer(model, data, verbose=False, **settings)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    accuracy = {tta: trainer.accuracy(data["X_test"], data["y_test"], tta=tta) for tta in (0, 1, 2)}
    return {"settings": {**settings, **model_args}, "accuracy": accuracy,
            "train_seconds": round(seconds, 1), "sgemm_gflops": round(gflops),
            "history_test_acc": [round(a, 4) for a in trainer.history["test_acc"]]}


def main():
    keep_freed_memory()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        X_train, y_train, X_test, y_test = load_cifar10()
    data = {"X_train": X_train, "y_train": y_train, "X_test": X_test, "y_test": y_test}
    print(json.dumps({"data": cifar10_fingerprint()}), flush=True)
    gflops = sgemm_gflops()
    for arg in sys.argv[1:]:
        print(json.dumps(run(json.loads(arg), data, gflops)), flush=True)


if __name__ == "__main__":
    main()
