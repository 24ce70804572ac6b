"""Command-line interface: ``imle train``, ``imle sample``, ``imle eval``, ``imle datasets``.

Every `TrainConfig` field is a flag of ``imle train`` (built from the dataclasses, so the two never
drift apart); ``--config FILE`` loads a JSON config first and flags override it.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import math
import sys
import time
import typing
from pathlib import Path
from typing import Any

from imle.cli.errors import run_handler
from imle.cli.eval import register as register_eval
from imle.config import METHOD_PRESETS, PRESETS, RESUME_SCHEDULES, SECTIONS, TrainConfig
from imle.errors import ConfigError, DataError

# Flags whose plain field name would be ambiguous or unidiomatic.
RENAMED = {("data", "name"): "data", ("data", "options"): "data-options",
           ("model", "type"): "model", ("optim", "type"): "optimizer",
           ("method", "type"): "method", ("method", "options"): "method-options"}
BUDGETS = ("minutes", "cpu_minutes", "epochs", "steps", "outer")
TOP_LEVEL_SKIP = {"data", "model", "method", "optim", "budget", "budget_type"}


def _converter(tp: Any, flag: str) -> Any:
    origin = typing.get_origin(tp)
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)) and args:
        inner = _converter(args[0], flag)
        return lambda s: None if s.lower() in ("none", "null") else inner(s)
    if tp is bool:
        return lambda s: s.lower() in ("1", "true", "yes", "on")
    if tp in (int, float, str):
        return tp
    if tp is dict or origin is dict:
        def parse_json(s: str) -> dict:
            try:
                value = json.loads(s)
            except json.JSONDecodeError as exc:
                raise argparse.ArgumentTypeError(f"{flag} takes a JSON object: {exc}") from exc
            if not isinstance(value, dict):
                raise argparse.ArgumentTypeError(f"{flag} takes a JSON object like '{{\"k\": 1}}'")
            return value
        return parse_json
    if origin is tuple:
        item = int if args and args[0] is int else float
        return lambda s: tuple(item(v) for v in s.split(",") if v.strip())
    return str


def _field_docs(cls: type) -> dict[str, str]:
    """Field descriptions from the 'Attributes:' section of a config class docstring."""
    docs: dict[str, str] = {}
    current = None
    for line in (cls.__doc__ or "").split("Attributes:")[-1].splitlines():
        stripped = line.strip()
        head, sep, rest = stripped.partition(": ")
        if sep and line.startswith(" " * 8) and not line.startswith(" " * 12):
            current = head
            for name in head.split(", "):
                docs[name] = rest
        elif current and stripped:
            for name in current.split(", "):
                docs[name] += " " + stripped
    return {k: v.replace("%", "%%") for k, v in docs.items()}


def _config_flags(parser: argparse.ArgumentParser) -> list[tuple[str | None, str, str]]:
    """Adds a flag per config field; returns (section, field, dest) triples."""
    table = []
    for section, cls in list(SECTIONS.items()) + [(None, TrainConfig)]:
        hints = typing.get_type_hints(cls)
        group = parser.add_argument_group(f"{section or 'run'} options")
        for f in dataclasses.fields(cls):
            if section is None and f.name in TOP_LEVEL_SKIP:
                continue
            name = RENAMED.get((section, f.name), f.name).replace("_", "-")
            dest = f"cfg__{section}__{f.name}"
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            doc = _field_docs(cls).get(f.name, "")
            group.add_argument(f"--{name}", dest=dest, type=_converter(hints[f.name], name),
                               metavar=f.name.upper(), default=argparse.SUPPRESS,
                               help=f"{doc} (default: {default!r})".strip())
            table.append((section, f.name, dest))
    return table


def _build_parser() -> tuple[argparse.ArgumentParser, list]:
    parser = argparse.ArgumentParser(
        prog="imle", description="Implicit Maximum Likelihood Estimation (Li & Malik, 2018)")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a generator with IMLE")
    train.add_argument("--preset", choices=sorted(PRESETS), default=None,
                       help="starting configuration: the project's tuned defaults, 'paper' "
                            "for the authors' reference setup (MLP, S = all data, m = 10|S|), "
                            "or 'gan' for the GAN baseline (also the start of --method gan)")
    train.add_argument("--config", type=Path, help="JSON config file (replaces the preset); "
                                                   "flags override it")
    train.add_argument("--out", type=Path, default=None,
                       help="parent folder of new run folders (default: runs)")
    train.add_argument("--run-dir", type=Path, help="exact run folder (default: OUT/NAME)")
    train.add_argument("--name", help="run name (default: <data>-<model>-<time>)")
    train.add_argument("--resume", type=Path, metavar="RUN",
                       help="continue RUN from its newest complete checkpoint until its budget "
                            "is used; a budget flag sets a new total (--minutes 20: 20 minutes "
                            "in all), --more adds to it (a run that stopped before its first "
                            "checkpoint restarts from step 0)")
    budget = train.add_mutually_exclusive_group()
    for b in BUDGETS:
        budget.add_argument(f"--{b.replace('_', '-')}", dest=b, type=float,
                            help=f"total budget in {b.replace('_', ' ')}")
    budget.add_argument("--more", type=float, metavar="AMOUNT",
                        help="with --resume: add AMOUNT to the run's budget, in its own unit "
                             "(--more 5 on a 10-minute run: 15 minutes in all)")
    train.add_argument("--resume-lr", choices=RESUME_SCHEDULES, default=None,
                       help="with --resume and a new budget: 'stretch' spreads a cosine "
                            "learning-rate schedule over the new total (the rate jumps back "
                            "up), 'keep' keeps the old schedule (its final rate from there "
                            "on), 'restart' runs a new cosine from the full rate over the "
                            "added budget (default: stretch)")
    table = _config_flags(train)
    train.set_defaults(func=_cmd_train, table=table)

    sample = sub.add_parser("sample", help="draw samples from a trained run")
    sample.add_argument("run", type=Path)
    sample.add_argument("--num", type=int, required=True)
    sample.add_argument("--out", type=Path, required=True,
                        help=".npy file of the samples (N, *sample_shape) float32, images "
                             "clipped to [0, 1]; or .npz with the samples as 'x' and the noise "
                             "each came from as 'noise' (a flow's reflow couplings)")
    sample.add_argument("--grid", type=Path, help="also write a PNG grid of the first 64")
    sample.add_argument("--overwrite", action="store_true",
                        help="replace existing --out/--grid files (written atomically)")
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--conditions", type=Path,
                        help="conditional runs: .npy of conditions (n, *condition_shape); "
                             "--num samples each, written as (n, NUM, *sample_shape)")
    sample.add_argument("--checkpoint", type=Path, help="checkpoint or snapshot folder")
    sample.add_argument("--batch-size", type=int, default=1000)
    sample.add_argument("--nfe", type=int, default=None,
                        help="flow runs: network evaluations per sample (default: the run's "
                             "method.options nfe, 32)")
    sample.add_argument("--solver", choices=("euler", "heun"), default=None,
                        help="flow runs: ODE solver (default: the run's, euler)")
    sample.add_argument("--device", default="cpu")
    sample.set_defaults(func=_cmd_sample)

    rep = sub.add_parser("reproduce", help="run one experiment of docs/RESULTS.md into a folder")
    from imle.reproduce import EXPERIMENTS

    rep.add_argument("name", help="experiment: " + ", ".join(EXPERIMENTS))
    rep.add_argument("--out", type=Path, required=True, help="output folder (table.json, "
                     "table.md, figures, samples, meta.json; runs/ holds the training runs)")
    rep.add_argument("--quick", action="store_true",
                     help="a reduced version of the same experiment (under 5 minutes on 2 cores)")
    rep.add_argument("--scale", type=float, default=1.0,
                     help="multiply every training budget (e.g. 10 on a GPU)")
    rep.add_argument("--device", default="cpu", help="cpu or cuda")
    rep.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    rep.set_defaults(func=_cmd_reproduce)

    datasets = sub.add_parser("datasets", help="list the data sets imle can load by name: "
                                               "shape, split sizes, on disk or not")
    datasets.add_argument("--data-dir", type=Path, default=None,
                          help="data folder (default: $IMLE_DATA_DIR, else ~/.cache/imle/data)")
    datasets.set_defaults(func=_cmd_datasets)

    register_eval(sub)
    return parser, table


def _config_from_args(args: argparse.Namespace, table: list) -> TrainConfig:
    if args.config and args.preset:
        raise ConfigError("give --preset or --config, not both (the config file replaces the "
                          "preset)")
    preset = args.preset
    if preset is None and not args.config:  # e.g. --method gan starts from the GAN's preset
        preset = METHOD_PRESETS.get(getattr(args, "cfg__method__type", None), "default")
    base = TrainConfig.from_json(args.config) if args.config else PRESETS[preset]()
    raw = base.to_dict()
    for section, field, dest in table:
        if hasattr(args, dest):
            (raw[section] if section else raw)[field] = getattr(args, dest)
    budget_type, budget = _budget_flag(args)
    if args.more is not None:
        raise ConfigError("--more adds to a resumed run's budget; a new run takes a total "
                          "(--minutes, --cpu-minutes, --epochs, --steps or --outer)")
    if args.resume_lr is not None:
        raise ConfigError("--resume-lr applies to --resume only; drop it")
    if budget is not None:
        raw["budget_type"], raw["budget"] = budget_type, budget
    return TrainConfig.from_dict(raw).validate()


def _budget_flag(args: argparse.Namespace) -> tuple[str | None, float | None]:
    """The budget flag given, as (budget_type, amount), checked; (None, None) if none."""
    for b in BUDGETS + ("more",):
        value = getattr(args, b)
        if value is None:
            continue
        flag = "--" + b.replace("_", "-")
        if not (value > 0 and math.isfinite(value)):
            raise ConfigError(f"{flag} must be a positive number, got {value:g}")
        return b, value
    return None, None


def _cmd_train(args: argparse.Namespace) -> int:
    from imle import dist
    from imle.training import Trainer

    if args.resume:
        trainer = _resume(args)
        if trainer is None:
            return 2
    else:
        config = _config_from_args(args, args.table)
        run_dir = args.run_dir
        if run_dir is None:
            stem = Path(config.data.name).stem.replace(".", "_")
            model = "" if config.model.type == "auto" else f"-{config.model.type}"
            name = args.name or f"{stem}{model}-{time.strftime('%Y%m%d-%H%M%S')}"
            run_dir = (args.out or Path("runs")) / name
        trainer = Trainer(config, run_dir)
        trainer.open()  # lock the folder and refuse one holding a run before loading more
        if trainer.main:
            _say("\n".join(f"  {k:<11}{v}" for k, v in trainer.describe().items()))
    try:
        summary = trainer.train()
    except BaseException:
        # Report at once: the others may be inside a collective, and the launcher may be
        # about to stop this process; leaving the group could block on them.
        trainer.release_processes()
        raise
    trainer.release_processes()
    dist.shutdown()
    if not trainer.main:  # rank 0 reports for a distributed run
        return 130 if summary["status"] == "interrupted" else 0
    print(json.dumps({k: v for k, v in summary.items() if k != "last"}, indent=2))
    run = trainer.run_dir
    if summary["status"] == "interrupted":
        print(f"interrupted by {summary['signal']}; checkpoint saved. Resume with:\n"
              f"  imle train --resume {run}\n(or under torchrun, on any number of processes)",
              file=sys.stderr)
        return 130
    loss, eps = summary["last"].get("loss"), summary["last"].get("epsilon")
    used = f"{trainer.budget_used():.3g} of {trainer.config.budget:g} " \
           f"{trainer.config.budget_type.replace('_', ' ')}"
    _say(f"{summary['status']} at step {summary['step']} ({used})"
         + ("" if loss is None else f", final loss {loss:.4g}")
         + ("" if eps is None else f", RS epsilon {eps:.4g}") + ". Next:\n"
         f"  imle sample {run} --num 64 --out samples.npy --grid samples.png\n"
         f"  imle eval {run} --metrics fid,prdc\n"
         f"  imle train --resume {run} --more {trainer.config.budget:g}   "
         f"# train {trainer.config.budget:g} "
         f"{trainer.config.budget_type.replace('_', ' ')} more")
    return 0


def _resume(args: argparse.Namespace) -> Any:
    """Rebuilds the run named by --resume with the budget the flags ask for; None (after
    saying why) when that budget is already spent, leaving the folder untouched."""
    from imle.runs import read_config
    from imle.training import Trainer

    extra = ["--" + dest.split("__")[-1].replace("_", "-")
             for _, _, dest in args.table if hasattr(args, dest)]
    extra += [flag for flag, value in (("--config", args.config), ("--preset", args.preset),
                                       ("--run-dir", args.run_dir), ("--name", args.name),
                                       ("--out", args.out)) if value is not None]
    if extra:
        raise ConfigError(f"--resume continues a run with its stored config and folder; "
                          f"drop {', '.join(extra)} (only a budget flag, --minutes/"
                          f"--cpu-minutes/--epochs/--steps/--outer (a new total) or --more "
                          f"(added), and --resume-lr may be given with it)")
    stored = read_config(args.resume)
    budget_type, budget = _budget_flag(args)
    if budget_type == "more":
        budget_type, budget = stored.budget_type, stored.budget + budget
    if args.resume_lr is not None and budget is None:
        raise ConfigError("--resume-lr places the learning-rate schedule for a new budget; "
                          "give one (a total such as --minutes 20, or --more 5)")
    trainer = Trainer.resume(args.resume, budget=budget, budget_type=budget_type,
                             schedule=args.resume_lr or "stretch")
    info = trainer.resumed_from
    unit = info["unit"].replace("_", " ")
    if trainer.progress() >= 1.0:
        trainer.close()
        if trainer.main:
            _say(f"error: nothing to train: {args.resume} has used {info['used']:.3g} of its "
                 f"{info['total']:g} {unit} (step {trainer.step}). Give a larger total (e.g. "
                 f"--{info['unit'].replace('_', '-')} {2 * info['total']:g}) or more "
                 f"(--more {info['total']:g}); the run folder is unchanged")
        return None
    if trainer.main:
        lines = [f"resuming {args.resume} at step {trainer.step}: {info['used']:.3g} of "
                 f"{info['total']:g} {unit} done"]
        if budget is not None and trainer.config.optim.lr_schedule == "cosine":
            before, after = info["lr_before"], info["lr_after"]
            lines.append(f"the learning rate goes from {before:.3g} to {after:.3g}"
                         if abs(after - before) > 1e-12 else
                         f"the learning rate stays at {after:.3g}")
            lines[-1] += (f" (--resume-lr {args.resume_lr or 'stretch'}; keep holds the old "
                          f"schedule, restart starts a new cosine, stretch spreads it over the "
                          f"new total)")
        _say("\n".join(lines))
    return trainer


def _say(text: str, head: str = "imle train:") -> None:
    """A console message of ``imle train`` on stderr (stdout holds the JSON summary)."""
    print(f"{head}\n{text}" if text.startswith("  ") else f"{head} {text}", file=sys.stderr,
          flush=True)


def _cmd_sample(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from imle.fileio import atomic_path, check_writable
    from imle.runs import resolve_device, sample_from_run, sample_with_noise

    if args.num < 1:
        raise ConfigError(f"--num must be >= 1, got {args.num}")
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.out.suffix not in (".npy", ".npz"):
        raise ConfigError(f"--out must be a .npy file (samples) or .npz (samples and their "
                          f"noise), got {args.out}")
    resolve_device(args.device)
    check_writable(args.out, args.overwrite)
    if args.grid:
        check_writable(args.grid, args.overwrite)
    conditions = None
    if args.conditions is not None:
        try:
            conditions = torch.from_numpy(np.load(args.conditions, allow_pickle=False)).float()
        except (OSError, ValueError) as exc:
            raise DataError(f"{args.conditions}: cannot read as .npy ({exc})") from exc
    common = {"seed": args.seed, "batch_size": args.batch_size, "checkpoint": args.checkpoint,
              "device": args.device, "nfe": args.nfe, "solver": args.solver}
    noise = None
    if args.out.suffix == ".npz":
        if conditions is not None:
            raise ConfigError("--out .npz (samples with their noise) is for unconditional runs; "
                              "use a .npy file with --conditions")
        noise, samples = sample_with_noise(args.run, args.num, **common)
    else:
        samples, _ = sample_from_run(args.run, args.num, conditions=conditions, **common)
    # Images (C, H, W) are clipped to the data's [0, 1]; vectors (2-D points, action chunks)
    # have their own scale and are kept as they are.
    image_dims = 3 + (conditions is not None)
    out = samples.clamp(0, 1) if samples.ndim == image_dims + 1 else samples
    with atomic_path(args.out) as tmp:
        if noise is None:
            np.save(tmp, out.numpy().astype(np.float32))
        else:
            np.savez(tmp, x=out.numpy().astype(np.float32),
                     noise=noise.numpy().astype(np.float32))
    print(f"wrote {tuple(samples.shape)} float32 samples to {args.out}"
          + ("" if noise is None else f" with their noise {tuple(noise.shape)}"))
    if args.grid:
        from imle.plotting import save_grid

        if conditions is not None:  # one row per condition
            save_grid(samples[:8, :8].flatten(0, 1), args.grid, nrow=min(8, samples.shape[1]))
        else:
            save_grid(samples[:64], args.grid, nrow=8)
        print(f"wrote grid {args.grid}")
    return 0


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from imle.reproduce import run_experiment

    run_experiment(args.name, args.out, quick=args.quick, scale=args.scale, device=args.device,
                   threads=args.threads, command="imle " + " ".join(sys.argv[1:]))
    print((args.out / "table.md").read_text())
    return 0


def _cmd_datasets(args: argparse.Namespace) -> int:
    from imle.data import get_data_dir, list_datasets
    from imle.data.catalog import describe_datasets

    rows = {row["name"]: row for row in describe_datasets(args.data_dir)}
    print(f"data folder: {get_data_dir(args.data_dir)} (--data-dir, else $IMLE_DATA_DIR, else "
          f"~/.cache/imle/data); any .npy/.npz file or image folder works too\n")
    for name in list_datasets():
        row = rows.get(name)
        if row is None:  # registered by an extension without a catalogue entry
            print(f"{name}\n")
            continue
        shape = "x".join(str(d) for d in row["shape"])
        splits = ", ".join(f"{k} {'?' if v is None else f'{v:,}'}"
                           for k, v in row["splits"].items())
        print(f"{name:<22}{shape:<9}{row['what']}\n{'':<22}splits: {splits}\n"
              f"{'':<22}{row['status']}\n")
    return 0


def _parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parses ``argv``; an unknown flag is a one-line error naming the nearest valid flag."""
    argv = list(sys.argv[1:] if argv is None else argv)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    command = next((w for w in argv if not w.startswith("-")), None)
    if command in sub.choices:
        flags = [o for a in sub.choices[command]._actions for o in a.option_strings
                 if o.startswith("--")]
        for word in argv:
            name = word.split("=")[0]
            if not name.startswith("--") or any(f.startswith(name) for f in flags):
                continue  # a value, a flag, or an abbreviation argparse accepts
            near = difflib.get_close_matches(name, flags, n=1, cutoff=0.6)
            hint = f"did you mean {near[0]}? " if near else ""
            print(f"imle {command}: error: unknown flag {name}; {hint}(`imle {command} --help` "
                  f"lists them)", file=sys.stderr)
            raise SystemExit(2)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    parser, _ = _build_parser()
    return run_handler(_parse(parser, argv))


if __name__ == "__main__":
    sys.exit(main())
