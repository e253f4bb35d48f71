"""Metrics on cases with known answers, the clean-fid hook, and the Inception path with a stand-in model."""

import numpy as np
import pytest
import torch

from pagoda import evaluate, metrics


def test_frechet_distance_of_identical_sets_is_zero():
    rng = np.random.default_rng(0)
    f = rng.normal(size=(2000, 8))
    s = metrics.statistics(f)
    assert metrics.frechet_distance(s, s) == pytest.approx(0, abs=1e-8)


def test_frechet_distance_of_shifted_gaussians_is_closed_form():
    # N(mu1, S1) vs N(mu2, S2) with diagonal covariances: |mu1 - mu2|^2 + sum (sqrt(s1) - sqrt(s2))^2.
    mu1, mu2 = np.zeros(4), np.array([1.0, -2.0, 0.5, 0.0])
    s1, s2 = np.diag([1.0, 2.0, 0.5, 1.0]), np.diag([4.0, 2.0, 2.0, 0.25])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(np.diag(s1)) - np.sqrt(np.diag(s2))) ** 2)
    assert metrics.frechet_distance((mu1, s1), (mu2, s2)) == pytest.approx(expected, rel=1e-8)
    # And from samples: a shift of 3 in every one of 5 dimensions gives about 45.
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(20000, 5)), rng.normal(size=(20000, 5)) + 3
    assert metrics.frechet_distance(metrics.statistics(a), metrics.statistics(b)) == pytest.approx(45, rel=0.02)


def test_frechet_distance_agrees_with_clean_fid():
    from cleanfid.fid import frechet_distance as clean
    rng = np.random.default_rng(2)
    a = rng.normal(size=(500, 40)) @ rng.normal(size=(40, 40))
    b = rng.normal(size=(500, 40)) @ rng.normal(size=(40, 40)) + 0.3
    sa, sb = metrics.statistics(a), metrics.statistics(b)
    assert metrics.frechet_distance(sa, sb) == pytest.approx(clean(sa[0], sa[1], sb[0], sb[1]), rel=1e-7)
    # Rank-deficient covariances (fewer samples than dimensions), as with small evaluation sets.
    sa, sb = metrics.statistics(a[:20]), metrics.statistics(b[:20])
    assert metrics.frechet_distance(sa, sb) == pytest.approx(clean(sa[0], sa[1], sb[0], sb[1]), rel=1e-4)


def test_precision_recall_on_separated_clusters():
    rng = np.random.default_rng(0)
    real = np.concatenate([rng.normal(0, 0.1, (200, 2)), rng.normal((10, 0), 0.1, (200, 2))])
    only_first_mode = rng.normal(0, 0.1, (400, 2))          # precise but misses half the data
    elsewhere = rng.normal((0, 10), 0.1, (400, 2))           # neither precise nor covering
    same = np.concatenate([rng.normal(0, 0.1, (200, 2)), rng.normal((10, 0), 0.1, (200, 2))])
    pr = metrics.precision_recall(real, only_first_mode, k=3)
    assert pr["precision"] > 0.9 and 0.3 < pr["recall"] < 0.7
    pr = metrics.precision_recall(real, elsewhere, k=3)
    assert pr["precision"] < 0.05 and pr["recall"] < 0.05
    pr = metrics.precision_recall(real, same, k=3)
    assert pr["precision"] > 0.9 and pr["recall"] > 0.9 and pr["coverage"] > 0.9


def test_kernel_distance_is_zero_for_one_distribution_and_positive_for_a_shift():
    rng = np.random.default_rng(0)
    a, a2 = rng.normal(size=(1500, 16)), rng.normal(size=(1500, 16))
    shifted = rng.normal(size=(1500, 16)) + 0.5
    same, new_sample = metrics.kernel_distance(a, a), metrics.kernel_distance(a, a2)
    far = metrics.kernel_distance(a, shifted)
    # Unbiased: two samples of one distribution give ~0 (either sign), a shift gives a clearly positive value.
    assert abs(same) < 0.02 * far and abs(new_sample) < 0.02 * far and far > 0.1
    assert metrics.kernel_distance(a, shifted, seed=3) == metrics.kernel_distance(a, shifted, seed=3)
    state = np.random.get_state()[1].copy()
    metrics.kernel_distance(a[:50], shifted[:50], seed=1)  # subsets of 50 when only 50 exist
    assert (np.random.get_state()[1] == state).all()  # the caller's global NumPy state is untouched


def test_kernel_distance_matches_the_polynomial_kernel_mmd_by_hand():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(40, 3)), rng.normal(size=(40, 3)) + 1
    k = lambda a, b: (a @ b.T / 3 + 1) ** 3  # noqa: E731  KID's cubic kernel
    m = 40
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    mmd = ((kxx.sum() - np.trace(kxx)) + (kyy.sum() - np.trace(kyy))) / (m * (m - 1)) - 2 * kxy.mean()
    # With all 40 points every subset is the whole set (in some order), so each of the 100 terms is exact.
    assert metrics.kernel_distance(x, y, num_subsets=5) == pytest.approx(mmd, rel=1e-9)


