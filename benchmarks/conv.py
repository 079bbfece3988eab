#!/usr/bin/env python
"""Benchmark: cnnbook's fast convolution against PyTorch's CPU conv2d (and np.matmul).

    .venv/bin/python benchmarks/conv.py [--threads 2] [--repeat 20] [--dtype float32]

For each shape, the NumPy layer (``cnnbook.fast_layers``) and ``torch.nn.functional.conv2d``
(forward, then backward for dx, dw, db through autograd) are timed alternately in the same
process with the same number of threads (best of ``--repeat`` runs each), and the script prints
times, GFLOP/s and the ratio NumPy / torch. It also times ``np.matmul`` alone on the three GEMM
shapes of the layer. torch is not a dependency of the book; install it only to run this script
(``.venv/bin/pip install torch``). The thread count is set before NumPy's BLAS starts.
"""
import argparse
import os
import sys
import time


def parse():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=20)
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    return p.parse_args()


ARGS = parse()
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = str(ARGS.threads)

import numpy as np  # noqa: E402

try:
    import torch  # noqa: E402
except ImportError:
    sys.exit("benchmarks/conv.py needs torch: .venv/bin/pip install torch")

from cnnbook.fast_layers import conv_backward_fast, conv_forward_fast  # noqa: E402

# (N, C, H, W, F, HH, WW, stride, pad): the chapter's common shape, then layers of a small
# CIFAR-10 ConvNet (7x7 first layer of the assignment's three-layer net, deeper 3x3 layers).
SHAPES = [
    (50, 3, 32, 32, 32, 3, 3, 1, 1),
    (50, 3, 32, 32, 32, 7, 7, 1, 3),
    (50, 32, 16, 16, 64, 3, 3, 1, 1),
    (50, 64, 8, 8, 128, 3, 3, 1, 1),
    (50, 16, 32, 32, 32, 5, 5, 1, 2),
]


def best(fn, repeat):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main():
    torch.set_num_threads(ARGS.threads)
    dtype = np.dtype(ARGS.dtype)
    tdtype = getattr(torch, ARGS.dtype)
    rng = np.random.default_rng(0)
    print(f"threads={ARGS.threads} dtype={dtype} repeat={ARGS.repeat} "
          f"numpy {np.__version__} torch {torch.__version__}")
    header = (f"{'shape (N,C,H,W) F HHxWW S P':36s} {'numpy ms':>9s} {'torch ms':>9s} "
              f"{'ratio':>6s} {'numpy GF/s':>10s} {'torch GF/s':>10s} {'matmul GF/s':>11s}")
    print(header)
    ratios = []
    for N, C, H, W, F, HH, WW, S, P in SHAPES:
        x = rng.standard_normal((N, C, H, W)).astype(dtype)
        w = (0.1 * rng.standard_normal((F, C, HH, WW))).astype(dtype)
        b = rng.standard_normal(F).astype(dtype)
        conv_param = {"stride": S, "pad": P}
        out, cache = conv_forward_fast(x, w, b, conv_param)
        dout = rng.standard_normal(out.shape).astype(dtype)
        H_out, W_out = out.shape[2:]
        flops = 3 * 2 * N * F * C * HH * WW * H_out * W_out  # forward, dw and dx GEMMs

        def numpy_step():
            _, c = conv_forward_fast(x, w, b, conv_param)
            conv_backward_fast(dout, c)

        tx = torch.from_numpy(x).requires_grad_()
        tw = torch.from_numpy(w).requires_grad_()
        tb = torch.from_numpy(b).requires_grad_()
        tdout = torch.from_numpy(dout)

        def torch_step():
            tx.grad = tw.grad = tb.grad = None
            y = torch.nn.functional.conv2d(tx, tw, tb, stride=S, padding=P)
            y.backward(tdout)

        # the layer's three GEMMs alone, with the operands and orientations the layer uses
        a = w.reshape(F, -1)
        cols = cache[-1]
        d2 = np.ascontiguousarray(dout.transpose(1, 0, 2, 3).reshape(F, -1))

        def matmul_step():
            a @ cols
            d2 @ cols.T
            a.T @ d2

        numpy_step(), torch_step(), matmul_step()  # warm-up
        t_np, t_torch, t_mm = [], [], []
        for _ in range(ARGS.repeat):  # interleaved, so that load from other processes hits all
            t_np.append(best(numpy_step, 1))
            t_torch.append(best(torch_step, 1))
            t_mm.append(best(matmul_step, 1))
        t_np, t_torch, t_mm = min(t_np), min(t_torch), min(t_mm)
        ratio = t_np / t_torch
        ratios.append(ratio)
        label = f"({N},{C},{H},{W}) {F} {HH}x{WW} {S} {P}"
        print(f"{label:36s} {1e3 * t_np:9.2f} {1e3 * t_torch:9.2f} {ratio:6.2f} "
              f"{flops / t_np / 1e9:10.1f} {flops / t_torch / 1e9:10.1f} "
              f"{flops / t_mm / 1e9:11.1f}")
    print(f"numpy / torch time ratio: geometric mean {np.exp(np.mean(np.log(ratios))):.2f}, "
          f"worst {max(ratios):.2f}")


if __name__ == "__main__":
    main()
