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


def test_extract_features_sees_every_image_once_in_order():
    images = np.stack([np.full((1, 8, 8), i, dtype=np.uint8) for i in range(7)])
    ext = CountingExtractor()
    f = metrics.extract_features(images, ext, batch_size=3)
    assert f.shape == (7, 6) and f.dtype == np.float64
    assert f[:, 0].tolist() == list(range(7))  # order kept, the last batch short
    assert ext.seen == [(3, 3, 8, 8), (3, 3, 8, 8), (1, 3, 8, 8)]  # grey repeated to 3 channels, no resizing
    rgb = np.arange(24, dtype=np.uint8).reshape(2, 3, 2, 2)  # 3 channels stay as they are
    assert metrics.extract_features(rgb, CountingExtractor())[:, 3:].tolist() == [[3, 7, 11], [15, 19, 23]]


def test_extract_features_equal_clean_fids_loop():
    """The same features as clean-fid's `get_model_features` with the same resizer, for both resize modes."""
    from cleanfid import fid as cleanfid
    images = (np.random.default_rng(0).random((5, 3, 8, 8)) * 255).astype(np.uint8)
    for resize in (None, "clean"):
        fn = (lambda x: x) if resize is None else cleanfid.build_resizer(resize)
        batches = iter(torch.as_tensor(images).float().split(2))
        clean = cleanfid.get_model_features(lambda z: next(batches), CountingExtractor(), z_dim=1, num_gen=4,
                                            batch_size=2, device=torch.device("cpu"), verbose=False,
                                            custom_fn_resize=fn)
        ours = metrics.extract_features(images[:4], CountingExtractor(), batch_size=2, resize=resize)
        np.testing.assert_allclose(ours, clean, rtol=1e-6)


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


# ----------------------------------------------------------------------------
# Exact values on small hand-made inputs.

def test_statistics_are_the_feature_means_and_the_unbiased_covariance():
    f = np.array([[0.0, 1.0], [2.0, 5.0], [4.0, 3.0]])
    mu, cov = metrics.statistics(f)
    # Deviations (-2, -2), (0, 2), (2, 0): sums of products 8, 8 and 4, divided by n - 1 = 2.
    assert mu.tolist() == [2.0, 3.0] and cov.tolist() == [[4.0, 2.0], [2.0, 4.0]]


def test_frechet_distance_of_correlated_gaussians_by_hand():
    # S_a = [[2, 1], [1, 2]] (eigenvalues 3, 1) and S_b = I: S_a S_b = S_a, Tr(S_a^(1/2)) = sqrt(3) + 1, so
    # FD = |(1, 2)|^2 + 4 + 2 - 2 (sqrt(3) + 1) = 9 - 2 sqrt(3).
    s_a = np.array([[2.0, 1.0], [1.0, 2.0]])
    fd = metrics.frechet_distance((np.array([1.0, 2.0]), s_a), (np.zeros(2), np.eye(2)))
    assert fd == pytest.approx(9 - 2 * np.sqrt(3), rel=1e-12)
    # Covariances with eigenvalues below 1 and a singular one: S_a = diag(0.25, 0), S_b = diag(0.04, 0.09):
    # Tr((S_a S_b)^(1/2)) = 0.5 * 0.2 = 0.1, FD = 0.25 + 0.13 - 0.2.
    fd = metrics.frechet_distance((np.zeros(2), np.diag([0.25, 0.0])), (np.zeros(2), np.diag([0.04, 0.09])))
    assert fd == pytest.approx(0.18, rel=1e-12)


def prdc_reference(real, fake, k):
    """Precision, recall, density, coverage of 1-D points from their definitions (k-th neighbour radii)."""
    d = np.abs(real[:, None] - fake[None, :])
    real_r = np.sort(np.abs(real[:, None] - real[None, :]), axis=1)[:, k]  # column 0 is the point itself
    fake_r = np.sort(np.abs(fake[:, None] - fake[None, :]), axis=1)[:, k]
    inside = d < real_r[:, None]
    return {"precision": inside.any(0).mean(), "recall": (d < fake_r[None, :]).any(1).mean(),
            "density": inside.sum(0).mean() / k, "coverage": (d.min(1) < real_r).mean()}


def test_precision_recall_matches_the_definitions_with_k_3_by_default(capsys):
    real, fake = np.array([0.0, 1, 2, 3, 10]), np.array([0.5, 2.9, 6, 13, 30])
    out = metrics.precision_recall(real[:, None], fake[:, None])
    # By hand for k = 3: real radii (3, 2, 2, 3, 9); every fake point but 30 lies in a real ball (precision 4/5),
    # the fake balls hold every real point, and the real balls hold 4, 5, 1, 1, 0 fake points (density 11/15).
    assert out == pytest.approx({"precision": 0.8, "recall": 1.0, "density": 11 / 15, "coverage": 1.0}, rel=1e-12)
    assert all(type(v) is float for v in out.values())
    assert capsys.readouterr().out == ""  # prdc's print is swallowed
    for k in (1, 2):
        assert metrics.precision_recall(real[:, None], fake[:, None], k=k) == pytest.approx(
            prdc_reference(real, fake, k), rel=1e-12)


