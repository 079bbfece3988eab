#!/usr/bin/env python
"""Benchmark: a training step of the chapter's FastConvNet against PyTorch, its convolutions
against np.matmul, and the peak memory of both frameworks.

    .venv/bin/python benchmarks/train_step.py [--batches 128 512] [--repeats 10]
                                              [--mem-batch 512] [--threads 2] [--quick]

The network is ``cnnbook.classifiers.FastConvNet(whitening, widths=(32, 96, 192))`` in float32,
channels last: a fixed 2x2 whitening conv (24 channels) -> ReLU -> 3 blocks of [conv3x3 ->
maxpool2 -> BN -> ReLU, then x + ReLU(BN(conv3x3(x)))] -> global max pool -> affine -> x 1/8,
softmax loss with label smoothing 0.2. The NumPy step is ``Trainer.train_step`` of the chapter,
as the training run takes it: ``DataParallel`` over --threads threads (one BLAS thread each,
batch-norm statistics shared over the whole batch), then ``sgd_nesterov`` on every parameter with
the chapter's rate multipliers (batch-norm scales frozen, shifts at 64 times the rate, weight
decay per step the same fraction for every parameter). The data are random: uint8 images
normalized with their channel statistics, random labels, and whitening filters computed from
them (CIFAR-10 is not needed). ``keep_freed_memory()`` is called first, as the chapter does.
No timing is asserted; the script prints:

0. This machine's np.matmul rate on 2048 x 2048 float32 matrices (``sgemm_gflops``) and the
   factor that scales its times to the ordinary 2-core AVX2 machine of the book's time targets
   (115 GFLOP/s).
1. Step time vs PyTorch at each of --batches: the cnnbook step and the same network, weights,
   batch and update in PyTorch eager mode (Conv2d without bias, BatchNorm2d, max_pool2d, relu,
   amax over H and W, Linear, cross_entropy with label_smoothing=0.2, SGD with nesterov=True and
   the same parameter groups) in two memory layouts: NCHW (PyTorch's default) and channels_last.
   All three are timed alternately in one process after warm-up; medians of --repeats. The
   losses of the first and last step are printed as a check that the networks are the same.
   "ratio" = numpy / the faster torch layout (> 1: cnnbook is that many times slower).
2. Conv layers vs GEMM, per thread: each of the 7 convolutions at its shape in the network for
   batch / threads images (the part one thread works on) with one BLAS thread, through
   ``cnnbook.nhwc.conv_forward`` + ``conv_backward`` (the passes the network runs), against
   ``np.matmul`` alone on the same im2col-shaped products. "conv/GEMM" = GEMM time / conv time.
3. Peak memory at --mem-batch: each framework runs 3 steps in a fresh subprocess; "baseline" is
   VmRSS after imports, data and model, before the first step; "peak" is VmHWM at the end
   (not ru_maxrss, which Linux carries over from the parent across fork and exec); "step" = peak
   - baseline. NumPy runs with ``keep_freed_memory()`` (as the chapter) and without; "page
   faults" are the minor page faults of the last step (memory the OS had to hand out anew: what
   workspaces allocated once could save at most).

torch is optional (``.venv/bin/pip install torch``): without it, the NumPy parts are printed and
the torch columns say that torch is missing. Numbers depend on the machine and on its load (the
load average is printed at the start and the end); --quick makes a smoke run with fewer repeats.
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time


def parse():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--batches", type=int, nargs="+", default=[128, 512],
                   help="batches of parts 1 and 2 (default 128 512)")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed repeats of parts 1 and 2 (default 10, 3 with --quick)")
    p.add_argument("--mem-batch", type=int, default=512, help="batch of part 3 (default 512)")
    p.add_argument("--threads", type=int, default=2, help="threads of both (default 2)")
    p.add_argument("--quick", action="store_true", help="a smoke run: fewer repeats")
    p.add_argument("--_rss", choices=["numpy", "numpy-default", "torch", "torch-cl"],
                   help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.repeats is None:
        args.repeats = 3 if args.quick else 10
    return args


ARGS = parse()
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = str(ARGS.threads)  # before NumPy's BLAS starts; subprocesses inherit it

import numpy as np  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from cnnbook.classifiers import FastConvNet, whitening_filters  # noqa: E402
from cnnbook.nhwc import conv_backward, conv_forward  # noqa: E402
from cnnbook.training import (ORDINARY_SGEMM_GFLOPS, Trainer, channel_stats,  # noqa: E402
                              keep_freed_memory, normalize, sgemm_gflops)

WIDTHS = (32, 96, 192)
LR, SMOOTHING, SCALE = 0.01, 0.2, 1 / 8
RSS_STEPS = 3


def import_torch():
    """torch with ARGS.threads threads, or None if it is not installed."""
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(ARGS.threads)
    return torch


def make_data(n, seed=0):
    """Random uint8 images (n, 32, 32, 3), the same normalized to float32, random labels."""
    rng = np.random.default_rng(seed)
    X8 = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    return X8, normalize(X8, *channel_stats(X8)), rng.integers(0, 10, n)


def make_trainer(X8, X, y):
    """The chapter's FastConvNet (whitening from at most 64 of the images, few so that the float64
    patches leave little freed memory in the RSS baseline of part 3) and its Trainer, with a
    constant learning rate LR (so that torch can take the same steps)."""
    model = FastConvNet(whitening_filters(X[:64]), widths=WIDTHS, smoothing=SMOOTHING,
                        scale=SCALE, seed=0, dtype=np.float32)
    data = {"X_train": X8, "y_train": y, "X_test": X8[:1], "y_test": y[:1]}
    return Trainer(model, data, epochs=10**6, batch_size=len(X8), learning_rate=LR,
                   lr_start=1.0, lr_end=1.0, threads=ARGS.threads, verbose=False)


def numpy_step_fn(trainer, X, y):
    """One training step exactly as Trainer.train_epoch takes it (without the augmentation).
    The run is a million epochs long, so that lookahead's pull every 5 steps, which the step
    includes, leaves the weights as they are (its decay is (step / total steps)**3 ~ 0)."""
    def step():
        return trainer.train_step(X, y)
    return step


def torch_step_fn(torch, trainer, X, y, channels_last=False):
    """The same network, weights and update in PyTorch; returns step()."""
    nn, F = torch.nn, torch.nn.functional
    model, s = trainer.model, trainer.settings
    layout = torch.channels_last if channels_last else torch.contiguous_format

    def nchw(w):  # (k, k, C, F) -> (F, C, k, k)
        return torch.from_numpy(np.ascontiguousarray(w.transpose(3, 2, 0, 1)))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            p = model.params
            self.register_buffer("whitening", nchw(model.whitening))
            self.convs, self.bns = nn.ModuleList(), nn.ModuleList()
            for i in range(1, 4):
                for name in (f"{i}", f"{i}r"):
                    k, _, c_in, c_out = p[f"W{name}"].shape
                    conv = nn.Conv2d(c_in, c_out, k, padding=1, bias=False)
                    bn = nn.BatchNorm2d(c_out, eps=1e-5, momentum=1 - model.bn_momentum)
                    with torch.no_grad():
                        conv.weight.copy_(nchw(p[f"W{name}"]))
                        bn.weight.copy_(torch.from_numpy(p[f"gamma{name}"]))
                        bn.bias.copy_(torch.from_numpy(p[f"beta{name}"]))
                    self.convs.append(conv)
                    self.bns.append(bn)
            self.fc = nn.Linear(*p["W_fc"].shape)
            with torch.no_grad():
                self.fc.weight.copy_(torch.from_numpy(np.ascontiguousarray(p["W_fc"].T)))
                self.fc.bias.copy_(torch.from_numpy(p["b_fc"]))

        def forward(self, x):
            x = F.relu(F.conv2d(x, self.whitening))
            for i in range(0, 6, 2):
                x = F.relu(self.bns[i](F.max_pool2d(self.convs[i](x), 2)))
                x = x + F.relu(self.bns[i + 1](self.convs[i + 1](x)))
            pooled = x.amax(dim=(2, 3)) if model.head_pool == "max" else x.mean(dim=(2, 3))
            return self.fc(pooled) * SCALE

    net = Net().train().to(memory_format=layout)
    groups = {"gamma": s["bn_scale_lr"], "beta": s["bn_bias_lr"], "other": 1.0}
    members = {"gamma": [], "beta": [], "other": []}
    for name, p in net.named_parameters():
        kind = ("gamma" if name.startswith("bns") and name.endswith("weight") else
                "beta" if name.startswith("bns") else "other")
        members[kind].append(p)
    opt = torch.optim.SGD([{"params": members[k], "lr": LR * rate,
                            "weight_decay": s["weight_decay"] / rate if rate else 0.0}
                           for k, rate in groups.items() if members[k]],
                          lr=LR, momentum=s["momentum"], nesterov=True)
    tx = torch.from_numpy(np.ascontiguousarray(X.transpose(0, 3, 1, 2)))
    tx = tx.contiguous(memory_format=layout)
    ty = torch.from_numpy(y.astype(np.int64))

    def step():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(net(tx), ty, label_smoothing=SMOOTHING)
        loss.backward()
        opt.step()
        return loss.item()
    return step


def seconds(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def load():
    return "load average " + " ".join(f"{v:.2f}" for v in os.getloadavg())


# ---------------------------------------------------------------- 1. step time vs PyTorch


def step_section(torch, batch, repeats, warmup):
    print(f"\n1. Training step at batch {batch}: cnnbook vs PyTorch "
          f"(median of {repeats}, alternating, after warm-up)")
    X8, X, y = make_data(batch)
    trainer = make_trainer(X8, X, y)
    n_params = sum(p.size for p in trainer.model.params.values())
    print(f"   FastConvNet widths {WIDTHS}, {n_params:,} parameters, float32, random data")
    steps = {}
    if torch is not None:  # copies the weights before any step
        steps["torch NCHW"] = torch_step_fn(torch, trainer, X, y)
        steps["torch channels_last"] = torch_step_fn(torch, trainer, X, y, channels_last=True)
    steps["numpy"] = numpy_step_fn(trainer, X, y)
    losses = {name: [] for name in steps}
    times = {name: [] for name in steps}
    for i in range(warmup + repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            losses[name].append(step())
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
    med = {name: statistics.median(t) for name, t in times.items()}
    for name in steps:
        print(f"   {name:20s} loss: step 1 {losses[name][0]:.5f}, step {len(losses[name])} "
              f"{losses[name][-1]:.5f}")
    for name, t in med.items():
        print(f"   {name:20s} {1e3 * t:8.1f} ms/step  (min {1e3 * min(times[name]):.1f}, max "
              f"{1e3 * max(times[name]):.1f})  {batch / t:7.0f} images/s")
    if torch is None:
        print("   torch  missing (.venv/bin/pip install torch): no comparison")
        return med["numpy"], None
    faster = min(("torch NCHW", "torch channels_last"), key=med.get)
    ratio = med["numpy"] / med[faster]
    print(f"   ratio numpy / {faster} (the faster layout): {ratio:.2f}")
    return med["numpy"], ratio


# ---------------------------------------------------------------- 2. conv layers vs GEMM


def conv_layers(model, batch, size=32):
    """(name, x shape, w shape, pad, passes) of the network's convolutions, in forward order."""
    k0, _, c, f = model.whitening.shape
    layers = [("whitening", (batch, size, size, c), model.whitening.shape, 0, ("fwd",))]
    h = size - k0 + 1
    c = f
    for i in range(1, 4):
        w, w_r = model.params[f"W{i}"].shape, model.params[f"W{i}r"].shape
        passes = ("fwd", "dw") if i == 1 else ("fwd", "dw", "dx")  # block 1's input: no dx
        crop = ((1, 1 - h % 2), (1, 1 - h % 2))                     # skips what pooling drops
        layers.append((f"block{i} conv", (batch, h, h, c), w, crop, passes))
        h, c = h // 2, w[3]                                         # the 2x2 max pool
        layers.append((f"block{i} res", (batch, h, h, c), w_r, 1, ("fwd", "dw", "dx")))
    return layers


