"""Cost of the two parts of a training step that the MNIST defaults tune, on this machine.

1. Pool generation: seconds to draw a 20,000-sample pool of the default generator (``dcgan28``,
   latent 12, bf16) with ``IMLE.generate_pool`` for several ``pool_batch_size`` values.
2. SGD step: milliseconds per ``Trainer._sgd_step`` of the default config on real MNIST after
   one pool refresh, ``method.train_precision`` fp32 against bf16.
3. Output layer: the same two figures (pool of 20,000 at batch 512; fp32 SGD step) with the
   ``dcgan28`` output layer computed as ``imle.nets.SubpixelConvTranspose2d`` (the default)
   against a plain ``torch.nn.ConvTranspose2d`` holding the same weights.

Each figure is the median of ``--repeats`` measurements, interleaved so that the variants see
the same machine load. Usage::

    IMLE_DATA_DIR=../shared/data python benchmarks/step_cost_bench.py --threads 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch

import imle
from imle.config import replace


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=150, help="SGD steps per measurement")
    ap.add_argument("--data-dir", default=os.environ.get("IMLE_DATA_DIR"))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, {a.threads} threads, median of {a.repeats}")

    gen = imle.build_generator("dcgan28", 12, (1, 28, 28))
    sizes = (128, 512, 4096)
    pool_s: dict[int, list[float]] = {bs: [] for bs in sizes}
    for rep in range(a.repeats + 1):
        for bs in sizes:
            method = imle.IMLE(gen, 12, pool_precision="bf16", pool_batch_size=bs)
            t = time.perf_counter()
            method.generate_pool(20_000, seed=rep)
            if rep:  # the first round warms up the kernels
                pool_s[bs].append(time.perf_counter() - t)
    print("\npool_batch_size  pool_s (20,000 samples)  vs 4096")
    ref = statistics.median(pool_s[4096])
    for bs in sizes:
        med = statistics.median(pool_s[bs])
        print(f"{bs:>15}  {med:>23.3f}  {ref / med:>7.2f}x")

    trainers = {}
    with tempfile.TemporaryDirectory() as tmp:
        for prec in ("fp32", "bf16"):
            cfg = replace(imle.TrainConfig(), progress="none", threads=a.threads,
                          **{"data.data_dir": a.data_dir, "method.train_precision": prec})
            tr = imle.Trainer(cfg, os.path.join(tmp, prec))
            tr._refresh()
            trainers[prec] = tr
        step_ms: dict[str, list[float]] = {p: [] for p in trainers}
        for rep in range(a.repeats + 1):
            for prec, tr in trainers.items():
                t = time.perf_counter()
                for _ in range(a.steps):
                    tr._sgd_step()
                    tr.step += 1
                if rep:
                    step_ms[prec].append((time.perf_counter() - t) / a.steps * 1e3)
    print("\ntrain_precision  ms per SGD step (default config, MNIST)  vs fp32")
    ref = statistics.median(step_ms["fp32"])
    for prec, v in step_ms.items():
        med = statistics.median(v)
        print(f"{prec:>15}  {med:>38.2f}  {ref / med:>7.2f}x")
    output_layer_comparison(a)


def output_layer_comparison(a: argparse.Namespace) -> None:
    """Section 3: sub-pixel against transposed-convolution output layer, same weights."""
    variants = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("subpixel", "conv_transpose"):
            cfg = replace(imle.TrainConfig(), progress="none", threads=a.threads,
                          **{"data.data_dir": a.data_dir})
            tr = imle.Trainer(cfg, os.path.join(tmp, name))
            if name == "conv_transpose":
                for net in (tr.method.generator, tr.method.ema):
                    old = net.net[2]
                    plain = torch.nn.ConvTranspose2d(old.in_channels, old.out_channels, 4, 2, 1)
                    plain.load_state_dict(old.state_dict())
                    net.net[2] = plain
                tr.optimizer = type(tr.optimizer)(tr.method.generator.parameters(),
                                                  **tr.optimizer.defaults)
            tr._refresh()
            variants[name] = tr
        pool_s: dict[str, list[float]] = {v: [] for v in variants}
        step_ms: dict[str, list[float]] = {v: [] for v in variants}
        for rep in range(a.repeats + 1):
            for name, tr in variants.items():
                t = time.perf_counter()
                tr.method.generate_pool(20_000, seed=rep)
                t_pool = time.perf_counter() - t
                t = time.perf_counter()
                for _ in range(a.steps):
                    tr._sgd_step()
                    tr.step += 1
                if rep:
                    pool_s[name].append(t_pool)
                    step_ms[name].append((time.perf_counter() - t) / a.steps * 1e3)
    print("\noutput layer    pool_s (20,000, bf16)  vs plain  ms per SGD step (fp32)  vs plain")
    ref_p = statistics.median(pool_s["conv_transpose"])
    ref_s = statistics.median(step_ms["conv_transpose"])
    for name in variants:
        p, s = statistics.median(pool_s[name]), statistics.median(step_ms[name])
        print(f"{name:>14}  {p:>21.3f}  {ref_p / p:>7.2f}x  {s:>22.2f}  {ref_s / s:>7.2f}x")


if __name__ == "__main__":
    main()
