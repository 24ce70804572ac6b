"""The model configurations the experiments compare, built from the presets.

Each function returns a `TrainConfig` for a data set and a CPU-minute budget; IMLE models keep
the project's defaults (`imle.config.TrainConfig`), the GAN keeps `imle.config.gan_config`
(spectral norm, R1, TTUR), both with the same generator network, so a comparison differs only in
the training rule.
"""

from __future__ import annotations

from typing import Any

from imle.config import TrainConfig, gan_config, paper_config, reference_config, replace

#: IMLE trained on its matching distance (squared L2 on images) instead of the image default's
#: L1 loss: the setting the tables of ``k``, ``cost``, ``gradients``, ``search`` and ``metric``
#: were measured with.
MATCHING_LOSS: dict[str, Any] = {"method.loss": None}

#: Generator (and GAN discriminator width) used for the 2-D mixtures: an MLP of two hidden
#: layers of 256 units and a 4-dimensional latent.
TOY_MODEL = {"model.type": "mlp", "model.width": 256, "model.latent_dim": 4}


def budgeted(config: TrainConfig, cpu_minutes: float, seed: int = 0, **updates: Any
             ) -> TrainConfig:
    return replace(config, **{"budget_type": "cpu_minutes", "budget": cpu_minutes,
                              "seed": seed, "sample_every_outer": 0, **updates})


def imle_toy(data: str, cpu_minutes: float, seed: int = 0, rule: str = "imle",
             **updates: Any) -> TrainConfig:
    """IMLE on a 2-D mixture (10,000 training points; S = 2,000, m = 10 |S|), with the report's
    settings pinned (not the ones `imle.defaults` derives for 2-D data)."""
    opts = {"epsilon_nn_frac": 0.25} if rule == "rs" else {}
    return budgeted(TrainConfig(), cpu_minutes, seed, **{
        "data.name": data, "data.options": {"num": 10_000}, **TOY_MODEL,
        "method.matcher": "vanilla" if rule == "imle" else rule, "method.options": opts,
        "method.pool_multiplier": 10.0, "method.search_backend": "exact",
        "method.pool_precision": "fp32", "method.recall_sample": 0, **updates})


#: The GAN's settings on the 2-D mixtures (Adam 2e-4, beta1 0.5, R1 weight 0.1); the image
#: settings of `gan_config` were tuned on MNIST (docs/results/gan-tuning-2026-12-03/).
TOY_GAN = {"optim.lr": 2e-4, "optim.beta1": 0.5, "method.options": {"r1_gamma": 0.1}}


def gan_toy(data: str, cpu_minutes: float, seed: int = 0, **updates: Any) -> TrainConfig:
    """The GAN on a 2-D mixture: same generator, a 256-unit MLP discriminator."""
    return budgeted(gan_config(), cpu_minutes, seed, **{
        "data.name": data, "data.options": {"num": 10_000}, **TOY_MODEL, **TOY_GAN,
        **updates})


def imle_toy_defaults(data: str, cpu_minutes: float, seed: int = 0, **updates: Any
                      ) -> TrainConfig:
    """IMLE on a 2-D mixture with what ``imle train --data D`` derives from the data
    (`imle.defaults`: a 2 x 256 MLP, a 2-D latent, RS-IMLE with epsilon from the data, a pool
    of 2 |S|), on the data set's default training split (50,000 points)."""
    return budgeted(TrainConfig(), cpu_minutes, seed, **{
        "data.name": data, "method.recall_sample": 0, **updates})


def gan_toy_tuned(data: str, cpu_minutes: float, seed: int = 0, **updates: Any
                  ) -> TrainConfig:
    """The GAN on a 2-D mixture as ``imle train --data D --method gan`` runs it: the GAN preset
    (Adam 2e-3, beta1 0, R1 1, EMA 0.999) with the generator derived from the data (a 2 x 256
    MLP, a 2-D latent), on the same training split as `imle_toy_defaults`. It won the GAN's 2-D
    tuning (26 trials of one CPU-minute, docs/results/modes-tuning-2026-12-06/) over the report's
    2-D settings `TOY_GAN`."""
    return budgeted(gan_config(), cpu_minutes, seed, **{"data.name": data, **updates})


def imle_images(data: str, cpu_minutes: float, seed: int = 0, **updates: Any) -> TrainConfig:
    """The project's default IMLE model on an image set."""
    return budgeted(TrainConfig(), cpu_minutes, seed, **{"data.name": data, **updates})


def gan_images(data: str, cpu_minutes: float, seed: int = 0, **updates: Any) -> TrainConfig:
    """The GAN baseline on an image set, with the default IMLE model's generator network."""
    base = TrainConfig()
    return budgeted(gan_config(), cpu_minutes, seed, **{
        "data.name": data, "model.type": base.model.type,
        "model.latent_dim": base.model.latent_dim, **updates})


def preset_images(preset: str, data: str, cpu_minutes: float, seed: int = 0,
                  **updates: Any) -> TrainConfig:
    """``--preset paper`` or ``--preset reference`` on an image set, under a CPU budget."""
    base = {"paper": paper_config, "reference": reference_config}[preset]()
    return budgeted(base, cpu_minutes, seed, **{"data.name": data, **updates})
