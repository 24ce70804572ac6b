"""One call that scores generated samples with every metric against the right reference data.

``evaluate(samples, "mnist", ["parzen", "fid", ...])`` loads the reference splits, computes the
features, each metric, and beside every model figure its *real-data floor*: the same metric with
held-out real data (the test split) in place of the samples, so each number can be read against
what perfect samples would score under the same protocol and sample count.

Reference protocol (all splits from :func:`imle.data.load_dataset`):

* feature metrics (FID, KID, PRDC): samples vs ``num_reference`` (10,000) examples drawn with
  ``seed`` from the training split; floor: min(N, |test|) test examples vs the same reference.
* Parzen: samples as kernel centres, σ chosen on the "val" split, reported on the "test" split;
  floor: N training images as kernel centres (≈ 247 nats on MNIST per the issue; see docs).
* modes: classifier histogram (MNIST/Fashion-MNIST: 10 classes, Stacked MNIST: 1,000 modes;
  2-D mixtures: centres within 3σ); floor: the test split.
* memorization: pixel-space nearest training example of each sample vs of each test example.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from imle.errors import ConfigError, DataError, ShapeError
from imle.metrics.features import BUILTIN_CLASSIFIERS, FeatureExtractor, load_feature_extractor
from imle.metrics.fid import check_fid_size, check_kid_size, fid_from_features, kid_from_features
from imle.metrics.memorization import memorization, nearest_distances
from imle.metrics.modes import mixture_modes, modes_from_labels, stacked_mnist_labels
from imle.metrics.parzen import DEFAULT_SIGMAS, parzen_log_likelihood
from imle.metrics.prdc import check_prdc_size, prdc

#: Metric groups accepted by :func:`evaluate` and ``imle eval --metrics``.
METRICS = ("parzen", "fid", "kid", "prdc", "modes", "memorization")
TOY_DATA = ("ring8", "grid25", "pacgan-ring8")
DEFAULT_EXTRACTOR = {"mnist": "mnist-cnn", "fashion-mnist": "fashion-mnist-cnn",
                     "stacked-mnist": "mnist-cnn"}

# In-memory caches: reference splits and their features, keyed by everything they depend on.
_SPLITS: dict[tuple, object] = {}
_FEATURES: dict[tuple, object] = {}
# Bump when a cached quantity's definition changes, so stale disk entries are ignored.
_CACHE_VERSION = 1


def clear_cache() -> None:
    """Forgets the in-memory reference splits and features (the disk cache stays)."""
    _SPLITS.clear()
    _FEATURES.clear()


def default_cache_dir() -> Path | None:
    """Disk cache of reference statistics: ``IMLE_CACHE_DIR``/metrics, else ~/.cache/imle/metrics.

    Setting ``IMLE_CACHE_DIR`` to an empty string disables the disk cache.
    """
    env = os.environ.get("IMLE_CACHE_DIR")
    if env is not None:
        return Path(env).expanduser() / "metrics" if env.strip() else None
    return Path("~/.cache/imle/metrics").expanduser()


def _cached(kind: str, key: dict, compute: Callable[[], object], cache_dir: Path | None):
    """Memoises ``compute()`` in memory and, when cache_dir is set, on disk.

    Only quantities that depend on the real data and the settings in ``key`` (never on the
    samples) go through here: reference features, the Parzen floor, test-to-train distances.
    """
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()
    mem_key = (kind, digest)
    if mem_key in _FEATURES:
        return _FEATURES[mem_key]
    path = None if cache_dir is None else Path(cache_dir) / f"{kind}-{digest[:24]}.pt"
    value = None
    if path is not None and path.is_file():
        try:
            value = torch.load(path, weights_only=True)
        except Exception:  # noqa: BLE001 - a corrupt cache entry is recomputed, not fatal
            value = None
    if value is None:
        value = compute()
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(f".tmp{os.getpid()}")
                torch.save(value, tmp)
                tmp.replace(path)
            except OSError:  # read-only home: the in-memory cache still works
                pass
    _FEATURES[mem_key] = value
    return value


def _data_key(data: str, data_dir) -> dict:
    """The part of a cache key that identifies the real data (set name and resolved folder)."""
    from imle.data import get_data_dir

    return {"data": data, "data_dir": str(get_data_dir(data_dir)), "version": _CACHE_VERSION}


def _split(data: str, split: str, data_dir: str | Path | None):
    from imle.data import load_dataset

    key = (data, split, str(data_dir))
    if key not in _SPLITS:
        _SPLITS[key] = load_dataset(data, split, data_dir=data_dir)
    return _SPLITS[key]


def _subset(n_total: int, n: int, seed: int) -> torch.Tensor:
    """First n indices of a seeded permutation of range(n_total) (all of them when n ≥ n_total)."""
    if n >= n_total:
        return torch.arange(n_total)
    return torch.randperm(n_total, generator=torch.Generator().manual_seed(seed))[:n]


def _identity_extractor(dim: int) -> FeatureExtractor:
    return FeatureExtractor(name="identity", sha256="", num_features=dim, in_channels=0,
                            _features=lambda x: x.reshape(x.shape[0], -1))


def _per_channel(base: FeatureExtractor, channels: int) -> FeatureExtractor:
    """Applies a 1-channel extractor to each channel and concatenates: (N, C·F) features."""

    def feats(x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        return base._features(x.reshape(n * channels, 1, *x.shape[2:])).reshape(n, -1)

    return FeatureExtractor(
        name=f"{base.name}-per-channel", sha256=base.sha256,
        num_features=base.num_features * channels, in_channels=channels, _features=feats,
        device=base.device, batch_size=max(1, base.batch_size // channels), info=base.info)


def resolve_extractor(data: str, extractor: FeatureExtractor | str | Path | None = None,
                      inception_weights: str | Path | None = None, device: str = "cpu"
                      ) -> FeatureExtractor:
    """The feature extractor for a data set: the given one, or the data set's default.

    Defaults: MNIST → "mnist-cnn", Fashion-MNIST → "fashion-mnist-cnn", Stacked MNIST →
    "mnist-cnn" per channel (384-d), 2-D mixtures → the raw coordinates, anything else →
    "inception" (needs torch-fidelity and ``inception_weights``).
    """
    if isinstance(extractor, FeatureExtractor):
        ext = extractor
    elif extractor is not None:
        ext = load_feature_extractor(extractor, device, inception_weights)
    elif data in TOY_DATA:
        return _identity_extractor(2)
    else:
        ext = load_feature_extractor(DEFAULT_EXTRACTOR.get(data, "inception"), device,
                                     inception_weights)
    if data == "stacked-mnist" and ext.in_channels == 1:
        return _per_channel(ext, 3)
    return ext


def _features(ext: FeatureExtractor, data: str, split: str, data_dir, idx_key: tuple,
              x: torch.Tensor, cache_dir: Path | None) -> torch.Tensor:
    if ext.name == "identity":
        return ext(x)
    key = {**_data_key(data, data_dir), "extractor": ext.name, "sha256": ext.sha256,
           "split": split, "subset": list(idx_key)}
    return _cached("features", key, lambda: ext(x), cache_dir if ext.sha256 else None)


def _class_labels(data: str, x: torch.Tensor, device: str) -> tuple[torch.Tensor, int, dict]:
    """Mode labels and mode count of images under the data set's classifier."""
    if data == "stacked-mnist":
        clf = load_feature_extractor("mnist-cnn", device)
        return stacked_mnist_labels(x, clf), 1000, clf.describe()
    name = DEFAULT_EXTRACTOR.get(data)
    if name not in BUILTIN_CLASSIFIERS:
        raise ConfigError(
            f"no mode metric for data set {data!r}: 'modes' needs ring8, grid25, mnist, "
            "fashion-mnist or stacked-mnist; drop it from --metrics")
    clf = load_feature_extractor(name, device)
    return clf.logits(x).argmax(1), 10, clf.describe()


