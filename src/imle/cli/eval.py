"""``imle eval``, ``imle train-classifier`` and ``imle train-encoder``.

``imle eval RUN`` draws samples from a training run (through ``imle.runs.sample_from_run``),
scores them with :func:`imle.metrics.evaluate`, prints a table and writes ``RUN/eval.json``.
``imle eval FILE.npy --data NAME`` scores any model's samples the same way. ``--json FILE``
writes ``{"metrics": {...}, "settings": {...}}`` there as well.

``imle train-classifier --data mnist --out PATH --seed 0`` trains the feature-extractor CNN whose
weights ship in ``imle/metrics/weights/``. ``imle train-encoder --data mnist --out PATH`` trains
the label-free autoencoder that the ``encoder`` distances load.

:func:`register` adds both subcommands to the main ``imle`` parser; :func:`main` runs them
standalone (``python -m imle.cli.eval eval ...``).
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from imle.cli.errors import run_handler
from imle.errors import ConfigError, DataError

DEFAULT_METRICS = "parzen,fid,kid,prdc,modes,memorization"


def _add_eval(sub) -> None:
    p = sub.add_parser(
        "eval", help="score a run's samples (or a .npy of samples) with the evaluation suite",
        description="Score generated samples: Parzen, FID, KID, precision/recall/density/"
                    "coverage, mode counts and a memorisation check, each beside its real-data "
                    "floor.")
    p.add_argument("target", help="run folder, or a .npy file of samples (N, C, H, W) in [0, 1]")
    p.add_argument("--metrics", "--metric", default=DEFAULT_METRICS,
                   help=f"comma-separated subset of {DEFAULT_METRICS} (default: all)")
    p.add_argument("--num", type=int, default=None,
                   help="samples to draw from a run (default 10000) or to use from a .npy "
                        "(default: all)")
    p.add_argument("--seed", type=int, default=0, help="sampling, reference subset and KID seed")
    p.add_argument("--samples-per-condition", type=int, default=10,
                   help="conditional runs: samples drawn per test condition (--num conditions, "
                        "default 1000)")
    p.add_argument("--data", default=None,
                   help="reference data set (required with a .npy; default: the run's)")
    p.add_argument("--data-dir", default=None, help="data folder (default: IMLE_DATA_DIR)")
    p.add_argument("--json", default=None, help="also write the results to this file")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    p.add_argument("--extractor", default=None,
                   help="feature extractor: mnist-cnn, fashion-mnist-cnn, inception or a "
                        ".safetensors path (default: the data set's own)")
    p.add_argument("--inception-weights", default=None,
                   help="local torch-fidelity InceptionV3 weights (for --extractor inception)")
    p.add_argument("--num-reference", type=int, default=10_000,
                   help="training examples forming the real set of FID/KID/PRDC")
    p.add_argument("--kid-subset-size", type=int, default=1000)
    p.add_argument("--kid-subsets", type=int, default=100)
    p.add_argument("--prdc-k", type=int, default=5)
    p.add_argument("--parzen-sigmas", default=None,
                   help="comma-separated Parzen bandwidth grid (default: 20 log-spaced in "
                        "[0.05, 1])")
    p.add_argument("--no-floors", action="store_true",
                   help="skip the real-data floors (faster, but the numbers lose their scale)")
    p.add_argument("--cache-dir", default=None,
                   help="disk cache of reference statistics (default: $IMLE_CACHE_DIR/metrics "
                        "or ~/.cache/imle/metrics; 'none' disables)")
    p.add_argument("--batch-size", type=int, default=1000, help="sampling batch size")
    p.add_argument("--nfe", type=int, default=None,
                   help="flow runs: network evaluations per sample (default: the run's)")
    p.add_argument("--solver", choices=("euler", "heun"), default=None,
                   help="flow runs: ODE solver (default: the run's)")
    p.add_argument("--device", default="cpu", help="device of the feature extractor")
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads (0: torch's default; 1 is fastest on busy shared "
                        "cores)")
    p.set_defaults(func=run_eval)


def _add_network_training(sub, name: str, help_: str, description: str, epochs: int):
    """A subparser with the flags `_train_network` reads (data, output, seed, schedule,
    threads); the caller adds its architecture's own."""
    p = sub.add_parser(name, help=help_, description=description)
    p.add_argument("--data", default="mnist", help="mnist or fashion-mnist")
    p.add_argument("--out", required=True, help="output .safetensors path")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=epochs)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads; the weights are bit-reproducible for a fixed seed and "
                        "thread count (the shipped ones used 1)")
    p.add_argument("--data-dir", default=None)
    return p


