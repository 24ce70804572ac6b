"""Tests of imle.metrics against independent references (scipy, sklearn, prdc) and cases with
known answers."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import scipy.linalg
import scipy.special
import torch
from sklearn.metrics.pairwise import polynomial_kernel

from imle.errors import ConfigError, DataError, ShapeError
from imle.metrics import (
    SmallCNN,
    evaluate,
    fid_from_features,
    format_table,
    frechet_distance,
    histogram_kl_to_uniform,
    kid_from_features,
    load_feature_extractor,
    memorization,
    mixture_modes,
    modes_from_labels,
    parzen_log_likelihood,
    prdc,
    save_classifier,
    sha256_file,
    stacked_mnist_modes,
    train_classifier,
)
from imle.metrics.features import WEIGHTS_DIR


def rng(seed=0):
    return np.random.default_rng(seed)


# ----------------------------------------------------------------------------- FID


@pytest.mark.parametrize("dim", [1, 5, 40])
def test_frechet_distance_matches_scipy_sqrtm(dim):
    r = rng(dim)
    a = r.normal(size=(400, dim))
    b = r.normal(size=(500, dim)) @ r.normal(size=(dim, dim)) * 0.5 + 0.3
    mu1, s1 = a.mean(0), np.atleast_2d(np.cov(a, rowvar=False))
    mu2, s2 = b.mean(0), np.atleast_2d(np.cov(b, rowvar=False))
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    ref = float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(ref, rel=1e-8, abs=1e-9)
    assert fid_from_features(a, b)["fid"] == pytest.approx(ref, rel=1e-8, abs=1e-9)


def test_frechet_distance_closed_form_1d():
    # W2² between N(m1, s1²) and N(m2, s2²) is (m1 − m2)² + (s1 − s2)².
    value = frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([-2.0]),
                             np.array([[0.25]]))
    assert value == pytest.approx(9.0 + (2.0 - 0.5) ** 2, rel=1e-12)


def test_fid_identical_sets_is_zero_and_singular_covariances_are_stable():
    a = torch.from_numpy(rng().normal(size=(300, 20)))
    assert fid_from_features(a, a)["fid"] == pytest.approx(0.0, abs=1e-9)
    # Rank-deficient covariances (features living in a 3-D subspace): still finite and ≥ 0.
    low = rng(1).normal(size=(300, 3)) @ rng(2).normal(size=(3, 20))
    mu, s = low.mean(0), np.cov(low, rowvar=False)
    d = frechet_distance(mu, s, mu, s)
    assert 0.0 <= d < 1e-6


def test_fid_too_few_samples_names_the_option():
    a = rng().normal(size=(10, 16))
    with pytest.raises(ConfigError, match="--num"):
        fid_from_features(a, rng(1).normal(size=(100, 16)))


# ----------------------------------------------------------------------------- KID


def _kid_reference(a, b, subset_size, num_subsets, seed):
    """Independent KID: sklearn's polynomial kernel, explicit off-diagonal masks."""
    state = np.random.RandomState(seed)
    d = a.shape[1]
    m = subset_size
    off = ~np.eye(m, dtype=bool)
    vals = []
    for _ in range(num_subsets):
        x = a[state.choice(a.shape[0], m, replace=False)]
        y = b[state.choice(b.shape[0], m, replace=False)]
        kxx = polynomial_kernel(x, x, degree=3, gamma=1.0 / d, coef0=1)
        kyy = polynomial_kernel(y, y, degree=3, gamma=1.0 / d, coef0=1)
        kxy = polynomial_kernel(x, y, degree=3, gamma=1.0 / d, coef0=1)
        vals.append(kxx[off].mean() + kyy[off].mean() - 2 * kxy.mean())
    return np.mean(vals), np.std(vals)


