"""Push-T policies tuned with equal care, then trained longer: conditional RS-IMLE (IMLE
Policy), the flow-matching policy and Diffusion Policy's DDPM recipe (``pip install
'imle[robot]'``; the task, features and policies are those of `imle.reproduce.policy`).

1. **Tuning.** Every trial of the list (``METHOD NAME [key=JSON ...]`` per line, the same
   number per method) trains on the first ``--demos`` expert demonstrations for
   ``--trial-seconds`` of process CPU time on one thread, and is rolled out from
   ``--val-rollouts`` *validation* starts (``env.reset(seed=2 * 10^6 + e)``): none of them a
   demonstration's or a test start. Keys are `imle.TrainConfig` fields for ``imle`` and
   ``flow``, `imle.baselines.ddpm_policy.train_ddpm_policy` arguments (``lr``, ``batch_size``,
   ``layers``, ``width``) for ``ddpm``.
2. **Final.** Each method's trial with the highest mean best coverage (for the flow, the best
   of its NFE rows) trains again for ``--final-seconds`` with each ``--seeds``, and is rolled
   out from ``--rollouts`` *test* starts (``env.reset(seed=10^6 + e)``, those of
   ``policy_pusht.py``): success (>= 95 % coverage), mean best coverage, route shares, median
   milliseconds per 16-step chunk for one observation.

Each trial runs in its own process (``--parallel`` side by side, one torch thread each).
``--tuned-in DIR`` skips step 1 and takes each method's winner from an earlier output folder
that ran the same trial list (e.g. tuned at 200 demonstrations, trained at 50).

    python benchmarks/pusht_tune.py docs/results/pusht-tuning-2026-12-06/trials.txt \\
        --trial-seconds 90 --final-seconds 600 --seeds 0 1 --out bench/pusht-tune

Writes OUT/trials.jsonl and OUT/final.jsonl (one line per rolled-out policy), OUT/results.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import markdown_table, parse_overrides, read_jsonl, read_trials, run_workers
from policy_two_route import cli_fitter

from imle.config import replace
from imle.reproduce.policy import (
    expert_episodes,
    flow_policy_config,
    imle_config,
    policies_of,
    pusht_scores,
)

#: env.reset seeds: demonstrations use e < 10^6 (seed 0), tests 10^6 + e, validation 2 10^6 + e.
TEST, VALIDATION = 1, 2
METHODS = ("imle", "flow", "ddpm")


def train_trial(method: str, words: list[str], npz: Path, seconds: float, seed: int,
                work: Path, tag: str, nfe: tuple[int, ...]) -> tuple[dict[str, Callable], dict]:
    """Trains one trial (an ``imle train`` run folder WORK/TAG for IMLE and the flow);
    returns (row name -> factory of a fresh policy, training summary)."""
    data = np.load(npz)
    obs, act = torch.from_numpy(data["c"]), torch.from_numpy(data["x"])
    if method == "ddpm":
        from imle.baselines.ddpm_policy import train_ddpm_policy

        kwargs = {"layers": 2, **parse_overrides(words)}
        model, stats = train_ddpm_policy(obs, act, seconds, seed=seed, **kwargs)
        return policies_of("ddpm", model, nfe), {"steps": stats["steps"]}
    base = flow_policy_config(npz) if method == "flow" else imle_config(npz, "imle")
    config = replace(base, seed=seed, **parse_overrides(words))
    model, log = cli_fitter(work, seconds, [])(config, tag)
    return policies_of(method, model, nfe), {"steps": log[-1]["step"]}


def one(a: argparse.Namespace) -> None:
    """Trains and rolls out one (trial, seed) and prints one JSON line per policy row."""
    torch.set_num_threads(1)
    words = json.loads(a.words)
    policies, info = train_trial(a.method, words, a.npz, a.seconds, a.seed, a.work, a.tag,
                                 tuple(a.nfe))
    obs = torch.from_numpy(np.load(a.npz)["c"])
    for row, make in policies.items():
        scores = pusht_scores(make, obs, a.rollouts, seed=a.starts)
        print(json.dumps({"trial": a.name, "method": a.method, "policy": row, "seed": a.seed,
                          "cpu_seconds": a.seconds, "starts": a.starts,
                          "rollouts": a.rollouts, "settings": " ".join(words), **scores,
                          **info}), flush=True)


def launch(jobs: list[dict], a: argparse.Namespace, out_file: Path) -> None:
    """Runs ``jobs`` (dicts of --one's arguments) ``--parallel`` at a time; appends their rows
    to ``out_file``."""
    def command(job: dict) -> list[str]:
        return [sys.executable, __file__, "--one", "--npz", str(a.npz), "--work", str(a.work),
                "--nfe", *map(str, a.nfe), "--method", job["method"], "--name", job["name"],
                "--words", json.dumps(job["words"]), "--seconds", str(job["seconds"]),
                "--seed", str(job["seed"]), "--starts", str(job["starts"]),
                "--rollouts", str(job["rollouts"]), "--tag", job["tag"]]

    run_workers([(job["tag"], command(job), {}) for job in jobs], a.parallel, out_file,
                lambda r: f"{r['policy']}: coverage {r['coverage']:.3f}, success "
                          f"{r['success']:.2f}, {r['steps']} steps")


def demos_npz(a: argparse.Namespace) -> dict[str, Any]:
    """Writes the demonstration pairs (the expert's first successful episodes) once."""
    from imle.envs.pusht import demonstration_pairs

    stats_file = a.out / "expert.json"
    if a.npz.exists() and stats_file.exists():
        return json.loads(stats_file.read_text())
    good, stats = expert_episodes(a.demos)
    c, x = demonstration_pairs(good)
    np.savez(a.npz, c=c, x=x)
    stats.update(demos=a.demos, pairs=int(c.shape[0]))
    stats_file.write_text(json.dumps(stats))
    return stats


def best_trials(rows: list[dict]) -> dict[str, dict]:
    """method -> the tuning row with the highest coverage (ties: the earlier trial)."""
    best: dict[str, dict] = {}
    for r in rows:
        if r["policy"] == "imle-consistent":  # the same trained model as "imle"
            continue
        if r["method"] not in best or r["coverage"] > best[r["method"]]["coverage"]:
            best[r["method"]] = r
    return best


#: The scores of a rolled-out policy that the tables show.
KEYS = ["coverage", "success", "ccw", "cw", "chunk_ms", "steps"]


def final_summary(final: list[dict]) -> dict[str, dict]:
    """policy -> its final rows over the seeds: the trial, the seeds and each seed's coverage
    (as text), the means of KEYS, and ``wins`` successes of ``rollouts`` rollouts in all."""
    groups: dict[str, list[dict]] = {}
    for r in final:
        groups.setdefault(r["policy"], []).append(r)
    return {policy: {"policy": policy, "trial": g[0]["trial"],
                     "seeds": " / ".join(str(r["seed"]) for r in g),
                     "coverage per seed": " / ".join(f"{r['coverage']:.3f}" for r in g),
                     **{k: float(np.mean([r[k] for r in g])) for k in KEYS},
                     "wins": sum(round(r["success"] * r["rollouts"]) for r in g),
                     "rollouts": sum(r["rollouts"] for r in g)}
            for policy, g in groups.items()}


def report(a: argparse.Namespace, expert: dict) -> None:
    final = read_jsonl(a.out / "final.jsonl")
    keys = KEYS
    if a.tuned_in is not None:
        parts = [f"Tuning: the winners of {a.tuned_in} (not re-tuned); {a.demos} "
                 f"demonstrations ({expert['pairs']} pairs)"]
    else:
        parts = [markdown_table(
            f"Tuning: {a.demos} demonstrations ({expert['pairs']} pairs), {a.trial_seconds:g} "
            f"CPU-seconds per trial on one thread, seed 0, {a.val_rollouts} validation "
            f"rollouts", ["method", "trial", "settings", "policy"], keys,
            [{**r, "settings": r["settings"] or "(as in the policy table)",
              "trial": r["trial"]} for r in read_jsonl(a.out / "trials.jsonl")])]
    if final:
        parts.append(markdown_table(
            f"Final: the best trial per method, {a.final_seconds:g} CPU-seconds on one thread, "
            f"{a.rollouts} test rollouts per seed; means over the seeds",
            ["policy", "trial", "seeds", "coverage per seed"], keys,
            list(final_summary(final).values())))
    text = "\n\n".join(parts) + "\n"
    (a.out / "results.md").write_text(text)
    print(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("trials", type=Path, nargs="?")
    ap.add_argument("--demos", type=int, default=200)
    ap.add_argument("--trial-seconds", type=float, default=90.0)
    ap.add_argument("--final-seconds", type=float, default=600.0)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--val-rollouts", type=int, default=30)
    ap.add_argument("--rollouts", type=int, default=60)
    ap.add_argument("--nfe", type=int, nargs="+", default=[1, 10])
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--skip-final", action="store_true", help="tune only")
    ap.add_argument("--tuned-in", type=Path, help="take the winners from this earlier output "
                    "folder's trials.jsonl (the same trial list) instead of tuning")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--work", type=Path, default=Path("bench/pusht-tune-runs"))
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    for hidden in ("npz", "method", "name", "words", "tag"):
        ap.add_argument(f"--{hidden}", help=argparse.SUPPRESS)
    ap.add_argument("--seconds", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--starts", type=int, default=VALIDATION, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        a.npz, a.work = Path(a.npz), Path(a.work)
        one(a)
        return
    if a.trials is None or a.out is None:
        ap.error("a trial list and --out are needed")
    a.out.mkdir(parents=True, exist_ok=True)
    a.npz = a.out / f"pusht-demos-{a.demos}.npz"
    expert = demos_npz(a)
    trials = read_trials(a.trials)
    bad = [w[0] for w in trials if w[0] not in METHODS or len(w) < 2]
    if bad:
        sys.exit(f"trial lines start with a method ({', '.join(METHODS)}) and a name: {bad}")
    counts = {m: sum(w[0] == m for w in trials) for m in METHODS}
    if len(set(counts.values())) != 1:
        sys.exit(f"every method needs the same number of trials, got {counts}")
    tuned = (a.tuned_in or a.out) / "trials.jsonl"
    if a.tuned_in is None:
        done = {r["trial"] for r in read_jsonl(tuned)}
        jobs = [{"method": w[0], "name": w[1], "words": w[2:], "seconds": a.trial_seconds,
                 "seed": 0, "starts": VALIDATION, "rollouts": a.val_rollouts,
                 "tag": f"trial-{w[1]}"} for w in trials if w[1] not in done]
        launch(jobs, a, tuned)
    elif {r["trial"] for r in read_jsonl(tuned)} != {w[1] for w in trials}:
        sys.exit(f"{tuned} did not run the trials of {a.trials}")
    if not a.skip_final:
        best = best_trials(read_jsonl(tuned))
        done = {(r["trial"], r["seed"]) for r in read_jsonl(a.out / "final.jsonl")}
        words = {w[1]: w[2:] for w in trials}
        jobs = [{"method": m, "name": r["trial"], "words": words[r["trial"]],
                 "seconds": a.final_seconds, "seed": s, "starts": TEST,
                 "rollouts": a.rollouts, "tag": f"final-{r['trial']}-s{s}"}
                for s in a.seeds for m, r in best.items() if (r["trial"], s) not in done]
        launch(jobs, a, a.out / "final.jsonl")
    report(a, expert)


if __name__ == "__main__":
    main()