def _add_train_classifier(sub) -> None:
    p = _add_network_training(
        sub, "train-classifier", "train the MNIST/Fashion-MNIST feature-extractor CNN",
        "Train the small CNN used for FID/KID/PRDC/mode metrics; writes safetensors weights "
        "and a JSON record (sha256, accuracy, seed, command).", epochs=6)
    p.add_argument("--arch", default="SmallCNN", choices=["SmallCNN", "AvgPoolCNN"],
                   help="classifier architecture (AvgPoolCNN: the independent judge network)")
    p.set_defaults(func=run_train_classifier)


def _add_train_encoder(sub) -> None:
    p = _add_network_training(
        sub, "train-encoder", "train a label-free autoencoder for the 'encoder' distances",
        "Train a convolutional autoencoder on a data set's training images alone (no labels) "
        "for the label-free perceptual distances 'encoder' and 'encoder+l1'; writes "
        "safetensors weights and a JSON record (sha256, reconstruction error, seed, command).",
        epochs=4)
    p.add_argument("--width", type=int, default=16, help="first-stage channels")
    p.add_argument("--code", type=int, default=32, help="code size")
    p.set_defaults(func=run_train_encoder)


def register(subparsers) -> None:
    """Adds the ``eval``, ``train-classifier`` and ``train-encoder`` subcommands to an argparse
    subparsers object.

    Each sets ``func`` to a handler ``handler(args) -> int`` (the exit code).
    """
    _add_eval(subparsers)
    _add_train_classifier(subparsers)
    _add_train_encoder(subparsers)


def build_parser() -> argparse.ArgumentParser:
    """A standalone parser with the two subcommands."""
    parser = argparse.ArgumentParser(prog="imle", description="IMLE evaluation commands")
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub)
    return parser


