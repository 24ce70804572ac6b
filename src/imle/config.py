"""Frozen, JSON-serialisable configuration of a training run.

Every option of the method and of the training loop is a field here; the CLI builds its flags from
these fields, and a run folder stores the whole tree as ``config.json`` so a run can be rebuilt and
resumed from its folder alone.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from imle.errors import ConfigError

#: Fields a resumed run may change (``imle train --resume`` flags or an edited config.json):
#: how long it runs and where, never what it computes.
RESUME_MAY_CHANGE = frozenset({"budget", "budget_type", "device", "threads", "compile",
                               "progress",
                               "checkpoint_every_minutes", "keep_checkpoints", "data.data_dir"})
#: What a resume with a changed budget does to the learning-rate schedule (`Trainer.resume`).
RESUME_SCHEDULES = ("stretch", "keep", "restart")
COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune")
DEVICE_PATTERN = re.compile(r"^(cpu|auto|mps|cuda(:\d+)?)$")


def _type_name(tp: Any) -> str:
    names = {int: "an integer", float: "a number", str: "a string", dict: "a JSON object",
             bool: "true or false"}
    if tp in names:
        return names[tp]
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) is tuple:
        return f"a list of {_type_name(args[0]).removeprefix('an ').removeprefix('a ')}s"
    if type(None) in typing.get_args(tp):
        return f"{_type_name(args[0])} or null"
    return str(tp)


def _check_value(value: Any, tp: Any, name: str) -> Any:
    """Checks one field's value against its annotation; returns it normalised (int -> float
    for number fields, list -> tuple). Raises ConfigError naming the field."""
    declared = tp

    def bad() -> ConfigError:
        return ConfigError(f"config field {name} must be {_type_name(declared)}, got {value!r} "
                           f"({type(value).__name__})")

    args = typing.get_args(tp)
    if type(None) in args:
        if value is None:
            return None
        (tp,) = [a for a in args if a is not type(None)]
    if typing.get_origin(tp) is tuple:
        if not isinstance(value, (list, tuple)):
            raise bad()
        item = typing.get_args(tp)[0]
        try:
            return tuple(_check_value(v, item, name) for v in value)
        except ConfigError:
            raise bad() from None
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad()
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad()
        return value
    if tp in (str, dict, bool):
        if not isinstance(value, tp):
            raise bad()
        return value
    return value


class _Typed:
    """Checks every field's type when the dataclass is built (from flags, JSON or Python)."""

    _prefix = ""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if dataclasses.is_dataclass(hints[f.name]):
                if not isinstance(value, hints[f.name]):
                    raise ConfigError(f"config section {f.name} must be a "
                                      f"{hints[f.name].__name__}, got {type(value).__name__}")
                continue
            checked = _check_value(value, hints[f.name], self._prefix + f.name)
            if checked is not value:
                object.__setattr__(self, f.name, checked)


@dataclass(frozen=True)
class DataConfig(_Typed):
    """Which data set to fit.

    Attributes:
        name: a registered data set ("mnist", "fashion-mnist", "cifar10", "photos", ...) or a path
            to a .npy/.npz file or an image folder.
        split: split to train on ("train" is the first 50,000 MNIST training images).
        data_dir: where data sets live; None means ``$IMLE_DATA_DIR`` or ``~/.cache/imle/data``.
        limit: use only the first ``limit`` examples (None: all).
        indices: train on these example indices of the split only (a few-shot subset; applied
            before ``limit``). Empty: all.
        options: loader options of the data set, e.g. {"patch_size": 32, "stride": 8} for
            "photos" or {"num": 5000} for the toy mixtures.
        task: conditional task, "" for unconditional IMLE: "superres:F" (condition = the image
            downsampled F times), "inpaint:top" (or bottom/left/right: the kept half), "class"
            (one-hot label) or "pairs" (name is a .npz with arrays c and x); needs a
            conditional model.type ("img2img", "cond-mlp", "cond-dcgan28", ...).
    """

    name: str = "mnist"
    split: str = "train"
    data_dir: str | None = None
    limit: int | None = None
    indices: tuple[int, ...] = ()
    options: dict = field(default_factory=dict)
    task: str = ""


