"""A newcomer's first hour through the CLI: resume budgets, messages, the console, the README."""

import io
import json
import math
import re
from pathlib import Path

import pytest
import torch

import imle
from imle.cli import main
from imle.data import list_datasets
from imle.data.catalog import CATALOG, describe_datasets
from imle.nets import auto_generator
from imle.progress import Progress

REPO = Path(__file__).resolve().parents[1]
TINY = ["--data", "mnist", "--limit", "300", "--model", "mlp", "--width", "32",
        "--latent-dim", "8", "--subset-size", "100", "--refresh-epochs", "1",
        "--search-backend", "exact", "--progress", "none", "--threads", "1",
        "--sample-every-outer", "0"]
LR, FINAL = 4e-3, 0.05  # the default peak rate and cosine floor


def cosine(fraction: float) -> float:
    return LR * (FINAL + (1 - FINAL) * 0.5 * (1 + math.cos(math.pi * min(fraction, 1.0))))


@pytest.fixture(scope="module")
def finished(tmp_path_factory, data_dir):
    """A run of 12 steps that used its whole budget."""
    run = tmp_path_factory.mktemp("console") / "run"
    assert main(["train", *TINY, "--steps", "12", "--run-dir", str(run)]) == 0
    return run


def copy_of(run: Path, tmp_path: Path) -> Path:
    import shutil

    shutil.copytree(run, tmp_path / "run")
    return tmp_path / "run"


def lrs(run: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["lr"]) for r in map(json.loads, (run / "log.jsonl").read_text()
                                                .splitlines())]


# ---------------------------------------------------------------------------------- resume
def test_a_spent_budget_trains_nothing_says_why_and_leaves_the_folder(finished, tmp_path,
                                                                      capsys):
    run = copy_of(finished, tmp_path)
    before = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()
              and p.name != ".lock"}
    for argv in (["--steps", "8"], ["--steps", "12"], []):
        assert main(["train", "--resume", str(run), *argv]) == 2
        err = capsys.readouterr().err
        assert "nothing to train" in err and "12 of its" in err and "--more" in err
    after = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()
             and p.name != ".lock"}
    assert after == before  # config.json keeps budget 12, no log line, no checkpoint


def test_a_budget_flag_is_a_new_total_and_more_adds(finished, tmp_path, capsys):
    run = copy_of(finished, tmp_path)
    assert main(["train", "--resume", str(run), "--steps", "15"]) == 0
    err = capsys.readouterr().err
    assert "resuming" in err and "at step 12: 12 of 15 steps done" in err
    assert json.loads((run / "config.json").read_text())["budget"] == 15
    assert main(["train", "--resume", str(run), "--more", "5"]) == 0
    assert "at step 15: 15 of 20 steps done" in capsys.readouterr().err
    assert json.loads((run / "config.json").read_text())["budget"] == 20
    assert lrs(run)[-1][0] == 20


@pytest.mark.parametrize("schedule", ["stretch", "keep", "restart"])
def test_resume_lr_places_the_schedule(finished, tmp_path, schedule, capsys):
    run = copy_of(finished, tmp_path)
    argv = ["train", "--resume", str(run), "--steps", "24"]
    assert main(argv + (["--resume-lr", schedule] if schedule != "stretch" else [])) == 0
    err = capsys.readouterr().err
    trainer = imle.Trainer.resume(run)  # reads the stored span back (no training)
    trainer.close()
    span = {"stretch": [0.0, 24.0], "keep": [0.0, 12.0], "restart": [12.0, 24.0]}[schedule]
    assert trainer.state.lr_span == span
    # The rate of the first step after resuming (step 13 uses position 12 of the span).
    first = {"stretch": cosine(12 / 24), "keep": cosine(1.0), "restart": cosine(0.0)}[schedule]
    if schedule == "keep":
        m = re.search(r"learning rate stays at (\S+) \(", err)
        assert m and float(m.group(1)) == pytest.approx(cosine(1.0), rel=1e-2)
    else:
        m = re.search(r"learning rate goes from (\S+) to (\S+) \(", err)
        assert m and float(m.group(1)) == pytest.approx(cosine(1.0), rel=1e-2)
        assert float(m.group(2)) == pytest.approx(first, rel=1e-2)
    # Logged rates after the resume follow the chosen span to its end.
    last_step, last_lr = lrs(run)[-1]
    assert last_step == 24
    assert last_lr == pytest.approx(cosine((23 - span[0]) / (span[1] - span[0])), rel=1e-6)