def _json_safe(obj):
    """NaN/inf → None so the file is strict JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def _load_npy(path: Path, data: str | None, num: int | None):
    import numpy as np
    import torch

    from imle.data import validate_images
    from imle.metrics.evaluate import TOY_DATA

    if data is None:
        raise ConfigError(f"{path}: a .npy of samples needs --data NAME naming the reference "
                          "data set (e.g. --data mnist)")
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot read as .npy ({e})") from e
    x = torch.from_numpy(np.ascontiguousarray(arr)).float()
    if num is not None:
        if num > x.shape[0]:
            raise ConfigError(f"--num {num} but {path} holds only {x.shape[0]} samples")
        x = x[:num]
    if data in TOY_DATA:
        if x.ndim != 2 or x.shape[1] != 2:
            raise DataError(f"{path}: {data} samples must be (N, 2); got {tuple(x.shape)}")
    else:
        validate_images(x, str(path))
    return x


def run_eval(args: argparse.Namespace) -> int:
    """Handler of ``imle eval``."""
    from imle.fileio import atomic_write_text, check_writable
    from imle.metrics.evaluate import check_sizes, evaluate, format_table, normalize_metrics

    target = Path(args.target)
    metrics = normalize_metrics(args.metrics)
    if args.json:
        check_writable(Path(args.json), args.overwrite)
    if args.threads < 0:
        raise ConfigError(f"--threads must be ≥ 0; got {args.threads}")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    sigmas = None
    if args.parzen_sigmas:
        try:
            sigmas = [float(s) for s in args.parzen_sigmas.split(",") if s.strip()]
        except ValueError as e:
            raise ConfigError(f"--parzen-sigmas must be comma-separated numbers ({e})") from e
    if target.is_dir() and _task_of(target):
        return _eval_conditional(args, target)
    if args.num is not None:
        # Cheap checks before sampling; evaluate() repeats them with the feature dimension.
        check_sizes(args.num, metrics, kid_subset_size=args.kid_subset_size,
                    prdc_k=args.prdc_k)
    t0 = time.perf_counter()
    run_dir = None
    data_dir = args.data_dir
    if target.is_dir():
        run_dir = target
        from imle.runs import sample_from_run

        num = 10_000 if args.num is None else args.num
        check_sizes(num, metrics, kid_subset_size=args.kid_subset_size, prdc_k=args.prdc_k)
        x, config = sample_from_run(run_dir, num, seed=args.seed, batch_size=args.batch_size,
                                    nfe=args.nfe, solver=args.solver)
        data_cfg = (config or {}).get("data", {}) or {}
        data = args.data or data_cfg.get("name")
        if data is None:
            raise ConfigError(f"{run_dir}: the run's config names no data set; pass --data")
        if data_dir is None:
            data_dir = data_cfg.get("data_dir")
        source = {"run": str(run_dir)}
    elif target.suffix.lower() == ".npy":
        if not target.is_file():
            raise DataError(f"{target}: no such file")
        x = _load_npy(target, args.data, args.num)
        data = args.data
        source = {"samples_file": str(target)}
    else:
        raise DataError(f"{target}: give a run folder or a .npy file of samples")
    t_sample = time.perf_counter() - t0
    result = evaluate(x, data, metrics, data_dir=data_dir, seed=args.seed,
                      extractor=args.extractor, num_reference=args.num_reference,
                      parzen_sigmas=sigmas, kid_subset_size=args.kid_subset_size,
                      kid_num_subsets=args.kid_subsets, prdc_k=args.prdc_k,
                      floors=not args.no_floors, inception_weights=args.inception_weights,
                      device=args.device, log=lambda m: print(m, file=sys.stderr),
                      cache_dir=(True if args.cache_dir is None else
                                 None if args.cache_dir.lower() == "none" else
                                 Path(args.cache_dir)))
    result["settings"].update(source)
    result["settings"]["sampling_s"] = round(t_sample, 3)
    result["settings"].update({k: getattr(args, k) for k in ("nfe", "solver")
                               if getattr(args, k, None) is not None})
    result["settings"]["command"] = "imle eval " + " ".join(
        shlex.quote(a) for a in getattr(args, "_argv", []) or [str(target)])
    print(format_table(result))
    text = json.dumps(_json_safe(result), indent=2) + "\n"
    written = []
    if run_dir is not None:  # the run's latest evaluation: replaced, atomically
        atomic_write_text(run_dir / "eval.json", text)
        written.append(run_dir / "eval.json")
    if args.json:
        atomic_write_text(Path(args.json), text)
        written.append(Path(args.json))
    for path in written:
        print(f"wrote {path}")
    return 0


def _task_of(run_dir: Path) -> str:
    try:
        return json.loads((run_dir / "config.json").read_text())["data"].get("task", "")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return ""  # not a readable run: the unconditional path reports it


def _eval_conditional(args: argparse.Namespace, run_dir: Path) -> int:
    """``imle eval`` of a conditional run: K samples for each of the first --num test
    conditions of the run's data set, scored by `imle.metrics.conditional`."""

    from imle.data import load_dataset
    from imle.data.tasks import make_task
    from imle.fileio import atomic_write_text
    from imle.metrics import load_feature_extractor
    from imle.metrics.conditional import conditional_scores
    from imle.metrics.evaluate import DEFAULT_EXTRACTOR
    from imle.runs import load_method

    t0 = time.perf_counter()
    method, config = load_method(run_dir, device=args.device)
    task, name = config.data.task, args.data or config.data.name
    if task == "pairs":
        raise ConfigError(f"{run_dir} trains on given pairs (task 'pairs'): score its samples "
                          f"with imle.metrics.conditional.conditional_scores on your own "
                          f"held-out pairs")
    test = load_dataset(name, "test", args.data_dir or config.data.data_dir)
    n = min(args.num or 1000, test.x.shape[0])
    k = args.samples_per_condition
    if k < 1:
        raise ConfigError(f"--samples-per-condition must be >= 1, got {k}")
    truth, labels = test.x[:n], None if test.labels is None else test.labels[:n]
    num_classes = method.cond_shape[0] if task == "class" else None
    cond, _ = make_task(task, truth, labels, num_classes=num_classes)
    method.pool_batch_size = args.batch_size
    method.configure_sampling(nfe=args.nfe, solver=args.solver)
    samples = method.sample_conditional(cond.to(method.device), k, seed=args.seed).cpu()
    ext_name = args.extractor or DEFAULT_EXTRACTOR.get(name)
    extractor = load_feature_extractor(ext_name, args.device) if ext_name else None
    scores = conditional_scores(samples.clamp(0, 1), truth, cond, task, extractor,
                                reference=test.x, labels=labels)
    result = {"metrics": scores, "settings": {
        "run": str(run_dir), "task": task, "data": name, "split": "test",
        "num_conditions": n, "samples_per_condition": k, "seed": args.seed,
        "extractor": ext_name, "seconds": round(time.perf_counter() - t0, 3)}}
    width = max(len(key) for key in scores)
    print("\n".join(f"{key:<{width}}  {value:.6g}" for key, value in scores.items()))
    text = json.dumps(_json_safe(result), indent=2) + "\n"
    atomic_write_text(run_dir / "eval.json", text)
    print(f"wrote {run_dir / 'eval.json'}")
    if args.json:
        atomic_write_text(Path(args.json), text)
        print(f"wrote {args.json}")
    return 0