@dataclass(frozen=True)
class ModelConfig(_Typed):
    """Generator network, rebuilt from this by the registry in `imle.nets`.

    Attributes:
        type: registered generator ("mlp", "dcgan28", "dcgan32", "resconv28", or for a
            conditional task "img2img", "cond-mlp", "cond-dcgan28", ...; for a flow a velocity
            network, "flow-mlp" or "flow-unet"); "auto" picks one
            from the data's shape and task (`imle.nets.auto_generator`) and the run's
            config.json records the choice.
        latent_dim: dimension of z ~ N(0, I) (reference code: 64); 0: derived from the data
            (12, or the data's dimension for vectors of fewer dimensions; `imle.defaults`).
        width: base channel count (conv) or hidden width (mlp); None: the network's default
            (64 channels, 1024 hidden units).
        init: start the generator (and its EMA) from trained weights instead of ``seed``'s
            initialisation: a run folder (its newest checkpoint's EMA weights, else its
            model weights) or a ``.safetensors`` file of the same network; "" for none. A
            resumed run takes its checkpoint's weights instead.
    """

    type: str = "auto"
    latent_dim: int = 0
    width: int | None = None
    init: str = ""


@dataclass(frozen=True)
class MethodConfig(_Typed):
    """The training method (`imle.methods`) and IMLE's matching step (Li & Malik 2018,
    Algorithm 1) with the family's rules.

    Attributes:
        type: the method, a name of `imle.methods.METHODS`: "imle", "gan" (the GAN baseline on
            the same generator, `imle.methods.gan`; options there), "regression" (T(0, c)
            fit by regression) or "flow" (flow matching with a velocity network,
            `imle.methods.flow`; options there). A matching rule's name ("vanilla", "rs",
            "adaptive") is shorthand for "imle" with that matcher.
        matcher: IMLE's matching rule, see `imle.matchers`: "vanilla" (Li & Malik 2018), "rs"
            (Rejection-Sampling IMLE) or "adaptive" (Adaptive IMLE); "auto": derived from the
            data (RS with epsilon from the data for low-dimensional vectors, vanilla
            otherwise; `imle.defaults`).
        options: the method's options: for "imle" its matcher's, e.g. {"epsilon": 3.0} or
            {"epsilon_nn_frac": 0.5, "adaptive": true} for "rs", {"staleness": 7, "force": 30,
            "gamma": 0.04} for "adaptive".
        distance: space the matching searches in: "l2" (squared Euclidean), "l1", "cosine",
            "projection", "classifier", "classifier+l2", "encoder", "lpips", "lpips+l2"; see
            `imle.distances`.
        distance_options: that distance's options, e.g. {"network": "mnist-cnn"} or the LPIPS
            weight paths {"backbone": PATH, "linear": PATH}.
        loss: distance whose pair distance is the training loss: one of the above, or a loss
            only: "lp" (smoothed |x - y|^p with 0 < p < 2), "classifier+l1" or "encoder+l1" (a
            network's feature distance plus pixel L1); None: the matching distance;
            "auto": derived from the data (`imle.defaults`: for unconditional images with a
            blank background matched in "l2", "l1" for strokes and "lp" with p = 1.5 for
            filled shapes; the matching distance otherwise).
        loss_options: its options.
        subset_size: |S|, examples matched per outer iteration; None means the whole data set
            (the reference code). A random subset is drawn each outer iteration otherwise.
        pool_multiplier: pool size m = pool_multiplier * |S| (reference: 10); 0: derived from
            the data (2 for low-dimensional vectors, 10 otherwise).
        refresh_epochs: L expressed in epochs over S between pool refreshes (reference: 5).
        latent_noise: std of Gaussian noise added to matched latents.
        latent_noise_at: "step" (fresh noise at every SGD step) or "refresh" (drawn once per
            refresh, the reference code's rule).
        search_backend: `imle.knn` backend ("auto", "exact", "projected", "faiss", "dci").
        search_options: extra keyword options for the search backend.
        recall_sample: queries on which the search's recall@1 is measured against exact
            search (0: off).
        recall_every_outer: measure that recall on every this many outer iterations, the first
            included.
        pool_batch_size: generator batch size when drawing the pool (bounds memory; a few
            hundred keeps each batch in cache on CPUs).
        pool_precision: "fp32", "bf16" or "auto" (fp32 for samples of at most 64 numbers;
            otherwise bf16 where bf16 matmuls are native: CUDA, or a CPU with AVX-512 BF16 /
            AMX; fp32 elsewhere) for pool generation and storage.
        pool_train_mode: draw pools with the generator in training mode (BatchNorm uses each
            pool batch's statistics and updates its running ones, as the reference code does);
            default eval mode.
        train_precision: "fp32" or "bf16": autocast of the generator in the SGD steps (weights,
            gradients, Adam state and loss stay fp32).
    """

    type: str = "imle"
    matcher: str = "auto"
    options: dict = field(default_factory=dict)
    distance: str = "l2"
    distance_options: dict = field(default_factory=dict)
    loss: str | None = "auto"
    loss_options: dict = field(default_factory=dict)
    subset_size: int | None = 2000
    pool_multiplier: float = 0.0
    refresh_epochs: float = 2.5
    latent_noise: float = 0.01
    latent_noise_at: str = "step"
    search_backend: str = "auto"
    search_options: dict = field(default_factory=dict)
    recall_sample: int = 256
    recall_every_outer: int = 10
    pool_batch_size: int = 512
    pool_precision: str = "auto"
    pool_train_mode: bool = False
    train_precision: str = "fp32"

    def __post_init__(self) -> None:
        super().__post_init__()
        # A matching rule named as the method (the former spelling: type="rs") is IMLE with
        # that rule; "imle" as a matcher is the former name of "vanilla".
        if self.type in MATCHER_SHORTHANDS:
            object.__setattr__(self, "matcher", self.type)
            object.__setattr__(self, "type", "imle")
        if self.type == "regression":
            object.__setattr__(self, "matcher", "regression")
        if self.matcher == "imle":
            object.__setattr__(self, "matcher", "vanilla")