def test_kid_matches_sklearn_reference():
    a = rng(0).normal(size=(300, 8))
    b = rng(1).normal(size=(250, 8)) * 1.3 + 0.2
    ours = kid_from_features(a, b, subset_size=100, num_subsets=7, seed=3)
    mean, std = _kid_reference(a, b, 100, 7, 3)
    assert ours["kid_mean"] == pytest.approx(mean, rel=1e-10)
    assert ours["kid_std"] == pytest.approx(std, rel=1e-10)


def test_kid_same_distribution_near_zero_and_shift_positive():
    a = rng(0).normal(size=(2000, 16))
    b = rng(1).normal(size=(2000, 16))
    same = kid_from_features(a, b, subset_size=500, num_subsets=20)
    shifted = kid_from_features(a, b + 0.5, subset_size=500, num_subsets=20)
    assert abs(same["kid_mean"]) < 3 * same["kid_std"] + 1e-3
    assert shifted["kid_mean"] > 10 * max(same["kid_std"], 1e-4)


def test_kid_subset_too_large_names_the_option():
    with pytest.raises(ConfigError, match="--kid-subset-size"):
        kid_from_features(rng().normal(size=(50, 4)), rng(1).normal(size=(500, 4)),
                          subset_size=100)


# ----------------------------------------------------------------------------- PRDC


@pytest.mark.parametrize("n_real,n_fake,dim,k,chunk",
                         [(500, 600, 16, 5, 77), (300, 200, 3, 3, 1000), (400, 400, 64, 10, 64)])
def test_prdc_matches_reference_package(n_real, n_fake, dim, k, chunk):
    prdc_ref = pytest.importorskip("prdc")
    r = rng(n_real + dim)
    real = r.normal(size=(n_real, dim)).astype(np.float32)
    fake = (r.normal(size=(n_fake, dim)) * 1.2 + 0.3).astype(np.float32)
    ref = prdc_ref.compute_prdc(real, fake, k)
    ours = prdc(torch.from_numpy(real), torch.from_numpy(fake), k=k, chunk_size=chunk)
    for key in ("precision", "recall", "density", "coverage"):
        assert ours[key] == pytest.approx(float(ref[key]), abs=1e-12), key