def conv_vs_gemm(x_shape, w_shape, pad, passes, repeats, rng):
    """Median times of the layer (conv_forward + conv_backward) and of its GEMMs alone."""
    N, H, W, C = x_shape
    k, _, _, F = w_shape
    x = rng.standard_normal(x_shape, dtype=np.float32)
    w = rng.standard_normal(w_shape, dtype=np.float32) * np.float32(0.1)
    out_shape = conv_forward(x[:1], w, pad)[0].shape
    Ho, Wo = out_shape[1:3]
    dout = rng.standard_normal((N, Ho, Wo, F), dtype=np.float32)
    need_dx = "dx" in passes

    def conv():
        _, cache = conv_forward(x, w, pad)
        if "dw" in passes:
            conv_backward(dout, cache, need_dx)

    M, K = N * Ho * Wo, k * k * C
    cols = rng.random((M, K), dtype=np.float32)
    w_col = rng.random((K, F), dtype=np.float32)
    d2 = rng.random((M, F), dtype=np.float32)
    out, dw = np.empty((M, F), np.float32), np.empty((K, F), np.float32)
    flops = 2 * M * K * F * (len(passes) - need_dx)
    if need_dx:  # the transposed convolution: (N*H*W, k*k*F) @ (k*k*F, C)
        cols_t = rng.random((N * H * W, k * k * F), dtype=np.float32)
        w_t = rng.random((k * k * F, C), dtype=np.float32)
        dx = np.empty((N * H * W, C), np.float32)
        flops += 2 * N * H * W * k * k * F * C

    def gemm():
        np.matmul(cols, w_col, out=out)
        if "dw" in passes:
            np.matmul(cols.T, d2, out=dw)
        if need_dx:
            np.matmul(cols_t, w_t, out=dx)

    conv(), gemm()  # warm-up
    t_conv, t_gemm = [], []
    for _ in range(repeats):
        t_conv.append(seconds(conv))
        t_gemm.append(seconds(gemm))
    return flops, statistics.median(t_conv), statistics.median(t_gemm)