class CountingExtractor(torch.nn.Module):
    """A feature extractor whose features are the per-channel mean and max of the image (in [0, 255])."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x):
        self.seen.append(tuple(x.shape))
        return torch.cat([x.mean(dim=(2, 3)), x.amax(dim=(2, 3))], dim=1)


def test_clean_fid_hook_sees_every_image_once_in_order():
    images = np.stack([np.full((1, 8, 8), i, dtype=np.uint8) for i in range(7)])
    ext = CountingExtractor()
    f = metrics.extract_features(images, ext, batch_size=3)
    assert f.shape == (7, 6)
    assert f[:, 0].tolist() == list(range(7))  # order kept, last batch's wrap-around truncated
    assert ext.seen[0] == (3, 3, 8, 8)  # grey repeated to 3 channels, no resizing


def test_effnet_features_separate_different_images():
    ext = metrics.EffNetFeatures(input_size=32)
    flat = np.zeros((4, 1, 8, 8), dtype=np.uint8)
    noisy = (np.random.default_rng(0).random((4, 1, 8, 8)) * 255).astype(np.uint8)
    fa, fb = metrics.extract_features(flat, ext), metrics.extract_features(noisy, ext)
    assert fa.shape == (4, 1280)
    assert np.abs(fa - fb).mean() > 10 * np.abs(fa[0] - fa[1]).mean()


class StandInInception(torch.nn.Module):
    """Same interface as clean-fid's Inception torchscript: `.layers` maps 299 px inputs to 2048 features."""

    def __init__(self):
        super().__init__()
        self.layers = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten(),
                                          torch.nn.Linear(48, 2048))

    def forward(self, x, return_features: bool = False):
        return self.layers(x)


@pytest.fixture
def inception_dir(tmp_path):
    torch.manual_seed(0)
    torch.jit.script(StandInInception()).save(str(tmp_path / metrics.INCEPTION_FILE))
    return tmp_path


def test_inception_fid_is_empty_without_the_weight_file(tmp_path):
    assert metrics.inception_path(tmp_path) is None
    assert metrics.inception_features(np.zeros((2, 1, 8, 8), np.uint8), inception_dir=tmp_path) is None


@pytest.fixture(scope="module")
def tiny_judge(tiny_data, tmp_path_factory):
    from pagoda import judge
    out = tmp_path_factory.mktemp("judge")
    judge.train_judge(data_dir=tiny_data, resolution=8, run_dir=out, out_path=out / "judge.pt", steps=5, batch_size=8,
                      width=4, feature_dim=8, progress=False, device="cpu")
    return out / "judge.pt"


SWD_KW = dict(swd_min_resolution=8, swd_descriptors_per_image=4, swd_projections=16)


def test_inception_path_runs_with_a_stand_in_model(inception_dir, tiny_data, tiny_judge, tmp_path):
    from pagoda.data import load_dataset
    from pagoda.judge import load_judge
    assert metrics.inception_path(inception_dir) is not None
    feats = metrics.inception_features(np.zeros((3, 1, 8, 8), np.uint8), inception_dir=inception_dir)
    assert feats.shape == (3, 2048)
    ref = tmp_path / "ref.npz"
    evaluate.reference_statistics(data_dir=tiny_data, resolution=8, out_path=ref, judge_path=tiny_judge, n_images=30,
                                  swd_images=20, feature_size=32, inception_dir=inception_dir)
    reference = evaluate.load_reference(ref)
    assert "inception_mu" in reference and reference["effnet_features"].shape == (30, 1280)
    assert reference["judge_features"].shape == (30, 8) and reference["swd_images"].shape == (20, 1, 8, 8)
    images, _, _ = load_dataset(tiny_data, "train", 8)
    net = load_judge(tiny_judge)[0]
    same = evaluate.score(images[:30], reference, judge_net=net, feature_size=32, inception_dir=inception_dir, **SWD_KW)
    other = evaluate.score(255 - images[:30], reference, judge_net=net, feature_size=32, inception_dir=inception_dir,
                           **SWD_KW)
    assert same["fid_inception"] is not None and other["fid_inception"] > same["fid_inception"]
    for key in ("fd_effnet", "fd_judge", "kid_judge"):
        assert other[key] > same[key], key
    assert same["fd_judge"] < 1e-3 * other["fd_judge"]  # the reference's own images
    assert other["recall_judge"] < same["recall_judge"] == 1.0
    without = evaluate.score(images[:30], reference, judge_net=net, feature_size=32, inception_dir=tmp_path / "none",
                             **SWD_KW)
    assert without["fid_inception"] is None and without["fd_judge"] == same["fd_judge"]