def test_prdc_known_cases():
    x = torch.from_numpy(rng().normal(size=(400, 8)))
    same = prdc(x, x, k=5)
    # Identical sets: every point lies in its own ball (distance 0 < radius).
    assert same["precision"] == 1.0 and same["recall"] == 1.0 and same["coverage"] == 1.0
    far = prdc(x, x + 1000.0, k=5)
    assert far == {**far, "precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}


def test_prdc_too_small_names_the_option():
    with pytest.raises(ConfigError, match="--prdc-k"):
        prdc(rng().normal(size=(5, 3)), rng(1).normal(size=(50, 3)), k=5)


# ----------------------------------------------------------------------------- Parzen


def _parzen_reference(samples, points, sigma):
    d2 = ((points[:, None, :] - samples[None, :, :]) ** 2).sum(-1)
    dim = samples.shape[1]
    return (scipy.special.logsumexp(-d2 / (2 * sigma**2), axis=1) - np.log(len(samples))
            - 0.5 * dim * np.log(2 * np.pi * sigma**2))


def test_parzen_matches_logsumexp_reference_and_selects_on_validation():
    r = rng(0)
    s, v, t = r.normal(size=(300, 6)), r.normal(size=(80, 6)), r.normal(size=(90, 6))
    sigmas = [0.2, 0.4, 0.7, 1.0, 1.5]
    res = parzen_log_likelihood(s, v, t, sigmas=sigmas, batch_size=17)
    val_means = [_parzen_reference(s, v, sg).mean() for sg in sigmas]
    np.testing.assert_allclose(res["val_mean_per_sigma"], val_means, rtol=1e-10)
    best = sigmas[int(np.argmax(val_means))]
    ll = _parzen_reference(s, t, best)
    assert res["sigma"] == best
    assert res["mean"] == pytest.approx(ll.mean(), rel=1e-10)
    assert res["std_err"] == pytest.approx(ll.std(ddof=1) / math.sqrt(len(t)), rel=1e-8)
    assert (res["num_samples"], res["num_test"], res["num_val"], res["dim"]) == (300, 90, 80, 6)


def test_parzen_single_centre_is_a_gaussian_density():
    mu = np.array([[0.5, -1.0, 2.0]])
    t = rng(1).normal(size=(50, 3))
    res = parzen_log_likelihood(mu, None, t, sigmas=0.7)
    expected = scipy.stats.multivariate_normal(mu[0], 0.49 * np.eye(3)).logpdf(t).mean()
    assert res["mean"] == pytest.approx(expected, rel=1e-12)


def test_parzen_large_sample_limit():
    # KDE of N(0, I) samples with bandwidth σ tends to N(0, (1 + σ²) I), whose expected
    # log-density under N(0, I) is −D/2·log(2π(1+σ²)) − D/(2(1+σ²)).
    r = rng(2)
    dim, sigma = 2, 0.5
    res = parzen_log_likelihood(r.normal(size=(20000, dim)), None, r.normal(size=(4000, dim)),
                                sigmas=sigma)
    v = 1 + sigma**2
    expected = -0.5 * dim * math.log(2 * math.pi * v) - dim / (2 * v)
    assert res["mean"] == pytest.approx(expected, abs=4 * res["std_err"] + 0.01)


def test_parzen_is_stable_for_tiny_bandwidth_far_points():
    # exp(-d²/2σ²) underflows to 0 in float64 here; logsumexp keeps the value finite and exact.
    s = np.zeros((3, 2))
    t = np.full((1, 2), 10.0)
    res = parzen_log_likelihood(s, None, t, sigmas=0.01)
    expected = -200.0 / (2 * 1e-4) - math.log(2 * math.pi * 1e-4)
    assert res["mean"] == pytest.approx(expected, rel=1e-12)


def test_parzen_flattens_images_and_checks_input():
    x = torch.rand(20, 1, 4, 4)
    res = parzen_log_likelihood(x, x[:5], x[5:], sigmas=[0.1, 0.2])
    assert res["dim"] == 16 and math.isfinite(res["mean"])
    with pytest.raises(ShapeError):
        parzen_log_likelihood(x, None, torch.rand(5, 15), sigmas=0.1)
    with pytest.raises(ConfigError):
        parzen_log_likelihood(x, None, x, sigmas=[0.1, 0.2])


# ----------------------------------------------------------------------------- modes


def test_mixture_modes_on_true_mixtures():
    from imle.data.toy import DATASETS, mixture

    for name, k in (("ring8", 8), ("grid25", 25)):
        split = DATASETS[name]("val", None, False)
        centers, std = mixture(name)
        res = mixture_modes(split.x, centers, std)
        assert res["modes"] == k and res["num_modes"] == k
        # P(|z| < 3) for a 2-D standard normal is 1 − exp(−9/2) = 0.98889.
        assert res["high_quality_frac"] == pytest.approx(1 - math.exp(-4.5), abs=0.004)
        assert res["kl"] < 0.01


def test_mixture_modes_collapsed_generator_has_one_mode():
    from imle.data.toy import mixture

    centers, std = mixture("ring8")
    collapsed = centers[3].repeat(1000, 1) + 0.001 * torch.randn(1000, 2, dtype=torch.float64)
    res = mixture_modes(collapsed, centers, std)
    assert res["modes"] == 1 and res["high_quality_frac"] == 1.0
    assert res["kl"] == pytest.approx(math.log(8))
    far = mixture_modes(torch.full((10, 2), 50.0), centers, std)
    assert far["modes"] == 0 and far["high_quality_frac"] == 0.0 and math.isnan(far["kl"])


def test_mode_histogram_kl_known_answers():
    uniform = torch.arange(1000).repeat(26)
    res = modes_from_labels(uniform, 1000)
    assert res["modes"] == 1000 and res["kl"] == pytest.approx(0.0, abs=1e-12)
    collapsed = modes_from_labels(torch.full((26000,), 7), 1000)
    assert collapsed["modes"] == 1 and collapsed["kl"] == pytest.approx(math.log(1000))
    p = np.array([3.0, 1.0, 0.0, 0.0])
    q = p / p.sum()
    assert histogram_kl_to_uniform(p) == pytest.approx(
        float(scipy.stats.entropy(q, np.full(4, 0.25))))


class _MeanDigitExtractor:
    """Stub classifier: predicts digit round(9 · mean intensity) of a 1-channel image."""

    def logits(self, x):
        d = (x.mean((1, 2, 3)) * 9).round().long()
        return torch.nn.functional.one_hot(d, 10).float()


def test_stacked_mnist_modes_channel_order():
    digits = torch.tensor([[1, 2, 3], [9, 0, 4], [1, 2, 3]])
    x = (digits.float() / 9)[:, :, None, None].expand(3, 3, 28, 28)
    res = stacked_mnist_modes(x, _MeanDigitExtractor())
    assert res["modes"] == 2 and res["num_modes"] == 1000
    with pytest.raises(ShapeError):
        stacked_mnist_modes(torch.rand(2, 1, 28, 28), _MeanDigitExtractor())


# ----------------------------------------------------------------------------- memorisation


def test_memorization_copying_vs_fresh_samples():
    r = rng(0)
    train = torch.from_numpy(r.normal(size=(3000, 10))).float()
    test = torch.from_numpy(r.normal(size=(1000, 10))).float()
    copies = memorization(train[:500], train, test)
    assert copies["ratio"] == pytest.approx(0.0, abs=1e-2)
    assert copies["near_duplicate_frac"] == 1.0
    fresh = memorization(torch.from_numpy(r.normal(size=(1000, 10))).float(), train, test)
    assert 0.9 < fresh["ratio"] < 1.1
    assert fresh["near_duplicate_frac"] < 0.04
    assert fresh["test_near_duplicate_frac"] == pytest.approx(0.01, abs=0.002)
    # Brute-force check of the nearest-neighbour distances.
    d = torch.cdist(test.double(), train.double()).min(1).values
    assert fresh["test_nn_median"] == pytest.approx(float(d.median()), rel=1e-4)


# ----------------------------------------------------------------------------- extractors


def test_shipped_weights_hash_matches_record():
    for name in ("mnist-cnn", "fashion-mnist-cnn"):
        path = WEIGHTS_DIR / f"{name}.safetensors"
        record = json.loads(path.with_suffix(".json").read_text())
        assert sha256_file(path) == record["sha256"]
        assert path.stat().st_size < 2_000_000
        ext = load_feature_extractor(name)
        assert ext.sha256 == record["sha256"] and ext.num_features == 128


@pytest.mark.parametrize("name,data,threshold", [("mnist-cnn", "mnist", 0.99),
                                                 ("fashion-mnist-cnn", "fashion-mnist", 0.90)])
def test_shipped_classifier_accuracy(data_dir, name, data, threshold):
    from imle.data import load_dataset

    test = load_dataset(data, "test", data_dir)
    ext = load_feature_extractor(name)
    idx = torch.randperm(len(test), generator=torch.Generator().manual_seed(0))[:3000]
    acc = (ext.logits(test.x[idx]).argmax(1) == test.labels[idx]).double().mean().item()
    assert acc >= threshold
    feats = ext(test.x[idx[:10]])
    assert feats.shape == (10, 128) and feats.dtype == torch.float32


def test_extractor_from_local_path_and_tamper_detection(tmp_path):
    torch.manual_seed(0)
    model = SmallCNN(width=4, num_features=16).eval()  # tiny, randomly initialised
    path = tmp_path / "tiny.safetensors"
    digest = save_classifier(model, path, {"note": "random init"})
    ext = load_feature_extractor(path)
    assert ext.sha256 == digest == sha256_file(path) and ext.num_features == 16
    x = torch.rand(7, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(ext(x), model.features(x))
        torch.testing.assert_close(ext.logits(x), model(x))
    with pytest.raises(ShapeError):
        ext(torch.rand(2, 3, 28, 28))
    path.write_bytes(path.read_bytes() + b" ")
    with pytest.raises(DataError, match="sha256"):
        load_feature_extractor(path)
    with pytest.raises(ConfigError):
        load_feature_extractor("no-such-extractor")


def test_inception_extractor_requires_fidelity_or_local_weights(tmp_path):
    try:
        import torch_fidelity  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match=r"imle\[fidelity\]"):
            load_feature_extractor("inception", inception_weights=tmp_path / "w.pth")
        pytest.skip("torch-fidelity is not installed; only its absence was checked")
    with pytest.raises(ConfigError, match="--inception-weights"):
        load_feature_extractor("inception", inception_weights=None)
    with pytest.raises(ConfigError, match="not found"):
        load_feature_extractor("inception", inception_weights=tmp_path / "missing.pth")


def test_train_classifier_is_deterministic():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(96, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (96,), generator=g)
    a = train_classifier(x, y, seed=5, epochs=1, batch_size=32, log=None).state_dict()
    b = train_classifier(x, y, seed=5, epochs=1, batch_size=32, log=None).state_dict()
    c = train_classifier(x, y, seed=6, epochs=1, batch_size=32, log=None).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


# ----------------------------------------------------------------------------- evaluate


def test_evaluate_on_toy_mixture_with_floors():
    from imle.data.toy import DATASETS

    samples = DATASETS["ring8"]("val", None, False).x[:2000]
    res = evaluate(samples, "ring8", ["fid", "kid", "prdc", "modes", "parzen"],
                   num_reference=2000, kid_subset_size=500, kid_num_subsets=10,
                   parzen_sigmas=[0.01, 0.02, 0.05])
    m, s = res["metrics"], res["settings"]
    assert m["modes"] == 8 and m["modes_real_floor"] == 8
    assert m["fid"] < 0.01 and m["fid_real_floor"] < 0.01
    assert m["precision"] > 0.9 and m["coverage"] > 0.9
    assert s["feature_extractor"]["name"] == "identity" and s["num_samples"] == 2000
    assert s["parzen"]["sigma"] in (0.01, 0.02, 0.05)
    collapsed = samples[:1].repeat(2000, 1) + 0.01 * torch.randn(2000, 2)
    m2 = evaluate(collapsed, "ring8", ["modes", "prdc"], num_reference=2000)["metrics"]
    assert m2["modes"] == 1 and m2["recall"] < 0.2 and m2["coverage"] < 0.2
    table = format_table(res)
    assert "FID" in table and "coverage" in table


def test_evaluate_rejects_too_few_samples_early():
    x = torch.randn(50, 2)
    with pytest.raises(ConfigError, match="--kid-subset-size"):
        evaluate(x, "ring8", ["kid"])
    with pytest.raises(ConfigError, match="--prdc-k"):
        evaluate(x[:4], "ring8", ["prdc"])
    with pytest.raises(ConfigError, match="--metrics"):
        evaluate(x, "ring8", ["fid", "bogus"])
    with pytest.raises(ShapeError):
        evaluate(torch.rand(50, 1, 28, 28), "ring8", ["fid"])
    x[3, 0], x[7, 1] = float("nan"), float("inf")  # a diverged sampler's output
    with pytest.raises(DataError, match="2 of 50 samples have NaN or infinite values.*--nfe"):
        evaluate(x, "ring8", ["fid"])


def test_evaluate_mnist_real_images(data_dir):
    from imle.data import load_dataset

    val = load_dataset("mnist", "val", data_dir).x[:2000]
    res = evaluate(val, "mnist", ["fid", "kid", "prdc", "modes"], data_dir=data_dir,
                   num_reference=2000, kid_subset_size=500, kid_num_subsets=10)
    m, s = res["metrics"], res["settings"]
    # Real held-out digits are as good as the test-split floor.
    assert m["fid"] < 3 * m["fid_real_floor"] + 0.5
    assert m["modes"] == 10 and m["modes_kl"] < 0.01
    assert abs(m["precision"] - m["precision_real_floor"]) < 0.05
    record = json.loads((WEIGHTS_DIR / "mnist-cnn.json").read_text())
    assert s["feature_extractor"]["sha256"] == record["sha256"]
    with pytest.raises(ConfigError, match="--num"):
        evaluate(val[:100], "mnist", ["fid"], data_dir=data_dir)


def test_evaluate_disk_cache_gives_identical_results(tmp_path):
    from imle.data.toy import DATASETS
    from imle.metrics import clear_cache

    samples = DATASETS["ring8"]("val", None, False).x[:600]
    kw = dict(num_reference=600, kid_subset_size=300, kid_num_subsets=3,
              parzen_sigmas=[0.02, 0.05], cache_dir=tmp_path / "c")
    first = evaluate(samples, "ring8", ["parzen", "memorization", "kid"], **kw)
    assert any((tmp_path / "c").glob("parzen-floor-*.pt"))
    clear_cache()
    second = evaluate(samples, "ring8", ["parzen", "memorization", "kid"], **kw)
    assert first["metrics"] == second["metrics"]


# ----------------------------------------------------------------------------- data sets


def test_toy_mixtures_are_deterministic_and_match_their_spec():
    from imle.data import load_dataset
    from imle.data.toy import centers, std

    a = load_dataset("ring8", "train", num=5000)
    b = load_dataset("ring8", "train", num=5000)
    c = load_dataset("ring8", "test", num=5000)
    assert a.x.shape == (5000, 2) and a.x.dtype == torch.float32
    assert torch.equal(a.x, b.x) and not torch.equal(a.x[:100], c.x[:100])
    assert not torch.equal(a.x, load_dataset("ring8", "train", num=5000, seed=1).x)
    radii = centers["ring8"].norm(dim=1)
    torch.testing.assert_close(radii, torch.full((8,), 2.0, dtype=torch.float64))
    resid = a.x.double() - centers["ring8"][a.labels]
    assert resid.std().item() == pytest.approx(std["ring8"], rel=0.05)
    g = load_dataset("grid25", "val")
    assert len(g) == 10_000 and set(centers["grid25"].flatten().tolist()) == {-4, -2, 0, 2, 4}
    resid = g.x.double() - centers["grid25"][g.labels]
    assert resid.std().item() == pytest.approx(std["grid25"], rel=0.05)
    with pytest.raises(DataError):
        load_dataset("ring8", "bogus")


def test_stacked_mnist_data_and_modes_with_shipped_classifier(data_dir):
    from imle.data import load_dataset

    a = load_dataset("stacked-mnist", "test", data_dir, num=2000)
    b = load_dataset("stacked-mnist", "test", data_dir, num=2000)
    assert a.x.shape == (2000, 3, 28, 28) and torch.equal(a.x, b.x)
    assert int(a.labels.max()) < 1000 and len(a.labels.unique()) > 800
    from imle.metrics import stacked_mnist_labels

    ext = load_feature_extractor("mnist-cnn")
    pred = stacked_mnist_labels(a.x, ext)
    # Three independent ≥ 99% digit reads: ≥ 97% of the 1,000-way labels are right.
    assert (pred == a.labels).double().mean().item() >= 0.97
    res = stacked_mnist_modes(a.x, ext)
    assert abs(res["modes"] - len(a.labels.unique())) <= 30
    one_digit = a.x[:1].repeat(500, 1, 1, 1)
    assert stacked_mnist_modes(one_digit, ext)["modes"] == 1