#: ``method.type`` values that mean IMLE with that matching rule.
MATCHER_SHORTHANDS = ("vanilla", "rs", "adaptive")


@dataclass(frozen=True)
class OptimConfig(_Typed):
    """Optimiser of the inner SGD steps.

    Attributes:
        type: "adam" (reference) or "adamw".
        lr: peak learning rate (reference 1e-3).
        beta1, beta2: Adam betas (reference 0.5, 0.999).
        weight_decay: decoupled for "adamw", L2 for "adam".
        batch_size: mini-batch size of the inner loop (reference 64).
        lr_schedule: "constant" or "cosine" (decays to lr * lr_final_frac over the budget).
        lr_final_frac: final learning rate as a fraction of lr for "cosine".
        warmup_steps: linear warm-up steps.
        ema_decay: exponential moving average of the weights used for sampling (0: off).
        grad_clip: clip the global gradient norm (0: off).
        restart_every_epochs: reset the optimiser's state (as re-creating it would) every this
            many epochs, checked at pool refreshes (reference code: 25; 0: never).
        shuffle: "every_pass" (a new order of S for every pass) or "once" (one order, kept:
            the reference code's fixed batches).
    """

    type: str = "adam"
    lr: float = 4e-3
    beta1: float = 0.5
    beta2: float = 0.999
    weight_decay: float = 0.0
    batch_size: int = 64
    lr_schedule: str = "cosine"
    lr_final_frac: float = 0.05
    warmup_steps: int = 0
    ema_decay: float = 0.999
    grad_clip: float = 0.0
    restart_every_epochs: float = 0.0
    shuffle: str = "every_pass"


