#!/usr/bin/env python
"""Benchmark: a training step of the cs231n three-layer ConvNet of book/convnet.md against the
same network in PyTorch on the CPU, at equal threads.

    .venv/bin/python benchmarks/convnet_step.py [--repeats 20] [--threads 2] [--quick]

The model is the assignment's "Train the net" configuration: ``ThreeLayerConvNet(num_filters=32,
filter_size=7, hidden_dim=500, weight_scale=1e-3, reg=1e-3)`` in float32 (the chapter's dtype),
i.e. conv 7x7 (3 -> 32, pad 3) - ReLU - 2x2 max pool - affine 8192 -> 500 - ReLU - affine 500 -> 10
- softmax loss + 0.5 * reg * sum of the squared weights. One step is what ``Solver._step`` does:
``model.loss(X, y)`` (forward + backward) and ``cnnbook.optim.adam`` (learning rate 1e-3) on every
parameter, on a batch of 50 random images. PyTorch runs the same network from the same weights
(Conv2d, relu, max_pool2d, Linear, cross_entropy, the same L2 term in the loss, torch.optim.Adam
with its defaults, which are cs231n's). Both are timed alternately in one process after warm-up;
medians of --repeats. The losses of the first and last step are printed as a check that the
networks are the same. No timing is asserted; the script prints:

0. This machine's np.matmul rate on 2048 x 2048 float32 matrices (``sgemm_gflops``) and the
   factor that scales its times to the ordinary 2-core AVX2 machine of the book's time targets
   (115 GFLOP/s), and the load average.
1. Step time, numpy and torch, their ratio (> 1: cnnbook is that many times slower), and the
   time of one epoch of the chapter (980 steps) that the numpy step implies, here and scaled.
2. Where the numpy step's time goes: forward + backward of each layer and the Adam updates,
   each timed alone (medians), next to torch's forward + backward and its optimizer step.

torch is optional: without it only the numpy parts are printed.
"""
import argparse
import os
import statistics
import sys
import time


def parse():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--repeats", type=int, default=None, help="timed repeats (default 20, 3 quick)")
    p.add_argument("--threads", type=int, default=2, help="threads of both (default 2)")
    p.add_argument("--quick", action="store_true", help="a smoke run: fewer repeats")
    args = p.parse_args()
    if args.repeats is None:
        args.repeats = 3 if args.quick else 20
    return args


ARGS = parse()
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = str(ARGS.threads)  # before NumPy's BLAS starts

import numpy as np  # noqa: E402

from cnnbook import optim  # noqa: E402
from cnnbook.classifiers import ThreeLayerConvNet  # noqa: E402
from cnnbook.fast_layers import (conv_backward_fast, conv_forward_fast,  # noqa: E402
                                 max_pool_backward_fast, max_pool_forward_fast)
from cnnbook.layers import (affine_backward, affine_forward, relu_backward,  # noqa: E402
                            relu_forward, softmax_loss)
from cnnbook.training import ORDINARY_SGEMM_GFLOPS, sgemm_gflops  # noqa: E402

BATCH, LR, REG, STEPS_PER_EPOCH = 50, 1e-3, 1e-3, 49000 // 50


def import_torch():
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(ARGS.threads)
    return torch


def median_ms(f, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        f()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def numpy_model():
    return ThreeLayerConvNet(num_filters=32, filter_size=7, hidden_dim=500, weight_scale=1e-3,
                             reg=REG, dtype=np.float32, seed=0)


def numpy_step(model, configs, X, y):
    """Solver._step without the sampling: loss and gradients, then Adam on every parameter."""
    loss, grads = model.loss(X, y)
    for p, w in model.params.items():
        model.params[p], configs[p] = optim.adam(w, grads[p], configs[p])
    return float(loss)


def torch_net(torch, params):
    """The same network and weights in PyTorch, with torch.optim.Adam."""
    nn = torch.nn
    conv = nn.Conv2d(3, 32, 7, padding=3)
    fc1, fc2 = nn.Linear(8192, 500), nn.Linear(500, 10)
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(params["W1"]))
        conv.bias.copy_(torch.from_numpy(params["b1"]))
        fc1.weight.copy_(torch.from_numpy(params["W2"].T))
        fc1.bias.copy_(torch.from_numpy(params["b2"]))
        fc2.weight.copy_(torch.from_numpy(params["W3"].T))
        fc2.bias.copy_(torch.from_numpy(params["b3"]))
    modules = nn.ModuleList([conv, fc1, fc2])
    weights = [conv.weight, fc1.weight, fc2.weight]

    def loss_fn(X, y):
        h = torch.nn.functional.max_pool2d(torch.relu(conv(X)), 2)
        scores = fc2(torch.relu(fc1(h.flatten(1))))
        data_loss = torch.nn.functional.cross_entropy(scores, y)
        return data_loss + 0.5 * REG * sum((w * w).sum() for w in weights)

    opt = torch.optim.Adam(modules.parameters(), lr=LR)

    def step(X, y):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(X, y)
        loss.backward()
        opt.step()
        return loss.item()

    def forward_backward(X, y):
        opt.zero_grad(set_to_none=True)
        loss_fn(X, y).backward()

    return step, forward_backward, opt