def normalize_metrics(metrics: Sequence[str] | str) -> list[str]:
    """Lower-cased metric names (a comma-separated string works too); ConfigError on typos."""
    if isinstance(metrics, str):
        metrics = metrics.split(",")
    names = [m.strip().lower() for m in metrics if m.strip()]
    unknown = sorted(set(names) - set(METRICS))
    if unknown or not names:
        raise ConfigError(f"unknown metric(s) {unknown or names}; choose from "
                          f"{', '.join(METRICS)} (--metrics)")
    return list(dict.fromkeys(names))


#: Fewest samples a Parzen estimate is reported for: a kernel density of a handful of points
#: prints a number that measures the bandwidth grid, not the model.
PARZEN_MIN_SAMPLES = 100


def check_sizes(n: int, metrics: Sequence[str], num_features: int | None = None,
                num_reference: int | None = None, num_floor: int | None = None,
                kid_subset_size: int = 1000, prdc_k: int = 5) -> None:
    """Raises ConfigError, naming the option to change, when a set is too small for a metric.

    Args:
        n: number of samples.
        metrics: metric groups to be computed.
        num_features: feature dimension (FID needs more vectors than dimensions).
        num_reference: real reference examples (None: not checked).
        num_floor: held-out examples of the floor (None: no floor).
        kid_subset_size: KID subset size.
        prdc_k: PRDC k.
    """
    if n < 2:
        raise ConfigError(f"need at least 2 samples; got {n} (--num)")
    if "parzen" in metrics and n < PARZEN_MIN_SAMPLES:
        raise ConfigError(f"Parzen needs at least {PARZEN_MIN_SAMPLES} samples for its kernel "
                          f"density (the protocol uses 10,000); got {n} (--num)")
    sizes = {"samples": n}
    if num_reference is not None:
        sizes["reference examples (--num-reference)"] = num_reference
    if num_floor is not None:
        sizes["floor (test) examples"] = num_floor
    for what, size in sizes.items():
        if "fid" in metrics and num_features is not None:
            check_fid_size(size, num_features, what)
        if "kid" in metrics:
            check_kid_size(size, kid_subset_size, what)
        if "prdc" in metrics:
            check_prdc_size(size, size, prdc_k)