def gemm_section(batch, repeats, step_time):
    part = batch // ARGS.threads
    print(f"\n2. Convolutions vs np.matmul on their im2col GEMMs, one thread's part of batch "
          f"{batch} ({part} images), one BLAS thread (median of {repeats})")
    trainer = make_trainer(*make_data(64))
    rng = np.random.default_rng(2)
    print(f"   {'layer':12s} {'x (N,H,W,C)':>15s} {'w k,C>F':>11s} {'passes':10s} {'MFLOP':>6s} "
          f"{'conv ms':>7s} {'conv GF/s':>9s} {'GEMM GF/s':>9s} {'conv/GEMM':>9s}")
    total_flops = total_conv = total_gemm = weighted = 0.0
    with threadpool_limits(1, user_api="blas"):
        for name, x_shape, w_shape, pad, passes in conv_layers(trainer.model, part):
            flops, t_conv, t_gemm = conv_vs_gemm(x_shape, w_shape, pad, passes, repeats, rng)
            frac = t_gemm / t_conv
            total_flops += flops
            total_conv += t_conv
            total_gemm += t_gemm
            weighted += flops * frac
            k, _, c, f = w_shape
            print(f"   {name:12s} {str(x_shape).replace(' ', ''):>15s} {f'{k}x{k},{c}>{f}':>11s} "
                  f"{'+'.join(passes):10s} {flops / 1e6:6.0f} {1e3 * t_conv:7.1f} "
                  f"{flops / t_conv / 1e9:9.1f} {flops / t_gemm / 1e9:9.1f} {frac:9.2f}")
    frac = weighted / total_flops
    print(f"   all 7 layers: {total_flops / 1e9:.2f} GFLOP, conv {1e3 * total_conv:.1f} ms "
          f"({total_flops / total_conv / 1e9:.1f} GFLOP/s), GEMMs {1e3 * total_gemm:.1f} ms "
          f"({total_flops / total_gemm / 1e9:.1f} GFLOP/s)")
    print(f"   conv/GEMM throughput: FLOP-weighted mean {frac:.2f}; "
          f"summed GEMM time / summed conv time {total_gemm / total_conv:.2f}")
    print(f"   conv layers of one thread: {1e3 * total_conv:.0f} ms of the {1e3 * step_time:.0f} "
          f"ms step of part 1 (both threads run at once)")
    return frac