def layer_breakdown(model, configs, X, y, repeats):
    """Median ms of each part of the numpy step, each timed alone."""
    p = model.params
    a, conv_cache = conv_forward_fast(X, p["W1"], p["b1"], model.conv_param)
    s, relu_cache = relu_forward(a)
    pooled, pool_cache = max_pool_forward_fast(s, model.pool_param)
    h, fc1_cache = affine_forward(pooled, p["W2"], p["b2"])
    hr, relu2_cache = relu_forward(h)
    scores, fc2_cache = affine_forward(hr, p["W3"], p["b3"])
    _, dscores = softmax_loss(scores, y)
    dhr, _, _ = affine_backward(dscores, fc2_cache)
    dh = relu_backward(dhr, relu2_cache)
    dpooled, _, _ = affine_backward(dh, fc1_cache)
    ds = max_pool_backward_fast(dpooled, pool_cache)
    da = relu_backward(ds, relu_cache)
    _, grads = model.loss(X, y)
    parts = {
        "conv forward": lambda: conv_forward_fast(X, p["W1"], p["b1"], model.conv_param),
        "conv backward": lambda: conv_backward_fast(da, conv_cache),
        "ReLU fwd+bwd (conv)": lambda: (relu_forward(a), relu_backward(ds, relu_cache)),
        "max pool fwd+bwd": lambda: (max_pool_forward_fast(s, model.pool_param),
                                     max_pool_backward_fast(dpooled, pool_cache)),
        "affine 8192x500 fwd+bwd": lambda: (affine_forward(pooled, p["W2"], p["b2"]),
                                            affine_backward(dh, fc1_cache)),
        "rest (ReLU, affine 500x10, softmax)": lambda: (
            relu_forward(h), relu_backward(dhr, relu2_cache), affine_forward(hr, p["W3"], p["b3"]),
            affine_backward(dscores, fc2_cache), softmax_loss(scores, y)),
        "L2 penalty and its gradient": lambda: [
            (0.5 * REG * np.sum(p[k] * p[k]), grads[k] + REG * p[k]) for k in ("W1", "W2", "W3")],
        "Adam, all parameters": lambda: [optim.adam(p[k], grads[k], dict(configs[k]))
                                         for k in p],
        "Adam, W2 alone": lambda: optim.adam(p["W2"], grads["W2"], dict(configs["W2"])),
    }
    for f in parts.values():
        f()  # warm-up
    return {name: median_ms(f, repeats) for name, f in parts.items()}


def main():
    print(f"convnet_step benchmark: numpy {np.__version__}, threads={ARGS.threads}, "
          f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    gflops = sgemm_gflops()
    scale = gflops / ORDINARY_SGEMM_GFLOPS
    print(f"np.matmul 2048 x 2048 float32: {gflops:.0f} GFLOP/s; times here x {scale:.2f} ~ "
          f"times on a {ORDINARY_SGEMM_GFLOPS:.0f} GFLOP/s machine")
    rng = np.random.default_rng(0)
    X = rng.standard_normal((BATCH, 3, 32, 32)).astype(np.float32)
    y = rng.integers(10, size=BATCH)
    model = numpy_model()
    configs = {k: {"learning_rate": LR} for k in model.params}
    torch = import_torch()
    print(f"\n1. Training step at batch {BATCH}: cnnbook vs PyTorch {getattr(torch, '__version__', '')}"
          f" (median of {ARGS.repeats}, alternating, after warm-up)")
    print("   ThreeLayerConvNet(32 filters 7x7, hidden 500, reg 1e-3), float32, Adam 1e-3, "
          "random data")
    if torch is not None:
        t_step, t_fb, t_opt = torch_net(torch, model.params)
        Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    losses = {"numpy": [], "torch": []}
    times = {"numpy": [], "torch": []}
    for i in range(3 + ARGS.repeats):  # 3 warm-up steps
        start = time.perf_counter()
        losses["numpy"].append(numpy_step(model, configs, X, y))
        times["numpy"].append(time.perf_counter() - start)
        if torch is not None:
            start = time.perf_counter()
            losses["torch"].append(t_step(Xt, yt))
            times["torch"].append(time.perf_counter() - start)
    ms = {k: 1e3 * statistics.median(v[3:]) for k, v in times.items() if v}
    for k in ms:
        print(f"   {k:6s} loss: step 1 {losses[k][0]:.5f}, step {len(losses[k])} "
              f"{losses[k][-1]:.5f}")
    for k, v in ms.items():
        print(f"   {k:6s} {v:7.1f} ms/step  (min {1e3 * min(times[k][3:]):.1f}, "
              f"max {1e3 * max(times[k][3:]):.1f})  {BATCH / v * 1e3:6.0f} images/s")
    if "torch" in ms:
        print(f"   ratio numpy / torch: {ms['numpy'] / ms['torch']:.2f}")
    epoch = STEPS_PER_EPOCH * ms["numpy"] / 1e3
    print(f"   one epoch of the chapter ({STEPS_PER_EPOCH} steps) at this step time: {epoch:.0f} s "
          f"here, ~{epoch * scale:.0f} s on a {ORDINARY_SGEMM_GFLOPS:.0f} GFLOP/s machine")

    print(f"\n2. Parts of the numpy step, each timed alone (median of {ARGS.repeats}, ms)")
    parts = layer_breakdown(model, configs, X, y, ARGS.repeats)
    for name, v in parts.items():
        print(f"   {name:38s} {v:7.1f}")
    if torch is not None:
        print(f"   torch forward+backward                 "
              f"{median_ms(lambda: t_fb(Xt, yt), ARGS.repeats):7.1f}")
        print(f"   torch Adam step, all parameters        "
              f"{median_ms(t_opt.step, ARGS.repeats):7.1f}")
    print(f"\nload average at the end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    sys.exit(main())