def test_python_resume_of_a_spent_run_warns_and_writes_nothing(finished, tmp_path):
    run = copy_of(finished, tmp_path)
    config = (run / "config.json").read_bytes()
    trainer = imle.Trainer.resume(run)
    with pytest.warns(RuntimeWarning, match="nothing trained"):
        summary = trainer.train()
    assert summary["trained_steps"] == 0 and summary["checkpoint"] is None
    assert (run / "config.json").read_bytes() == config


def test_an_unchanged_budget_keeps_an_interrupted_run_exact(tmp_path, data_dir):
    run = tmp_path / "part"
    config = imle.TrainConfig.from_dict({
        "data": {"name": "mnist", "limit": 300},
        "model": {"type": "mlp", "width": 32, "latent_dim": 8},
        "method": {"subset_size": 100, "refresh_epochs": 1, "search_backend": "exact"},
        "budget_type": "steps", "budget": 10, "progress": "none", "threads": 1})
    imle.Trainer(config, run).train(until_step=4)
    resumed = imle.Trainer.resume(run, budget=10)
    assert resumed.state.lr_span == [] and resumed.resumed_from["lr_before"] == \
        resumed.resumed_from["lr_after"]
    resumed.close()


# -------------------------------------------------------------------------------- messages
@pytest.mark.parametrize("flag", ["--minutes", "--steps", "--more"])
def test_a_bad_budget_names_its_flag(flag, capsys):
    assert main(["train", "--data", "mnist", flag, "-1"]) == 2
    assert f"{flag} must be a positive number, got -1" in capsys.readouterr().err


def test_more_needs_resume(capsys):
    assert main(["train", "--data", "mnist", "--more", "3"]) == 2
    assert "--more adds to a resumed run's budget" in capsys.readouterr().err


def test_a_run_dir_that_is_a_file_is_named_with_the_fix(tmp_path, data_dir, capsys):
    path = tmp_path / "iamafile"
    path.write_text("keep me")
    for run_dir in (path, path / "run"):
        assert main(["train", *TINY, "--steps", "1", "--run-dir", str(run_dir)]) == 2
        err = capsys.readouterr().err
        assert f"{path} is a file, not a folder" in err and "--run-dir" in err
    assert path.read_text() == "keep me"