def evaluate(samples: torch.Tensor, data: str, metrics: Sequence[str] = METRICS,
             data_dir: str | Path | None = None, seed: int = 0,
             extractor: FeatureExtractor | str | Path | None = None, *,
             num_reference: int = 10_000, parzen_sigmas: Sequence[float] | None = None,
             kid_subset_size: int = 1000, kid_num_subsets: int = 100, prdc_k: int = 5,
             floors: bool = True, memorization_quantile: float = 0.01,
             inception_weights: str | Path | None = None, device: str = "cpu",
             cache_dir: str | Path | None | bool = True,
             log: Callable[[str], None] | None = None) -> dict:
    """Scores generated samples with the chosen metrics, each beside its real-data floor.

    Args:
        samples: (N, C, H, W) images in [0, 1] (or (N, 2) points for ring8/grid25).
        data: reference data set name ("mnist", "fashion-mnist", "stacked-mnist", "ring8",
            "grid25", or any image set with ``extractor="inception"``).
        metrics: subset of ``METRICS``.
        data_dir: data folder (None: ``IMLE_DATA_DIR`` or the default).
        seed: seeds the reference subset and the KID subsets.
        extractor: FeatureExtractor, name or weights path (None: the data set's default).
        num_reference: training examples used as the real set of FID/KID/PRDC.
        parzen_sigmas: Parzen bandwidth grid (default ``DEFAULT_SIGMAS``).
        kid_subset_size: KID subset size (≤ N).
        kid_num_subsets: KID subsets.
        prdc_k: PRDC neighbourhood size (< N).
        floors: also compute each metric on held-out real data.
        memorization_quantile: near-duplicate threshold quantile of test distances.
        inception_weights: local torch-fidelity InceptionV3 weights.
        device: where feature extractors run.
        cache_dir: disk cache of the sample-independent reference statistics (reference
            features, Parzen floor, test-to-train distances); True: ``default_cache_dir()``,
            False/None: memory only.
        log: progress printer.

    Returns:
        ``{"metrics": {name: float}, "settings": {...}}``; see docs/metrics.md for the names.
    """
    say = log or (lambda _msg: None)
    metrics = normalize_metrics(metrics)
    if cache_dir is True:
        cache_dir = default_cache_dir()
    elif cache_dir is False:
        cache_dir = None
    x = torch.as_tensor(samples).detach().cpu().float()
    n = x.shape[0]
    check_sizes(n, metrics, kid_subset_size=kid_subset_size, prdc_k=prdc_k)
    train = _split(data, "train", data_dir)
    if tuple(x.shape[1:]) != tuple(train.x.shape[1:]):
        raise ShapeError(f"samples have shape {tuple(x.shape[1:])} per item but {data!r} has "
                         f"{tuple(train.x.shape[1:])}; is --data right?")
    bad = int((~torch.isfinite(x.flatten(1))).any(1).sum())
    if bad:
        raise DataError(f"{bad} of {n} samples have NaN or infinite values, which no metric can "
                        "score: the model's sampler diverged (for a flow, sample with more "
                        "steps, --nfe, or --solver heun; otherwise use an earlier checkpoint)")
    test = _split(data, "test", data_dir)
    n_floor = min(n, test.x.shape[0])
    settings: dict = {"data": data, "data_dir": None if data_dir is None else str(data_dir),
                      "num_samples": n, "seed": seed, "metrics": metrics,
                      "reference_split": "train", "floor_split": "test", "num_floor": n_floor,
                      "torch": torch.__version__}
    feature_metrics = [m for m in metrics if m in ("fid", "kid", "prdc")]
    ext = None
    if feature_metrics:
        ext = resolve_extractor(data, extractor, inception_weights, device)
        n_ref = min(num_reference, train.x.shape[0])
        settings.update(feature_extractor=ext.describe(), num_reference=n_ref)
        # Fail before any heavy work when a set is too small for a metric.
        check_sizes(n, metrics, ext.num_features, n_ref, n_floor if floors else None,
                    kid_subset_size, prdc_k)
    out: dict[str, float] = {}
    timings: dict[str, float] = {}

    if feature_metrics:
        t0 = time.perf_counter()
        ref_idx = _subset(train.x.shape[0], n_ref, seed)
        ref_f = _features(ext, data, "train", data_dir, (n_ref, seed), train.x[ref_idx],
                          cache_dir)
        fake_f = ext(x)
        floor_f = (_features(ext, data, "test", data_dir, (n_floor,), test.x[:n_floor],
                             cache_dir) if floors else None)
        timings["features"] = time.perf_counter() - t0
        say(f"features: {timings['features']:.1f} s")
        if "fid" in metrics:
            t0 = time.perf_counter()
            out["fid"] = fid_from_features(fake_f, ref_f)["fid"]
            if floors:
                out["fid_real_floor"] = fid_from_features(floor_f, ref_f)["fid"]
            timings["fid"] = time.perf_counter() - t0
        if "kid" in metrics:
            t0 = time.perf_counter()
            r = kid_from_features(fake_f, ref_f, kid_subset_size, kid_num_subsets, seed)
            out["kid"], out["kid_std"] = r["kid_mean"], r["kid_std"]
            if floors:
                r = kid_from_features(floor_f, ref_f, kid_subset_size, kid_num_subsets, seed)
                out["kid_real_floor"], out["kid_real_floor_std"] = r["kid_mean"], r["kid_std"]
            settings["kid"] = {"subset_size": kid_subset_size, "num_subsets": kid_num_subsets,
                               "kernel": "(x.y/d + 1)^3"}
            timings["kid"] = time.perf_counter() - t0
        if "prdc" in metrics:
            t0 = time.perf_counter()
            r = prdc(ref_f, fake_f, k=prdc_k)
            for key in ("precision", "recall", "density", "coverage"):
                out[key] = r[key]
            if floors:
                r = prdc(ref_f, floor_f, k=prdc_k)
                for key in ("precision", "recall", "density", "coverage"):
                    out[f"{key}_real_floor"] = r[key]
            settings["prdc"] = {"k": prdc_k, "inequality": "strict (d < radius)"}
            timings["prdc"] = time.perf_counter() - t0
        say("feature metrics done")

    if "parzen" in metrics:
        t0 = time.perf_counter()
        val = _split(data, "val", data_dir)
        r = parzen_log_likelihood(x, val.x, test.x, sigmas=parzen_sigmas)
        out["parzen_ll"], out["parzen_std_err"], out["parzen_sigma"] = (
            r["mean"], r["std_err"], r["sigma"])
        settings["parzen"] = {k: r[k] for k in ("sigma", "sigmas", "val_mean_per_sigma",
                                                "sigma_at_grid_edge", "num_samples", "num_val",
                                                "num_test", "dim")}
        settings["parzen"].update(val_split="val", test_split="test",
                                  default_grid=parzen_sigmas is None or
                                  tuple(parzen_sigmas) == DEFAULT_SIGMAS)
        if floors:
            # Real floor: training images as kernel centres, same count as the samples.
            idx = _subset(train.x.shape[0], n, seed)
            key = {**_data_key(data, data_dir), "n": n, "seed": seed,
                   "sigmas": list(parzen_sigmas or DEFAULT_SIGMAS)}
            rr = _cached("parzen-floor", key, lambda: parzen_log_likelihood(
                train.x[idx], val.x, test.x, sigmas=parzen_sigmas), cache_dir)
            out["parzen_ll_real_floor"] = rr["mean"]
            out["parzen_std_err_real_floor"] = rr["std_err"]
            out["parzen_sigma_real_floor"] = rr["sigma"]
        timings["parzen"] = time.perf_counter() - t0
        say(f"parzen: {timings['parzen']:.1f} s")

    if "modes" in metrics:
        t0 = time.perf_counter()
        if data in TOY_DATA:
            from imle.data.toy import mixture

            centers, std = mixture(data)
            r = mixture_modes(x, centers, std)
            out.update(modes=r["modes"], num_modes=r["num_modes"],
                       high_quality_frac=r["high_quality_frac"], modes_kl=r["kl"])
            if floors:
                rr = mixture_modes(test.x[:n_floor], centers, std)
                out.update(modes_real_floor=rr["modes"],
                           high_quality_frac_real_floor=rr["high_quality_frac"],
                           modes_kl_real_floor=rr["kl"])
            settings["modes"] = {"rule": "within 3 std of the nearest centre", "std": std,
                                 "min_count": 1}
        else:
            labels, k, clf = _class_labels(data, x, device)
            r = modes_from_labels(labels, k)
            out.update(modes=r["modes"], num_modes=k, modes_kl=r["kl"])
            if floors:
                fl, _, _ = _class_labels(data, test.x[:n_floor], device)
                rr = modes_from_labels(fl, k)
                out.update(modes_real_floor=rr["modes"], modes_kl_real_floor=rr["kl"])
            settings["modes"] = {"classifier": clf, "num_modes": k,
                                 "kl": "KL(sample histogram || uniform), nats"}
            if data == "stacked-mnist" and n < 26_000:
                settings["modes"]["note"] = (f"{n} samples; the literature uses 26,000 "
                                             "(--num 26000)")
        timings["modes"] = time.perf_counter() - t0

    if "memorization" in metrics:
        t0 = time.perf_counter()
        # Test-to-train distances do not depend on the samples: computed once per data set.
        test_nn = _cached("test-nn", _data_key(data, data_dir), lambda: nearest_distances(
            test.x.flatten(1), train.x.flatten(1)), cache_dir)
        r = memorization(x, train.x, test.x, quantile=memorization_quantile, test_nn=test_nn)
        out.update(memorization_ratio=r["ratio"], sample_nn_median=r["sample_nn_median"],
                   test_nn_median=r["test_nn_median"],
                   near_duplicate_frac=r["near_duplicate_frac"],
                   test_near_duplicate_frac=r["test_near_duplicate_frac"])
        settings["memorization"] = {
            "space": "pixels (Euclidean)", "quantile": r["quantile"],
            "near_duplicate_threshold": r["near_duplicate_threshold"],
            "train_split": "train", "num_train": r["num_train"], "test_split": "test",
            "num_test": r["num_test"]}
        timings["memorization"] = time.perf_counter() - t0
        say(f"memorization: {timings['memorization']:.1f} s")

    settings["timings_s"] = {k: round(v, 3) for k, v in timings.items()}
    return {"metrics": {k: float(v) for k, v in out.items()}, "settings": settings}


