"""Experiment ``stability``: spread of results over seeds and learning rates.

``grid25`` (25 modes), IMLE and the GAN at 1/4, 1 and 4 times each method's default learning
rate, several seeds each, equal CPU budgets. Reported: modes and high-quality fraction (mean and
standard deviation over seeds) per learning rate, and the loss curves (``stability.png``).
"""

from __future__ import annotations

from typing import Any

from imle.config import TrainConfig
from imle.reproduce.common import Context, figure, mean_std, read_log, train, write_table
from imle.reproduce.models import TOY_GAN, gan_toy, imle_toy


def run(ctx: Context) -> dict[str, Any]:
    from imle.data.toy import mixture
    from imle.metrics import mixture_modes

    centers, std = mixture("grid25")
    seeds = list(range(ctx.pick(4, 2)))
    factors = ctx.pick([0.25, 1.0, 4.0], [0.25, 4.0])
    minutes = ctx.minutes(0.2, 0.06)
    bases = {"IMLE": (TrainConfig().optim.lr, imle_toy),
             "GAN": (TOY_GAN["optim.lr"], gan_toy)}
    rows, curves = [], {}
    for model, (lr0, make) in bases.items():
        for f in factors:
            modes, hq = [], []
            for seed in seeds:
                trainer = train(ctx, make("grid25", minutes, seed, **{"optim.lr": lr0 * f}),
                                f"{model}-lr{f:g}-s{seed}")
                r = mixture_modes(trainer.method.sample(2500, seed=100 + seed), centers, std)
                modes.append(r["modes"])
                hq.append(r["high_quality_frac"])
                curves[(model, f, seed)] = [rec["loss"] for rec in read_log(trainer)]
            m, msd = mean_std(modes)
            h, hsd = mean_std(hq)
            rows.append({"model": model, "lr": lr0 * f, "lr / default": f, "modes": m,
                         "modes sd": msd, "modes min": min(modes), "high quality": h,
                         "hq sd": hsd, "seeds": len(seeds)})
    with figure(ctx.out / "stability.png", 2) as (_, axes):
        for i, model in enumerate(bases):
            ax = axes[0, i]
            for (mname, f, seed), losses in curves.items():
                if mname == model:
                    ax.plot(losses, lw=0.8, alpha=0.8,
                            label=f"lr x{f:g}" if seed == seeds[0] else None,
                            color={0.25: "tab:blue", 1.0: "tab:green", 4.0: "tab:red"}[f])
            ax.set_title(f"{model}: loss per outer iteration", fontsize=9)
            ax.set_xlabel("outer iteration (equal CPU budgets)")
            ax.set_yscale("symlog" if model == "GAN" else "log")
            ax.legend(fontsize=7)
    write_table(ctx, rows, ["model", "lr", "lr / default", "modes", "modes sd", "modes min",
                            "high quality", "hq sd", "seeds"],
                {"data": "grid25", "seeds": seeds, "cpu_minutes": minutes,
                 "lr_factors": factors},
                notes=["GAN loss: the generator's non-saturating loss; IMLE loss: squared L2 "
                       "to the matched sample."])
    return {"rows": rows}
