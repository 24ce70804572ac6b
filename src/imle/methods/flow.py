"""Flow matching (``method.type = "flow"``): the rectified-flow / conditional flow matching
baseline (Liu et al. 2022; Lipman et al. 2022) on the one training loop.

A velocity network v(x, t[, c]) is trained so that integrating dx/dt = v(x, t) from t = 0 to 1
carries Gaussian noise x_0 ~ N(0, I) to the data. With the straight path x_t = (1 - t) x_0 + t x_1
between a noise draw x_0 and an example x_1, the loss is

    E_{t, x_0, x_1} || v(x_t, t) - (x_1 - x_0) ||^2     (squared L2, mean over the sample's numbers)

whose minimiser is the marginal velocity E[x_1 - x_0 | x_t]. Sampling integrates the ODE with
``nfe`` network evaluations: Euler, or Heun's second-order method (`integrate`). Unlike IMLE and
the GAN, a sample costs ``nfe`` forward passes, not one.

Reflow (Liu et al. 2022, "rectified flow", section 2.3): with ``couplings`` set to an ``.npz`` of
noise and the samples a trained flow integrated from that noise (``imle sample RUN --out
pairs.npz``), training pairs each x_0 with its own x_1 instead of drawing them independently.
The teacher's paths cross no more, so the new flow's paths are straighter and few-step (even
one-step) Euler sampling loses less; starting it from the teacher's weights (``model.init``)
is the usual practice.

The "latent" of a flow is the starting noise x_0, so ``model.latent_dim`` is the number of
values in a sample, and `Method.draw_latents` gives the same noise for a seed as every other
method's sampling does.
"""

from __future__ import annotations

import hashlib
import io
import math
from collections.abc import Callable, Collection
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from imle.distances import check_options
from imle.errors import ConfigError, ShapeError
from imle.fileio import read_npz_rows
from imle.methods.base import Batch, Method, Outer, Step, register_method, subset_words
from imle.nets import VELOCITY_NETS, auto_velocity_net, build_velocity_net

if TYPE_CHECKING:
    from imle.config import TrainConfig

SOLVERS = ("euler", "heun")
TIME_SAMPLING = ("uniform", "logit-normal")

#: The flow's options (``method.options``) and their defaults.
FLOW_OPTIONS: dict[str, Any] = {
    "nfe": 32,               # network evaluations per sample when sampling (imle sample --nfe)
    "solver": "euler",       # "euler" or "heun" (second order; see `integrate`)
    "time": "uniform",       # training times t: "uniform" on [0, 1] or "logit-normal" (SD3)
    "couplings": "",         # reflow: .npz of (noise, x) pairs to train on (see `Couplings`)
}


def validate_flow_options(options: dict[str, Any] | None) -> dict[str, Any]:
    """The options with defaults filled in; raises ConfigError naming a bad one."""
    o = check_options("method flow", FLOW_OPTIONS, options)
    check_sampler(o["nfe"], o["solver"])
    if o["time"] not in TIME_SAMPLING:
        raise ConfigError(f"method option time must be one of {list(TIME_SAMPLING)}, got "
                          f"{o['time']!r}")
    return o


def check_sampler(nfe: Any, solver: Any) -> None:
    """ConfigError unless ``nfe`` is an int >= 1 and ``solver`` one of `SOLVERS`."""
    if isinstance(nfe, bool) or not isinstance(nfe, int) or nfe < 1:
        raise ConfigError(f"nfe (network evaluations per sample) must be an int >= 1, got "
                          f"{nfe!r}")
    if solver not in SOLVERS:
        raise ConfigError(f"solver must be one of {list(SOLVERS)}, got {solver!r}")