def _train_network(args: argparse.Namespace, train: Callable, score: Callable,
                   splits: tuple[str, ...]) -> tuple[Any, float, Any]:
    """The shared part of ``train-classifier`` and ``train-encoder``: checks ``--data`` and
    ``--threads``, loads the training split and ``splits``, and runs ``train(train_split)`` on
    ``--threads`` torch threads. Returns the model, the training seconds and ``score(model,
    *split datasets)``."""
    import torch

    from imle.data import load_dataset

    if args.data not in ("mnist", "fashion-mnist"):
        raise ConfigError(f"--data must be mnist or fashion-mnist; got {args.data!r}")
    if args.threads < 1:
        raise ConfigError("--threads must be ≥ 1")
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        t0 = time.perf_counter()
        data = [load_dataset(args.data, split, args.data_dir) for split in ("train", *splits)]
        model = train(data[0])
        seconds = time.perf_counter() - t0
        return model, seconds, score(model, *data[1:])
    finally:
        torch.set_num_threads(prev_threads)


def run_train_classifier(args: argparse.Namespace) -> int:
    """Handler of ``imle train-classifier``."""
    import torch

    from imle.metrics.features import accuracy, save_classifier, train_classifier

    model, seconds, (val_acc, test_acc) = _train_network(
        args,
        lambda train: train_classifier(train.x, train.labels, seed=args.seed,
                                       epochs=args.epochs, batch_size=args.batch_size,
                                       lr=args.lr, log=lambda m: print(m, flush=True),
                                       arch=args.arch),
        lambda model, val, test: (accuracy(model, val.x, val.labels),
                                  accuracy(model, test.x, test.labels)),
        ("val", "test"))
    command = (f"imle train-classifier --data {args.data} --out {shlex.quote(args.out)} "
               f"--seed {args.seed} --epochs {args.epochs} --batch-size {args.batch_size} "
               f"--lr {args.lr} --threads {args.threads} --arch {args.arch}")
    digest = save_classifier(model, args.out, {
        "data": args.data, "train_split": "train", "seed": args.seed, "epochs": args.epochs,
        "arch": args.arch,
        "val_accuracy": val_acc, "test_accuracy": test_acc, "train_seconds": round(seconds, 1),
        "threads": args.threads, "torch": torch.__version__, "command": command})
    print(f"{args.data}: val accuracy {val_acc:.4f}, test accuracy {test_acc:.4f} "
          f"({seconds:.0f} s)\nwrote {args.out} (sha256 {digest})")
    return 0


def run_train_encoder(args: argparse.Namespace) -> int:
    """Handler of ``imle train-encoder``: trains on the training split's images, never labels."""
    import torch

    from imle.metrics.features import reconstruction_error, save_classifier, train_autoencoder

    model, seconds, val_mse = _train_network(
        args,
        lambda train: train_autoencoder(train.x, seed=args.seed, epochs=args.epochs,
                                        batch_size=args.batch_size, lr=args.lr,
                                        width=args.width, num_features=args.code,
                                        log=lambda m: print(m, flush=True)),
        lambda model, val: reconstruction_error(model, val.x), ("val",))
    command = (f"imle train-encoder --data {args.data} --out {shlex.quote(args.out)} "
               f"--seed {args.seed} --epochs {args.epochs} --batch-size {args.batch_size} "
               f"--lr {args.lr} --width {args.width} --code {args.code} "
               f"--threads {args.threads}")
    digest = save_classifier(model, args.out, {
        "data": args.data, "train_split": "train", "labels_used": False, "seed": args.seed,
        "epochs": args.epochs, "arch": "ConvAutoEncoder", "val_mse_per_pixel": val_mse,
        "train_seconds": round(seconds, 1), "threads": args.threads,
        "torch": torch.__version__, "command": command})
    print(f"{args.data}: validation reconstruction MSE {val_mse:.5f} per pixel "
          f"({seconds:.0f} s)\nwrote {args.out} (sha256 {digest})")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Runs ``eval``, ``train-classifier`` or ``train-encoder`` from a standalone parser;
    returns the exit code.

    Errors of this package (bad options, too few samples, missing data) are printed as one line
    on stderr with exit code 2 instead of a traceback.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args._argv = argv[1:]
    return run_handler(args)


if __name__ == "__main__":
    sys.exit(main())