@dataclass(frozen=True)
class TrainConfig(_Typed):
    """A whole training run.

    Attributes:
        budget_type: what ends the run: "minutes" (wall clock of training), "cpu_minutes"
            (CPU time of the training process summed over its threads, robust to other load on
            a shared machine), "epochs" (passes over the data set), "steps" (SGD steps) or
            "outer" (outer iterations).
        budget: amount of ``budget_type``.
        seed: seeds every random stream (latents, subsets, shuffling, noise, init).
        device: "cpu", "cuda", "cuda:N" or "auto".
        threads: torch intra-op threads on CPU (0: torch's default).
        compile: "none", or a `torch.compile` mode ("default", "reduce-overhead" = CUDA
            graphs, "max-autotune") for the generator's training forward and backward.
        log_every_outer: write a log line every this many outer iterations.
        sample_every_outer: write a PNG sample grid every this many outer iterations (0: never).
        checkpoint_every_minutes: periodic checkpoint interval (also written at the end and on
            SIGINT/SIGTERM).
        snapshot_minutes: training minutes at which to keep a weights snapshot (CPU minutes
            when budget_type is "cpu_minutes", wall minutes otherwise).
        keep_checkpoints: how many periodic checkpoints to keep.
        progress: "tqdm" (a bar in the budget's unit on a terminal, a line every 5% of the
            budget elsewhere) or "none".
    """

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    budget_type: str = "minutes"
    budget: float = 10.0
    seed: int = 0
    device: str = "cpu"
    threads: int = 0
    compile: str = "none"
    log_every_outer: int = 1
    sample_every_outer: int = 10
    checkpoint_every_minutes: float = 5.0
    snapshot_minutes: tuple[float, ...] = ()
    keep_checkpoints: int = 2
    progress: str = "tqdm"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.validate()

    def validate(self) -> TrainConfig:
        """Raises ConfigError naming the field and a valid choice for any impossible value.

        Runs when the config is built; types are checked before it by each section."""
        from imle.data.tasks import TASK_PATTERN
        from imle.distances import DISTANCES
        from imle.methods import method_class

        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ConfigError(msg)

        m, o = self.method, self.optim
        task = self.data.task
        need(task == "" or bool(TASK_PATTERN.match(task)),
             f"data.task={task!r} is unknown; use superres:F, inpaint:top|bottom|left|right, "
             f"class or pairs (or leave it empty)")
        nets, kind = method_class(m.type).network_names(bool(task))
        need(self.model.type == "auto" or self.model.type in nets,
             f"model.type={self.model.type!r} is not {kind}; choose one of "
             f"{sorted(nets)} or 'auto'")
        need(self.model.latent_dim >= 0, "model.latent_dim must be >= 1 (or 0: from the data)")
        need(self.model.width is None or self.model.width >= 1, "model.width must be >= 1")
        need(m.subset_size is None or m.subset_size >= 1,
             "method.subset_size must be >= 1 (or None for the whole data set)")
        need(m.pool_multiplier >= 0 and math.isfinite(m.pool_multiplier),
             f"method.pool_multiplier must be > 0 (or 0: from the data), got "
             f"{m.pool_multiplier}")
        need(m.refresh_epochs > 0, f"method.refresh_epochs must be > 0, got {m.refresh_epochs}")
        need(m.latent_noise >= 0, "method.latent_noise must be >= 0")
        method_class(m.type).validate_config(self)
        for key, name, opts in (("distance", m.distance, m.distance_options),
                                ("loss", m.loss, m.loss_options)):
            if key == "loss" and name in (None, "auto"):
                continue
            need(name in DISTANCES,
                 f"method.{key}={name!r} is unknown; choose one of {sorted(DISTANCES)}")
            DISTANCES[name].validate_options(opts)
        d = self.data
        need(all(i >= 0 for i in d.indices), "data.indices must be non-negative example indices")
        need(d.limit is None or d.limit >= 1,
             f"data.limit must be >= 1 (or null for all examples), got {d.limit}")
        need(bool(d.name) and bool(d.split), "data.name and data.split must not be empty")
        need(m.recall_sample >= 0, "method.recall_sample must be >= 0")
        need(m.recall_every_outer >= 1, "method.recall_every_outer must be >= 1")
        need(m.pool_batch_size >= 1, "method.pool_batch_size must be >= 1")
        need(m.pool_precision in ("fp32", "bf16", "auto"),
             f"method.pool_precision={m.pool_precision!r}; choose 'fp32', 'bf16' or 'auto'")
        need(m.train_precision in ("fp32", "bf16"),
             f"method.train_precision={m.train_precision!r}; choose 'fp32' or 'bf16'")
        need(o.type in ("adam", "adamw"), f"optim.type={o.type!r}; choose 'adam' or 'adamw'")
        need(o.lr > 0 and math.isfinite(o.lr), f"optim.lr must be > 0, got {o.lr}")
        need(0 <= o.beta1 < 1 and 0 <= o.beta2 < 1, "optim.beta1 and optim.beta2 must be in [0, 1)")
        need(o.batch_size >= 1, f"optim.batch_size must be >= 1, got {o.batch_size}")
        need(o.lr_schedule in ("constant", "cosine"),
             f"optim.lr_schedule={o.lr_schedule!r}; choose 'constant' or 'cosine'")
        need(0 <= o.lr_final_frac <= 1, "optim.lr_final_frac must be in [0, 1]")
        need(o.warmup_steps >= 0, "optim.warmup_steps must be >= 0")
        need(0 <= o.ema_decay < 1, f"optim.ema_decay must be in [0, 1), got {o.ema_decay}")
        need(o.grad_clip >= 0, "optim.grad_clip must be >= 0")
        need(o.restart_every_epochs >= 0, "optim.restart_every_epochs must be >= 0 (0: never)")
        need(o.shuffle in ("every_pass", "once"),
             f"optim.shuffle={o.shuffle!r}; choose 'every_pass' or 'once'")
        need(m.latent_noise_at in ("step", "refresh"),
             f"method.latent_noise_at={m.latent_noise_at!r}; choose 'step' or 'refresh'")
        need(self.budget_type in ("minutes", "cpu_minutes", "epochs", "steps", "outer"),
             f"budget_type={self.budget_type!r}; choose minutes, cpu_minutes, epochs, steps "
             "or outer")
        need(self.budget > 0 and math.isfinite(self.budget),
             f"budget must be a positive number, got {self.budget}")
        need(self.budget_type not in ("steps", "outer") or self.budget == int(self.budget),
             f"a budget of {self.budget:g} {self.budget_type} is not a whole number")
        need(self.seed >= 0, f"seed must be >= 0, got {self.seed}")
        need(bool(DEVICE_PATTERN.match(self.device)),
             f"device={self.device!r} is unknown; use cpu, cuda, cuda:N, mps or auto")
        need(self.threads >= 0, f"threads must be >= 0 (0: torch's default), got {self.threads}")
        need(self.compile in COMPILE_MODES,
             f"compile={self.compile!r}; choose one of {', '.join(COMPILE_MODES)}")
        need(all(math.isfinite(t) and t > 0 for t in self.snapshot_minutes),
             f"snapshot_minutes must be positive numbers, got {list(self.snapshot_minutes)}")
        need(self.progress in ("tqdm", "none"), "progress must be 'tqdm' or 'none'")
        need(self.sample_every_outer >= 0 and self.log_every_outer >= 1,
             "sample_every_outer must be >= 0 and log_every_outer >= 1")
        need(self.keep_checkpoints >= 1, "keep_checkpoints must be >= 1")
        need(self.checkpoint_every_minutes > 0, "checkpoint_every_minutes must be > 0")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self, path: str | Path) -> None:
        """Writes the config as JSON, atomically."""
        from imle.fileio import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TrainConfig:
        """Builds a config from nested dicts, rejecting unknown keys by name."""
        return _from_dict(cls, raw, "")

    @classmethod
    def from_json(cls, path: str | Path) -> TrainConfig:
        path = Path(path)
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError as exc:
            raise ConfigError(f"config file {path} does not exist") from exc
        except json.JSONDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid JSON: {exc}") from exc
        try:
            return cls.from_dict(raw)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None