class Couplings:
    """Fixed (noise, sample) pairs for reflow, read from an ``.npz`` file.

    The file holds ``noise`` (P, *sample_shape) or (P, prod(sample_shape)) -- the starting
    points x_0 -- and ``x`` (P, *sample_shape), the endpoints the teacher reached from them;
    ``imle sample RUN --out pairs.npz`` on a flow run writes exactly that. Row i of one
    belongs to row i of the other.

    Its state (the file's path, sha256 and rows) is saved with checkpoints, so a resume whose
    file has changed stops instead of training on other pairs. The file is read when training
    first needs it (`load`), so sampling a finished run does not need it.

    Args:
        path: the ``.npz`` file.
        sample_shape: the shape of one sample of the run.
    """

    def __init__(self, path: str, sample_shape: tuple[int, ...]) -> None:
        self.path = str(path)
        self.sample_shape = tuple(sample_shape)
        self._pairs: tuple[torch.Tensor, torch.Tensor, str] | None = None

    def load(self) -> tuple[torch.Tensor, torch.Tensor, str]:
        """(noise (P, *sample_shape), x (P, *sample_shape), the file's sha256), read once.

        Raises:
            ConfigError: the file cannot be read. DataError, ShapeError: its arrays are missing,
                of the wrong shape or not finite.
        """
        if self._pairs is None:
            self._pairs = self._read()
        return self._pairs

    def _read(self) -> tuple[torch.Tensor, torch.Tensor, str]:
        try:
            raw = Path(self.path).read_bytes()
        except OSError as exc:
            raise ConfigError(f"method option couplings={self.path!r}: cannot read the file "
                              f"({exc}); write one with imle sample TEACHER_RUN --num N --out "
                              f"pairs.npz") from exc
        a = read_npz_rows(io.BytesIO(raw), ("noise", "x"), self.path,
                          "arrays 'noise' and 'x' (the teacher's noise and its samples, "
                          "from imle sample TEACHER_RUN --num N --out pairs.npz)")
        noise, x = a["noise"], a["x"]
        shape, dims = self.sample_shape, math.prod(self.sample_shape)
        if tuple(x.shape[1:]) != shape:
            raise ShapeError(f"{self.path}: 'x' must be (P, *{shape}) for this run's samples, "
                             f"got {tuple(x.shape)}; sample the teacher on the same data")
        if math.prod(noise.shape[1:]) != dims:
            raise ShapeError(f"{self.path}: 'noise' must have one row of {dims} numbers per "
                             f"row of 'x', got {tuple(noise.shape)}")
        return (torch.from_numpy(noise).reshape(-1, *shape), torch.from_numpy(x),
                hashlib.sha256(raw).hexdigest())

    @property
    def rows(self) -> int:
        return self.load()[1].shape[0]

    def draw(self, n: int, noise: torch.Generator, part: slice, device: torch.device
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_0, x_1) of ``n`` rows drawn uniformly with replacement from ``noise`` (the whole
        batch's draw, so every process agrees), this process's ``part`` of them."""
        x0, x1, _ = self.load()
        rows = torch.randint(x1.shape[0], (n,), generator=noise)[part]
        return x0[rows].to(device), x1[rows].to(device)

    def state_dict(self) -> dict[str, Any]:
        return {"path": self.path, "sha256": self.load()[2], "rows": self.rows}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Raises ConfigError if the run was trained on another couplings file's content."""
        sha256 = self.load()[2]
        if state.get("sha256") not in (None, sha256):
            raise ConfigError(f"couplings file {self.path} changed since the run was trained "
                              f"on it (sha256 {state.get('sha256')}, {state.get('rows')} rows, "
                              f"now {sha256}, {self.rows} rows); restore it or start a new run")


def integrate(velocity: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x0: torch.Tensor,
              nfe: int, solver: str = "euler") -> torch.Tensor:
    """Integrates dx/dt = velocity(x, t) from t = 0 to t = 1 with exactly ``nfe`` evaluations.

    Args:
        velocity: maps (x (B, ...), t (B,)) to dx/dt (B, ...).
        x0: (B, ...) the state at t = 0 (noise).
        nfe: network evaluations (>= 1).
        solver: "euler": nfe steps of size 1/nfe. "heun": Heun's method (the explicit
            trapezoidal rule, 2 evaluations per step) on nfe // 2 steps, plus one final Euler
            step when nfe is odd (so nfe = 1 is one Euler step); the grid is uniform in t.

    Returns:
        (B, ...) the state at t = 1, in x0's dtype.
    """
    check_sampler(nfe, solver)
    heun_steps = nfe // 2 if solver == "heun" else 0
    euler_steps = nfe - 2 * heun_steps
    steps = heun_steps + euler_steps
    ts = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64).tolist()
    x = x0
    for k in range(steps):
        t0, t1 = ts[k], ts[k + 1]
        h = t1 - t0
        v0 = velocity(x, x.new_full((x.shape[0],), t0, dtype=torch.float32)).to(x.dtype)
        if k < heun_steps:
            x1 = x + h * v0
            v1 = velocity(x1, x.new_full((x.shape[0],), t1, dtype=torch.float32)).to(x.dtype)
            x = x + 0.5 * h * (v0 + v1)
        else:
            x = x + h * v0
    return x