def test_kernel_distance_is_clean_fids_with_100_subsets_of_at_most_1000_seeded_with_0():
    """The same subsets and kernel sums as clean-fid, summed in another order: equal to ~1e-15 relative."""
    from cleanfid.fid import kernel_distance as clean

    def seeded(seed, *args):
        np.random.seed(seed)
        return pytest.approx(clean(*args), rel=1e-10)
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(20, 3)), rng.normal(size=(30, 3)) + 0.5  # subsets of 20 of y's 30: random
    assert metrics.kernel_distance(x, y) == seeded(0, x, y, 100, 1000)
    assert metrics.kernel_distance(x, y, seed=5, num_subsets=7) == seeded(5, x, y, 7, 1000)
    assert metrics.kernel_distance(x, y, max_subset_size=10) == seeded(0, x, y, 100, 10)
    assert metrics.kernel_distance(y, x) == seeded(0, y, x, 100, 1000)  # the smaller set is the second one
    big_x, big_y = rng.normal(size=(1001, 2)), rng.normal(size=(1001, 2))
    assert metrics.kernel_distance(big_x, big_y, num_subsets=2) == seeded(0, big_x, big_y, 2, 1000)
    # float32 features (the judges') are computed in float64.
    x32, y32 = x.astype(np.float32), y.astype(np.float32)
    assert metrics.kernel_distance(x32, y32) == metrics.kernel_distance(x32.astype(np.float64), y32.astype(np.float64))


def test_subset_kernel_sums_by_blocks_of_rows_equal_the_whole_kernel():
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(7, 3)), rng.normal(size=(5, 3))
    in_x, in_y = (rng.random((7, 4)) < 0.5).astype(float), (rng.random((5, 4)) < 0.5).astype(float)
    k = (x @ y.T / 3 + 1) ** 3
    by_hand = [k[in_x[:, j] > 0][:, in_y[:, j] > 0].sum() for j in range(4)]
    for block_elements in (1, 10, 2 ** 22):  # one row, two rows, all rows at a time
        np.testing.assert_allclose(metrics._subset_kernel_sums(x, y, in_x, in_y, block_elements=block_elements),
                                   by_hand, rtol=1e-12)


def test_extract_features_is_silent(capfd):
    metrics.extract_features(np.zeros((3, 1, 4, 4), dtype=np.uint8), CountingExtractor(), batch_size=2)
    assert capfd.readouterr() == ("", "")


def test_effnet_features_default_to_64_pixel_inputs():
    assert metrics.EffNetFeatures().net.input_size == 64


def test_inception_features_normalise_clean_resized_images(inception_dir, tmp_path, monkeypatch):
    """clean-fid's Inception path: PIL-bicubic resize to 299, then (x - 128) / 128 into the network's layers."""
    layers = torch.jit.load(str(inception_dir / metrics.INCEPTION_FILE)).layers
    grey = np.full((2, 1, 8, 8), 64, dtype=np.uint8)  # resizing keeps a constant image constant
    expected = layers(torch.full((1, 3, 299, 299), -0.5))[0].detach().numpy()
    feats = metrics.inception_features(grey, inception_dir=inception_dir)
    assert feats.shape == (2, 2048) and np.allclose(feats, expected[None], rtol=1e-5, atol=1e-5)
    extractor = metrics.inception_extractor(inception_dir)
    direct = extractor(torch.full((1, 3, 299, 299), 64.0)).detach().numpy()
    assert np.allclose(direct, expected[None], rtol=1e-5, atol=1e-5)
    # Without a folder, clean-fid's own download folder is where the weights are looked for.
    monkeypatch.setattr(metrics, "CLEANFID_INCEPTION_DIR", str(inception_dir))
    assert metrics.inception_path() == inception_dir / metrics.INCEPTION_FILE
    assert metrics.inception_path(tmp_path / "elsewhere") is None


def test_inception_is_loaded_without_download_and_run_on_the_requested_device(inception_dir, monkeypatch):
    import cleanfid.inception_torchscript as cleanfid_inception
    made, moved, calls = [], [], []

    class Recorder(torch.nn.Module):  # stands in for clean-fid's InceptionV3W
        def __init__(self, path, download=True, resize_inside=False):
            super().__init__()
            made.append((path, download, resize_inside))

        def to(self, device):
            moved.append(device)
            return self
    monkeypatch.setattr(cleanfid_inception, "InceptionV3W", Recorder)
    monkeypatch.setattr(metrics, "extract_features", lambda images, model, **kw: calls.append((images, kw)) or "feats")
    assert metrics.inception_features("imgs", inception_dir=inception_dir, batch_size=7, device="cuda:1") == "feats"
    assert moved == ["cuda:1"] and calls == [("imgs", {"batch_size": 7, "device": "cuda:1", "resize": "clean"})]
    assert len(made) == 1 and made[0][0] == str(inception_dir) and not made[0][1] and not made[0][2]


def test_extract_features_feeds_the_extractor_on_the_requested_device():
    seen = []

    def extractor(x):  # records where the batch is; "meta" stands in for an accelerator
        seen.append(x.device.type)
        return torch.ones(len(x), 2)
    f = metrics.extract_features(np.zeros((2, 1, 4, 4), dtype=np.uint8), extractor, device="meta")
    assert seen == ["meta"] and f.tolist() == [[1.0, 1.0], [1.0, 1.0]]