def _from_dict(cls: type, raw: Any, prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix or 'config'} must be a JSON object, got {type(raw).__name__}")
    if cls is MethodConfig and "metric" in raw:  # run folders written before method.distance
        raw = {**raw}
        raw.setdefault("distance", raw.pop("metric"))
    if cls is MethodConfig and "type" in raw and "matcher" not in raw:
        # Written before method.matcher: "type" named the rule ("imle" was the vanilla one).
        raw = {**raw, "matcher": "vanilla"}
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ConfigError(
            f"unknown config field(s) {', '.join(prefix + k for k in unknown)}; "
            f"known fields of {prefix or 'the config'}: {', '.join(sorted(known))}"
        )
    kwargs = {}
    for name, value in raw.items():
        sub = SECTIONS.get(name) if cls is TrainConfig else None
        if sub is not None:
            kwargs[name] = _from_dict(sub, value, f"{name}.")
        else:  # types are checked (and lists made tuples) by the dataclass itself
            kwargs[name] = value
    return cls(**kwargs)


#: The nested sections of a TrainConfig, by field name.
SECTIONS = {"data": DataConfig, "model": ModelConfig, "method": MethodConfig, "optim": OptimConfig}
for _name, _cls in SECTIONS.items():
    _cls._prefix = _name + "."


