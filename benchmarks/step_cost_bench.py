"""Cost of the two parts of a training step that the MNIST defaults tune, on this machine.

1. Pool generation: seconds to draw a 20,000-sample pool of the default generator (``dcgan28``,
   latent 12, bf16) with ``IMLE.generate_pool`` for several ``pool_batch_size`` values.
2. SGD step: milliseconds per ``Trainer.sgd_step`` of the default config on real MNIST after
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
from collections.abc import Callable

import torch

import imle
from imle.config import replace


def median_seconds(jobs: dict[str, Callable[[int], object]], repeats: int) -> dict[str, float]:
    """Median seconds of each job(rep) over ``repeats`` rounds, after one warm-up round.

    The jobs run interleaved, one of each per round, so that they see the same machine load.
    """
    times: dict[str, list[float]] = {name: [] for name in jobs}
    for rep in range(repeats + 1):
        for name, job in jobs.items():
            t = time.perf_counter()
            job(rep)
            if rep:  # the first round warms up the kernels
                times[name].append(time.perf_counter() - t)
    return {name: statistics.median(v) for name, v in times.items()}


def default_trainer(run_dir: str, a: argparse.Namespace, **overrides: object) -> imle.Trainer:
    """A Trainer of the default config (with dotted overrides) after its first pool refresh."""
    cfg = replace(imle.TrainConfig(), progress="none", threads=a.threads,
                  **{"data.data_dir": a.data_dir, **overrides})
    tr = imle.Trainer(cfg, run_dir)
    tr.refresh()
    return tr


def sgd_steps(tr: imle.Trainer, steps: int) -> Callable[[int], object]:
    return lambda rep: [tr.sgd_step() for _ in range(steps)]


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
    methods = {bs: imle.IMLE(gen, 12, pool_precision="bf16", pool_batch_size=bs)
               for bs in (128, 512, 4096)}
    pool_s = median_seconds({str(bs): lambda rep, m=m: m.generate_pool(20_000, seed=rep)
                             for bs, m in methods.items()}, a.repeats)
    print("\npool_batch_size  pool_s (20,000 samples)  vs 4096")
    for bs, med in pool_s.items():
        print(f"{bs:>15}  {med:>23.3f}  {pool_s['4096'] / med:>7.2f}x")

    with tempfile.TemporaryDirectory() as tmp:
        trainers = {prec: default_trainer(os.path.join(tmp, prec), a,
                                          **{"method.train_precision": prec})
                    for prec in ("fp32", "bf16")}
        step_s = median_seconds({prec: sgd_steps(tr, a.steps) for prec, tr in trainers.items()},
                                a.repeats)
    print("\ntrain_precision  ms per SGD step (default config, MNIST)  vs fp32")
    for prec, med in step_s.items():
        print(f"{prec:>15}  {med / a.steps * 1e3:>38.2f}  {step_s['fp32'] / med:>7.2f}x")
    output_layer_comparison(a)


def output_layer_comparison(a: argparse.Namespace) -> None:
    """Section 3: sub-pixel against transposed-convolution output layer, same weights."""
    with tempfile.TemporaryDirectory() as tmp:
        variants = {name: default_trainer(os.path.join(tmp, name), a)
                    for name in ("subpixel", "conv_transpose")}
        tr = variants["conv_transpose"]
        for net in (tr.method.generator, tr.method.ema):
            old = net.net[2]
            plain = torch.nn.ConvTranspose2d(old.in_channels, old.out_channels, 4, 2, 1)
            plain.load_state_dict(old.state_dict())
            net.net[2] = plain
        tr.optimizer = type(tr.optimizer)(tr.method.generator.parameters(),
                                          **tr.optimizer.defaults)
        pool_s = median_seconds({name: lambda rep, t=t: t.method.generate_pool(20_000, seed=rep)
                                 for name, t in variants.items()}, a.repeats)
        step_s = median_seconds({name: sgd_steps(t, a.steps) for name, t in variants.items()},
                                a.repeats)
    print("\noutput layer    pool_s (20,000, bf16)  vs plain  ms per SGD step (fp32)  vs plain")
    for name in variants:
        p, st = pool_s[name], step_s[name]
        print(f"{name:>14}  {p:>21.3f}  {pool_s['conv_transpose'] / p:>7.2f}x  "
              f"{st / a.steps * 1e3:>22.2f}  {step_s['conv_transpose'] / st:>7.2f}x")


if __name__ == "__main__":
    main()
