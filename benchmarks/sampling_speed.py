"""Sampling cost per sample: IMLE's (and the GAN's) one forward pass against flow matching at
1, 4 and 32 network evaluations, on the networks each method trains by default.

For each data shape the script builds the methods as ``imle train`` would (``build_method`` of
the method's preset: the derived generator or velocity network, untrained weights, which cost
the same as trained ones), then times ``method.sample(n)`` (fp32, no gradients, EMA weights,
batches of 256) on one thread. Timings of one shape are interleaved over ``--repeats`` rounds
and the median is reported, with the ratio to IMLE's time measured in the same rounds.

    python benchmarks/sampling_speed.py --out docs/results/sampling-speed-2026-12-05
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from _common import markdown_table

from imle.config import PRESETS, replace
from imle.runs import build_method

SHAPES = {
    "2-D points (2,)": (2,),
    "MNIST (1, 28, 28)": (1, 28, 28),
    "CIFAR-sized (3, 32, 32)": (3, 32, 32),
}


def methods(shape: tuple[int, ...], unet_widths: list[int]) -> dict[str, tuple]:
    """{row name: (method, nfe or None)} for one sample shape."""
    imle_method = build_method(PRESETS["default"](), shape)
    gan_method = build_method(PRESETS["gan"](), shape)
    out = {f"IMLE ({type(imle_method.generator).__name__})": (imle_method, None),
           "GAN (same generator as IMLE)": (gan_method, None)}
    widths = unet_widths if len(shape) == 3 else [None]
    for width in widths:
        cfg = PRESETS["flow"]()
        if width is not None:
            cfg = replace(cfg, **{"model.width": width})
        flow = build_method(cfg, shape)
        net = type(flow.generator).__name__ + (f" width {width}" if width else "")
        for nfe in (1, 4, 32):
            out[f"flow ({net}), {nfe} NFE"] = (flow, nfe)
    return out


def params(method) -> int:
    return sum(p.numel() for p in method.generator.parameters())


def time_sample(method, nfe: int | None, n: int) -> float:
    """Seconds per sample of ``method.sample(n)``."""
    if nfe is not None:
        method.configure_sampling(nfe=nfe, solver="euler")
    t0 = time.perf_counter()
    method.sample(n, seed=0)
    return (time.perf_counter() - t0) / n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--samples", type=int, default=512, help="samples per one-pass timing")
    ap.add_argument("--unet-widths", default="32,16,8", help="flow-unet widths to time")
    args = ap.parse_args()
    torch.set_num_threads(1)
    widths = [int(w) for w in args.unet_widths.split(",")]
    rows = []
    for shape_name, shape in SHAPES.items():
        cases = methods(shape, widths)
        for m, _ in cases.values():
            m.pool_batch_size = 256
            m.pool_precision = "fp32"
        times: dict[str, list[float]] = {k: [] for k in cases}
        for _ in range(args.repeats):
            for name, (m, nfe) in cases.items():
                # Multi-step samplers draw fewer samples so each timing takes similar time.
                n = args.samples if nfe is None else max(64, args.samples // nfe)
                times[name].append(time_sample(m, nfe, n))
        base = statistics.median(times[next(iter(cases))])
        for name, (m, _) in cases.items():
            ms = statistics.median(times[name]) * 1e3
            rows.append({"shape": shape_name, "sampler": name, "parameters": params(m),
                         "ms_per_sample": round(ms, 4),
                         "x_imle": round(ms / (base * 1e3), 1)})
            print(f"{shape_name:26s} {name:45s} {ms:10.4f} ms  {rows[-1]['x_imle']}x",
                  flush=True)
    title = (f"Sampling cost per sample (fp32, one thread, batches of 256, median of "
             f"{args.repeats} interleaved rounds; untrained weights)")
    table = markdown_table(title, ["shape", "sampler"], ["parameters", "ms_per_sample", "x_imle"],
                           rows)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.md").write_text(table + "\n")
    (args.out / "results.json").write_text(json.dumps(
        {"rows": rows, "argv": sys.argv, "torch": torch.__version__,
         "machine": platform.processor() or platform.machine()}, indent=2) + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