# Rows of the table: (label, metric key, floor key, format).
_ROWS = [
    ("Parzen log-lik. (nats)", "parzen_ll", "parzen_ll_real_floor", "{:.1f}"),
    ("  ± std. error", "parzen_std_err", "parzen_std_err_real_floor", "{:.2f}"),
    ("  bandwidth sigma", "parzen_sigma", "parzen_sigma_real_floor", "{:.3f}"),
    ("FID", "fid", "fid_real_floor", "{:.3f}"),
    ("KID", "kid", "kid_real_floor", "{:.5f}"),
    ("  KID std", "kid_std", "kid_real_floor_std", "{:.5f}"),
    ("precision", "precision", "precision_real_floor", "{:.4f}"),
    ("recall", "recall", "recall_real_floor", "{:.4f}"),
    ("density", "density", "density_real_floor", "{:.4f}"),
    ("coverage", "coverage", "coverage_real_floor", "{:.4f}"),
    ("modes", "modes", "modes_real_floor", "{:.0f}"),
    ("  of modes", "num_modes", None, "{:.0f}"),
    ("  KL to uniform (nats)", "modes_kl", "modes_kl_real_floor", "{:.4f}"),
    ("  high-quality fraction", "high_quality_frac", "high_quality_frac_real_floor", "{:.4f}"),
    ("NN-distance ratio", "memorization_ratio", None, "{:.3f}"),
    ("  median NN dist.", "sample_nn_median", "test_nn_median", "{:.3f}"),
    ("  near-duplicate frac.", "near_duplicate_frac", "test_near_duplicate_frac", "{:.4f}"),
]