@pytest.mark.parametrize("argv, near", [
    (["train", "--minuts", "3"], "--minutes"),
    (["train", "--data", "mnist", "--bach-size=4"], "--batch-size"),
    (["sample", "run", "--nmu", "3"], "--num"),
    (["eval", "run", "--metrcs", "fid"], "--metrics"),
])
def test_a_mistyped_flag_names_the_nearest_one(argv, near, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(f"did you mean {near}? (`imle {argv[0]} --help` lists them)")
    assert len(err.splitlines()) == 1


# --------------------------------------------------------------------------------- console
def test_train_prints_what_it_runs_and_what_to_do_next(tmp_path, data_dir, capsys):
    run = tmp_path / "run"
    argv = [a for a in TINY if a not in ("--progress", "none")]
    assert main(["train", *argv, "--steps", "40", "--run-dir", str(run)]) == 0
    err = capsys.readouterr().err
    head = err.split("\nimle run:")[0]
    for line in ("data       mnist (train split): 300 examples of 1x28x28",
                 "generator  mlp, latent 8,", "|S| 100 of 300 examples matched to a pool of "
                 "1,000 (10x), 2 steps per pool", "budget     40 steps on cpu",
                 f"run folder {run}"):
        assert line in head
    # Not a terminal: a line every 5 % of the budget, in steps, not a redraw per step.
    progress = re.findall(r"^imle run: +(\d+)% \((\d+)/40 steps\)", err, re.M)
    assert [int(p) for p, _ in progress] == list(range(5, 101, 5))
    assert [int(n) for _, n in progress] == list(range(2, 41, 2))
    tail = err.strip().splitlines()[-4:]
    assert re.match(r"imle train: finished at step 40 \(40 of 40 steps\), final loss \S+\. "
                    r"Next:", tail[0])
    assert tail[1].strip().startswith(f"imle sample {run} --num")
    assert tail[2].strip().startswith(f"imle eval {run}")
    assert tail[3].strip().startswith(f"imle train --resume {run} --more 40")


def test_progress_counts_in_the_budget_unit():
    out = io.StringIO()
    bar = Progress(3.0, "minutes", "imle r", used=1.0, stream=out, bar=False, every=0.25)
    for used in (1.0, 1.2, 1.5, 1.6, 2.3, 2.9, 3.1):
        bar.update(used, loss=0.5)
    assert out.getvalue().splitlines() == [
        "imle r:  50% (1.50/3 minutes) loss 0.5",
        "imle r:  77% (2.30/3 minutes) loss 0.5",
        "imle r: 100% (3.10/3 minutes) loss 0.5"]


def test_datasets_lists_shapes_splits_and_where_the_files_are(data_dir, tmp_path, capsys):
    assert {info.name for info in CATALOG} == set(list_datasets())
    rows = {r["name"]: r for r in describe_datasets(data_dir)}
    assert rows["mnist"]["status"] == f"on disk ({data_dir / 'mnist'})"
    assert rows["mnist"]["splits"] == {"train": 50_000, "val": 10_000, "test": 10_000,
                                       "train-full": 60_000}
    assert rows["grid25"]["shape"] == (2,) and rows["grid25"]["status"] == "generated"
    photos = imle.data.load_dataset("photos", "test", data_dir)
    assert rows["photos"]["splits"]["test"] == photos.x.shape[0]
    empty = {r["name"]: r for r in describe_datasets(tmp_path)}
    assert empty["mnist"]["status"] == f"missing: will be downloaded to {tmp_path / 'mnist'}"
    assert empty["photos"]["status"].startswith("missing: copy its files to")
    assert main(["datasets", "--data-dir", str(data_dir)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^mnist +1x28x28 +handwritten", out, re.M)
    assert "splits: train 50,000, val 10,000, test 10,000, train-full 60,000" in out


# ------------------------------------------------------------------------ derived defaults
@pytest.mark.parametrize("shape, cond, name", [
    ((1, 28, 28), None, "dcgan28"), ((3, 32, 32), None, "dcgan32"), ((2,), None, "mlp"),
    ((1, 25, 25), None, "mlp"), ((1, 28, 28), (1, 7, 7), "img2img"),
    ((1, 28, 28), (10,), "cond-dcgan28"), ((2,), (5,), "cond-mlp")])
def test_auto_generator_fits_the_shape_and_task(shape, cond, name):
    assert auto_generator(shape, cond)[0] == name


@pytest.mark.parametrize("argv, model", [
    (["--data", "grid25", "--data-options", '{"num": 500}'], "mlp"),
    (["--data", "mnist", "--limit", "200", "--task", "superres:4"], "img2img"),
    (["--data", "mnist", "--limit", "200", "--task", "superres:4", "--model", "cond-mlp"],
     "cond-mlp"),
])
def test_train_picks_the_generator_from_the_data(tmp_path, data_dir, argv, model, capsys):
    run = tmp_path / "run"
    assert main(["train", *argv, "--steps", "2", "--subset-size", "100", "--width", "16",
                 "--progress", "none", "--threads", "1", "--run-dir", str(run)]) == 0
    assert json.loads((run / "config.json").read_text())["model"]["type"] == model
    auto = "--model" not in argv
    assert (f"generator  {model} (auto:" in capsys.readouterr().err) == auto


# --------------------------------------------------------------------------------- README
def test_the_readme_python_quick_start_runs(tmp_path, data_dir, monkeypatch):
    text = (REPO / "README.md").read_text()
    snippet = re.search(r"### Python\n\n```python\n(.*?)```", text, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("IMLE_DATA_DIR", str(data_dir))
    scope: dict = {}
    exec(compile(snippet, "README.md", "exec"), scope)  # noqa: S102 - the README's own code
    assert tuple(scope["images"].shape) == (16, 1, 28, 28)
    assert scope["trainer"].step == 200
    assert torch.isfinite(scope["loss"]) and scope["loss"].item() > 0
    assert (tmp_path / "runs" / "mnist-python" / "config.json").exists()


def test_the_readme_documents_what_the_cli_does():
    text = (REPO / "README.md").read_text()
    for name in list_datasets():  # every named data set
        assert f"`{name}`" in text, name
    for phrase in ("--more", "--resume-lr", "IMLE_DATA_DIR", "--data-dir", "imle datasets",
                   "docs/baselines.md", "train-classifier", "real-data reference"):
        assert phrase in text, phrase
    assert "floor" not in text and "extends budget" not in text
    assert "The paper's argument" in text  # the no-dropped-modes claim is the paper's