@register_method("flow")
class FlowMatching(Method):
    """A velocity network trained by flow matching (``method.type = "flow"``).

    An outer iteration only draws S (as the GAN's does); each `loss` draws noise x_0 and
    times t for the whole batch from the loop's noise stream (each process keeps its rows, so
    any number of processes trains alike and a resumed run draws what the uninterrupted one
    would).

    Args:
        velocity: module mapping (x (B, *sample_shape), t (B,)) -- plus c (B, *cond_shape)
            when ``cond_shape`` is given -- to (B, *sample_shape); see `imle.nets.VELOCITY_NETS`.
        sample_shape: shape of one sample.
        cond_shape: shape of one condition for a conditional flow, else None.
        options: see `FLOW_OPTIONS`.
        ema_decay, pool_batch_size, pool_precision: as `imle.methods.Method` (sampling runs in
            batches of ``pool_batch_size``, in bf16 when ``pool_precision`` says so).
        train_precision: "fp32" or "bf16" (autocast of the training forward).

    Example:
        >>> flow = FlowMatching(VelocityMLP((2,)), (2,))
        >>> x = flow.sample(1000, seed=0, nfe=8, solver="heun")   # (1000, 2)
    """

    def __init__(self, velocity: nn.Module, sample_shape: tuple[int, ...],
                 cond_shape: tuple[int, ...] | None = None,
                 options: dict[str, Any] | None = None, *, ema_decay: float = 0.0,
                 pool_batch_size: int = 512, pool_precision: str = "fp32",
                 train_precision: str = "fp32") -> None:
        super().__init__(velocity, math.prod(sample_shape), ema_decay=ema_decay,
                         pool_batch_size=pool_batch_size, pool_precision=pool_precision)
        o = validate_flow_options(options)
        if train_precision not in ("fp32", "bf16"):
            raise ConfigError(f"train_precision={train_precision!r}; choose 'fp32' or 'bf16'")
        self._sample_shape = tuple(sample_shape)
        self.cond_shape = None if cond_shape is None else tuple(cond_shape)
        self.nfe: int = o["nfe"]
        self.solver: str = o["solver"]
        self.time_sampling: str = o["time"]
        self.train_precision = train_precision
        self.couplings = (Couplings(o["couplings"], self._sample_shape) if o["couplings"]
                          else None)

    # ------------------------------------------------------------------ building from a config
    @classmethod
    def validate_config(cls, config: TrainConfig) -> None:
        validate_flow_options(config.method.options)
        if config.method.train_precision not in ("fp32", "bf16"):
            raise ConfigError("method.train_precision must be 'fp32' or 'bf16'")

    @classmethod
    def network_names(cls, conditional: bool) -> tuple[Collection[str], str]:
        return VELOCITY_NETS, "a velocity network (method.type is 'flow')"

    @classmethod
    def derived_settings(cls, config: TrainConfig, sample_shape: tuple[int, ...],
                         cond_shape: tuple[int, ...] | None, custom_generator: bool
                         ) -> dict[str, tuple[Any, str]]:
        """The velocity network for "auto" and the noise's size as the latent size."""
        out: dict[str, tuple[Any, str]] = {}
        if config.model.type == "auto" and not custom_generator:
            out["model.type"] = auto_velocity_net(tuple(sample_shape))
        dims = math.prod(sample_shape)
        if config.model.latent_dim == 0:
            out["model.latent_dim"] = (dims, "a flow's noise has the sample's shape")
        elif config.model.latent_dim != dims:
            raise ConfigError(f"a flow's noise has the sample's {dims} numbers, so "
                              f"model.latent_dim must be {dims} (or 0), not "
                              f"{config.model.latent_dim}")
        return out

    @classmethod
    def from_config(cls, config: TrainConfig, sample_shape: tuple[int, ...],
                    cond_shape: tuple[int, ...] | None = None,
                    generator: nn.Module | None = None) -> FlowMatching:
        if generator is None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(config.seed)
                generator = build_velocity_net(config.model.type, sample_shape, cond_shape,
                                               config.model.width)
        m = config.method
        return cls(generator, sample_shape, cond_shape, m.options,
                   ema_decay=config.optim.ema_decay, pool_batch_size=m.pool_batch_size,
                   pool_precision=m.pool_precision, train_precision=m.train_precision)

    def pieces(self) -> dict[str, Any]:
        return {} if self.couplings is None else {"couplings": self.couplings}

    def prepare_outer(self, outer: Outer) -> tuple[dict[str, Any], dict[str, Any]]:
        if self.couplings is not None:
            self.couplings.load()  # a bad file stops the run before its first step
        return {}, {}

    def describe(self, subset_size: int, num_examples: int, steps_per_outer: int) -> str:
        pairs = ("; reflow: trains on the " + f"{self.couplings.rows:,} (noise, sample) pairs "
                 f"of {self.couplings.path}, the data's examples set the epochs only"
                 if self.couplings is not None else "")
        return (f"flow matching (rectified flow; {subset_words(subset_size, num_examples)} "
                f"examples per outer iteration, {steps_per_outer} steps each{pairs}; t "
                f"{self.time_sampling}; samples by {self.solver} with {self.nfe} network "
                f"evaluations)")

    # ------------------------------------------------------------------ training
    def _times(self, n: int, noise: torch.Generator) -> torch.Tensor:
        if self.time_sampling == "logit-normal":
            return torch.sigmoid(torch.randn(n, generator=noise))
        return torch.rand(n, generator=noise)

    def loss(self, batch: Batch, step: Step, state: dict[str, Any]
             ) -> tuple[torch.Tensor, dict[str, float]]:
        """Mean squared error of v(x_t, t) against x_1 - x_0 (mean over the batch and the
        sample's numbers) with x_0 and t drawn for the whole batch (this process's rows).

        With couplings (reflow), (x_0, x_1) are rows of the couplings file instead of fresh
        noise and the batch's examples."""
        n = batch.positions.numel()
        if self.couplings is not None:
            x0, x1 = self.couplings.draw(n, step.noise, batch.part, batch.x.device)
        else:
            x1 = batch.x.float()
            x0 = torch.randn((n, *self.sample_shape), generator=step.noise)[batch.part]
        t = self._times(n, step.noise)[batch.part]
        x0, t = x0.to(x1.device), t.to(x1.device)
        tb = t.view(-1, *([1] * (x1.ndim - 1)))
        xt = (1 - tb) * x0 + tb * x1
        with torch.autocast(x1.device.type, dtype=torch.bfloat16,
                            enabled=self.train_precision == "bf16"):
            v = self._velocity(step.module, xt, t, batch.c)
        return (v.float() - (x1 - x0)).square().mean(), {}

    @staticmethod
    def _velocity(module: nn.Module, x: torch.Tensor, t: torch.Tensor,
                  c: torch.Tensor | None) -> torch.Tensor:
        return module(x, t) if c is None else module(x, t, c)

    # ------------------------------------------------------------------ sampling
    @property
    def sample_shape(self) -> tuple[int, ...]:
        assert self._sample_shape is not None
        return self._sample_shape

    def configure_sampling(self, nfe: int | None = None, solver: str | None = None) -> None:
        """Sets the network evaluations and solver that sampling uses from now on (the run's
        ``method.options`` give the defaults)."""
        nfe = self.nfe if nfe is None else nfe
        solver = self.solver if solver is None else solver
        check_sampler(nfe, solver)
        self.nfe, self.solver = nfe, solver

    @torch.no_grad()
    def generate(self, latents: torch.Tensor, module: nn.Module | None = None,
                 conditions: torch.Tensor | None = None) -> torch.Tensor:
        """Integrates the flow from the noise ``latents`` (m, prod(sample_shape)) in batches
        of ``pool_batch_size`` without gradients (``nfe`` evaluations each, `integrate`).

        Args:
            conditions: (m, *cond_shape), row j for noise j (conditional flows only).

        Returns:
            (m, *sample_shape) float32, or bfloat16 when generation runs in bf16.
        """
        module = self.generator if module is None else module
        if (conditions is None) != (self.cond_shape is None):
            raise ShapeError("a conditional flow needs conditions= (one per sample); an "
                             "unconditional one takes none")
        bf16 = self.pool_bf16
        out = torch.empty((latents.shape[0], *self.sample_shape), device=self.device,
                          dtype=torch.bfloat16 if bf16 else torch.float32)
        for lo in range(0, latents.shape[0], self.pool_batch_size):
            x0 = latents[lo:lo + self.pool_batch_size].to(self.device).float()
            x0 = x0.view(x0.shape[0], *self.sample_shape)
            c = None if conditions is None else conditions[lo:lo + x0.shape[0]].to(self.device)

            def velocity(x: torch.Tensor, t: torch.Tensor, c: torch.Tensor | None = c
                         ) -> torch.Tensor:
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16):
                    return self._velocity(module, x, t, c).float()

            out[lo:lo + x0.shape[0]] = integrate(velocity, x0, self.nfe, self.solver)
        return out

    def sample(self, n: int, seed: int | None = None, use_ema: bool = True) -> torch.Tensor:
        if self.cond_shape is not None:
            raise ShapeError("a conditional flow samples per condition: use "
                             "sample_conditional(conditions, k) (imle sample RUN --conditions "
                             "C.npy)")
        return super().sample(n, seed, use_ema)

    @torch.no_grad()
    def sample_conditional(self, conditions: torch.Tensor, k: int, seed: int = 0,
                           use_ema: bool = True) -> torch.Tensor:
        """k samples for each condition: (n, k, *sample_shape) float32 for conditions
        (n, *cond_shape)."""
        if self.cond_shape is None:
            raise ShapeError("an unconditional flow takes no conditions; use sample(n)")
        if tuple(conditions.shape[1:]) != self.cond_shape:
            raise ShapeError(f"conditions must have shape (n, *{self.cond_shape}); got "
                             f"{tuple(conditions.shape)}")
        n = conditions.shape[0]
        out = self._sample(n * k, seed, use_ema, conditions.repeat_interleave(k, 0))
        return out.view(n, k, *self.sample_shape)