def format_table(result: dict) -> str:
    """Renders an :func:`evaluate` result as a text table: metric, model, real-data floor."""
    m = result.get("metrics", {})
    s = result.get("settings", {})

    def fmt(key: str | None, pattern: str) -> str:
        if key is None or key not in m:
            return ""
        v = m[key]
        return "nan" if isinstance(v, float) and math.isnan(v) else pattern.format(v)

    rows = [(label, fmt(k, f), fmt(fk, f)) for label, k, fk, f in _ROWS if k in m]
    if s.get("parzen", {}).get("sigma_at_grid_edge"):
        # The validation optimum is outside the grid (e.g. samples that coincide with the
        # validation split drive σ → 0): the Parzen number is not meaningful as is.
        rows = [(a + " [sigma at grid edge!]" if a.startswith("  bandwidth") else a, b, c)
                for a, b, c in rows]
    known = {k for _, k, fk, _ in _ROWS} | {fk for _, _, fk, _ in _ROWS if fk}
    rows += [(k, f"{v:.6g}", "") for k, v in m.items() if k not in known]
    w0 = max([len("metric")] + [len(r[0]) for r in rows])
    w1 = max([len("samples")] + [len(r[1]) for r in rows])
    w2 = max([len("real (test) floor")] + [len(r[2]) for r in rows])
    lines = [f"{'metric':<{w0}}  {'samples':>{w1}}  {'real (test) floor':>{w2}}",
             f"{'-' * w0}  {'-' * w1}  {'-' * w2}"]
    lines += [f"{a:<{w0}}  {b:>{w1}}  {c:>{w2}}" for a, b, c in rows]
    info = [f"data={s.get('data')}", f"N={s.get('num_samples')}", f"seed={s.get('seed')}"]
    fe = s.get("feature_extractor")
    if fe:
        info.append(f"features={fe['name']} (sha256 {fe['sha256'][:12]}…)" if fe.get("sha256")
                    else f"features={fe['name']}")
    if "num_reference" in s:
        info.append(f"reference=train[{s['num_reference']}]")
    lines.append(", ".join(info))
    return "\n".join(lines)