# ---------------------------------------------------------------- 3. peak memory


def proc_status_kib(field):
    """VmRSS (the resident memory now) or VmHWM (its peak) of this process, in KiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def rss_child(kind, batch):
    """In a fresh process: baseline VmRSS, RSS_STEPS steps, peak RSS; prints one JSON line."""
    kept = keep_freed_memory() if kind == "numpy" else False
    torch = import_torch() if kind.startswith("torch") else None
    X8, X, y = make_data(batch)
    trainer = make_trainer(X8, X, y)
    step = (torch_step_fn(torch, trainer, X, y, channels_last=kind == "torch-cl") if torch
            else numpy_step_fn(trainer, X, y))
    baseline = proc_status_kib("VmRSS")
    times, faults = [], []
    for _ in range(RSS_STEPS):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        times.append(seconds(step))
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    peak = proc_status_kib("VmHWM")
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, see docstring
    print(json.dumps({"baseline": baseline, "peak": peak, "maxrss": maxrss, "last": times[-1],
                      "faults": faults[-1], "kept": kept}))


def memory_section(torch_available, batch):
    print(f"\n3. Peak memory at batch {batch}: {RSS_STEPS} steps in a fresh subprocess each "
          f"(MiB; peak = VmHWM, step = peak - baseline)")
    kinds = ["numpy", "numpy-default"] + (["torch", "torch-cl"] if torch_available else [])
    labels = {"numpy": "numpy (keep_freed_memory)", "numpy-default": "numpy (default malloc)",
              "torch": "torch NCHW", "torch-cl": "torch channels_last"}
    print(f"   {'':26s} {'baseline':>9s} {'peak':>9s} {'step':>9s} {'last step ms':>13s} "
          f"{'page faults':>12s}")
    res = {}
    for kind in kinds:
        cmd = [sys.executable, os.path.abspath(__file__), "--_rss", kind,
               "--mem-batch", str(batch), "--threads", str(ARGS.threads)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"   {labels[kind]:26s} failed (exit {proc.returncode}): "
                  f"{proc.stderr.strip().splitlines()[-1:]}")
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        res[kind] = r
        print(f"   {labels[kind]:26s} {r['baseline'] / 1024:9.0f} {r['peak'] / 1024:9.0f} "
              f"{(r['peak'] - r['baseline']) / 1024:9.0f} {1e3 * r['last']:13.0f} "
              f"{r['faults']:12d}")
    if not torch_available:
        print("   torch  missing (.venv/bin/pip install torch): no comparison")
        return None
    if "numpy" not in res or "torch" not in res or "torch-cl" not in res:
        return None
    ratios = {k: res["numpy"]["peak"] / res[k]["peak"] for k in ("torch", "torch-cl")}
    print(f"   peak RSS numpy / torch: NCHW {ratios['torch']:.2f}, channels_last "
          f"{ratios['torch-cl']:.2f}")
    return max(ratios.values())


# ---------------------------------------------------------------- main


def main():
    if ARGS._rss:
        return rss_child(ARGS._rss, ARGS.mem_batch)
    kept = keep_freed_memory()  # first, as the chapter does: freed memory stays for reuse
    torch = import_torch()
    versions = f"numpy {np.__version__}, " + (f"torch {torch.__version__}" if torch else
                                              "torch missing")
    print(f"train_step benchmark: {versions}, threads={ARGS.threads}, {load()}")
    gflops = sgemm_gflops()
    print(f"np.matmul 2048 x 2048 float32: {gflops:.0f} GFLOP/s; times here x "
          f"{gflops / ORDINARY_SGEMM_GFLOPS:.2f} ~ times on a {ORDINARY_SGEMM_GFLOPS:.0f} "
          f"GFLOP/s machine")
    print(f"keep_freed_memory() called first: {kept}")
    busy = os.getloadavg()[0]
    if busy > 0.5:
        print(f"warning: the machine is busy before this script starts (load {busy:.1f} on "
              f"{os.cpu_count()} cores);\n         multi-threaded timings suffer most from it")
    warmup = 1 if ARGS.quick else 2
    results = {}
    for batch in ARGS.batches:
        step_time, ratio = step_section(torch, batch, ARGS.repeats, warmup)
        results[batch] = (ratio, gemm_section(batch, ARGS.repeats, step_time))
    mem = memory_section(torch is not None, ARGS.mem_batch)
    print(f"\nSummary ({load()}; np.matmul {gflops:.0f} GFLOP/s)")
    for batch, (ratio, frac) in results.items():
        print(f"   step time numpy / faster torch layout at batch {batch}: "
              + (f"{ratio:.2f}" if ratio else "n/a (torch missing)")
              + f"; conv/GEMM {frac:.2f}")
    print(f"   peak RSS numpy / torch at batch {ARGS.mem_batch} (the larger of the two layouts' "
          f"ratios): " + (f"{mem:.2f}" if mem else "n/a"))


if __name__ == "__main__":
    main()