def config_hash(raw: dict[str, Any]) -> str:
    """sha256 of a config dict without the fields a resume may change."""
    kept = {k: v for k, v in _flatten(raw).items() if k not in RESUME_MAY_CHANGE}
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()


def _flatten(raw: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in raw.items():
        if k in SECTIONS and not prefix and isinstance(v, dict):
            out.update(_flatten(v, k + "."))
        else:
            out[prefix + k] = list(v) if isinstance(v, tuple) else v
    return out


def config_mismatch(trained: dict[str, Any], current: dict[str, Any]) -> str | None:
    """The first field (dotted name) where ``current`` differs from the config a checkpoint
    was trained with, ignoring `RESUME_MAY_CHANGE`; None when they agree. Fields missing from
    ``trained`` (written by an older imle) compare equal to their defaults."""
    defaults = _flatten(TrainConfig().to_dict())
    try:  # in today's spelling (method.type "rs" -> "imle" with method.matcher "rs", ...)
        trained = TrainConfig.from_dict(trained).to_dict()
    except ConfigError:
        pass
    a, b = _flatten(trained), _flatten(current)
    for key in sorted(set(a) | set(b)):
        if key in RESUME_MAY_CHANGE:
            continue
        va, vb = a.get(key, defaults.get(key)), b.get(key, defaults.get(key))
        if va != vb:
            return f"{key} is {vb!r} but the checkpoint was trained with {va!r}"
    return None


def replace(config: TrainConfig, **updates: Any) -> TrainConfig:
    """Returns a copy with dotted-path updates, e.g. ``replace(c, **{"optim.lr": 2e-3})``."""
    raw = config.to_dict()
    for key, value in updates.items():
        node = raw
        *parents, leaf = key.split(".")
        for p in parents:
            if p not in node or not isinstance(node[p], dict):
                raise ConfigError(f"unknown config section {p!r} in {key!r}")
            node = node[p]
        if leaf not in node:
            raise ConfigError(f"unknown config field {key!r}")
        node[leaf] = value
    return TrainConfig.from_dict(raw)


def paper_config() -> TrainConfig:
    """The authors' reference setup (Li & Malik 2018 code) on MNIST with the paper-style MLP.

    S = the whole training set, m = 10 |S|, the squared L2 loss, pool refreshed every 5 epochs
    over S, Adam (1e-3, betas 0.5/0.999), batch 64, latent dim 64, latent noise 0.01, constant
    learning rate, no EMA, fp32 pool.
    """
    return TrainConfig(
        model=ModelConfig(type="mlp", latent_dim=64, width=1024),
        method=MethodConfig(subset_size=None, pool_multiplier=10.0, refresh_epochs=5.0,
                            latent_noise=0.01, loss=None, pool_precision="fp32",
                            recall_sample=0),
        optim=OptimConfig(type="adam", lr=1e-3, beta1=0.5, beta2=0.999, batch_size=64,
                          lr_schedule="constant", ema_decay=0.0),
    )


def reference_config() -> TrainConfig:
    """The authors' public reference code (``imle.py``, Li & Malik 2018) as a config.

    Its convolutional generator with BatchNorm (`imle.nets.ReferenceConvGenerator`), z of 64, all
    60,000 MNIST training images in one fixed shuffled order, m = 10 N samples drawn in batches
    of 64 with the network in training mode every 5 epochs, matched by Prioritized DCI with the
    code's parameters; latent noise 0.01 added once per refresh; ``nn.MSELoss`` (mean over
    pixels); Adam 1e-3, betas (0.5, 0.999), L2 weight decay 1e-5, re-created every 25 epochs;
    batch 64; no EMA, no schedule, fp32.
    """
    return TrainConfig(
        data=DataConfig(name="mnist", split="train-full"),
        model=ModelConfig(type="reference-conv28", latent_dim=64),
        method=MethodConfig(subset_size=None, pool_multiplier=10.0, refresh_epochs=5.0,
                            latent_noise=0.01, latent_noise_at="refresh", loss="mse",
                            search_backend="dci", pool_batch_size=64, pool_precision="fp32",
                            pool_train_mode=True, recall_sample=0),
        optim=OptimConfig(type="adam", lr=1e-3, beta1=0.5, beta2=0.999, weight_decay=1e-5,
                          batch_size=64, lr_schedule="constant", ema_decay=0.0,
                          restart_every_epochs=25.0, shuffle="once"),
        budget_type="epochs", budget=10.0,
    )


def gan_config() -> TrainConfig:
    """The GAN baseline's configuration: the default run with ``method.type="gan"`` and the
    optimiser a GAN needs (Adam 2e-3, betas 0 / 0.99, constant rate; discriminator at 2x the
    rate with spectral norm and R1, see `imle.methods.gan.GAN_OPTIONS`)."""
    return TrainConfig(
        method=MethodConfig(type="gan", subset_size=None, recall_sample=0),
        optim=OptimConfig(type="adam", lr=2e-3, beta1=0.0, beta2=0.99, lr_schedule="constant",
                          ema_decay=0.999),
    )


def flow_config() -> TrainConfig:
    """The flow-matching baseline's configuration: ``method.type="flow"`` on the whole data set
    with the optimiser flow models are trained with (Adam 1e-3, betas 0.9 / 0.999, cosine decay,
    EMA 0.999; velocity network, sampler and time sampling in `imle.methods.flow`)."""
    return TrainConfig(
        method=MethodConfig(type="flow", subset_size=None, recall_sample=0),
        optim=OptimConfig(type="adam", lr=1e-3, beta1=0.9, beta2=0.999, ema_decay=0.999),
    )


PRESETS = {"default": TrainConfig, "paper": paper_config, "reference": reference_config,
           "gan": gan_config, "flow": flow_config}
#: The preset ``imle train --method TYPE`` starts from when no --preset / --config is given.
METHOD_PRESETS = {"gan": "gan", "flow": "flow"}
