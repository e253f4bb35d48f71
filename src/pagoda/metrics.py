"""Sample-quality metrics, computed through clean-fid's feature-extractor hook.

- fd_effnet:     Frechet distance between Gaussian fits of pooled EfficientNet-lite0 features (this
                 project's offline feature network, at a stated input size). Not "FID": FID means
                 Inception-v3 features. Features come through clean-fid's extractor hook; the distance
                 is computed here (`frechet_distance`), checked against clean-fid's.
- fid_inception: clean-fid's standard FID (Inception-v3 torchscript, clean resizing to 299), only when
                 clean-fid's weight file is on the machine; otherwise None, never estimated.
- precision, recall (and density, coverage): improved precision/recall with k = 3 nearest neighbours
                 on the same EfficientNet features, from the `prdc` package.
- kernel_distance: KID (Binkowski et al. 2018), the unbiased MMD^2 with the cubic polynomial kernel,
                 by clean-fid, on any features (the judges' in this study).
The EfficientNet space is the one the decoder's loss and discriminator train against; the study's claims
rest on the judge networks (`pagoda.judge`) and the pixel-space SWD (`pagoda.swd`).
"""

import contextlib
import io
import pathlib

import numpy as np
import torch
from cleanfid import fid as cleanfid

from .features import EfficientNetLite0

INCEPTION_FILE = "inception-2015-12-05.pt"
CLEANFID_INCEPTION_DIR = "/tmp"  # where clean-fid looks for (and would download) the Inception weights


class EffNetFeatures(torch.nn.Module):
    """clean-fid custom extractor: images in [0, 255] (N, 3, H, W) -> pooled EfficientNet-lite0 features."""

    def __init__(self, input_size=64):
        super().__init__()
        self.net = EfficientNetLite0(input_size)

    @torch.no_grad()
    def forward(self, x):
        return self.net.pooled(x.float() / 127.5 - 1)


def _as_generator(images):
    """A clean-fid 'generator' that returns consecutive batches of `images` (uint8 N, C, H, W) in [0, 255]."""
    images = torch.as_tensor(images)
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    state = {"next": 0}

    def G(z):
        n = z.shape[0]
        idx = (torch.arange(n) + state["next"]) % len(images)  # the last batch wraps; clean-fid truncates
        state["next"] += n
        return images[idx].float()
    return G


def extract_features(images, extractor, *, batch_size=250, device="cpu", resize=None):
    """Features of uint8 images (N, C, H, W) through clean-fid's `get_model_features` hook.

    `resize` is clean-fid's per-image resizer (None: identity, the extractor resizes itself; "clean":
    clean-fid's PIL-bicubic resize to 299 for Inception).
    """
    fn_resize = (lambda x: x) if resize is None else cleanfid.build_resizer(resize)
    return cleanfid.get_model_features(_as_generator(images), extractor, mode="clean", z_dim=1,
                                       num_gen=len(images), batch_size=batch_size, device=torch.device(device),
                                       verbose=False, custom_fn_resize=fn_resize).astype(np.float64)


def statistics(features):
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(stats_a, stats_b):
    """||mu_a - mu_b||^2 + Tr(S_a) + Tr(S_b) - 2 Tr((S_a S_b)^(1/2)) between two Gaussian fits.

    Tr((S_a S_b)^(1/2)) is the sum of square roots of the eigenvalues of the symmetric PSD matrix
    S_a^(1/2) S_b S_a^(1/2) (same spectrum as S_a S_b). Two symmetric eigendecompositions are exact and
    ~5x faster than clean-fid's scipy.linalg.sqrtm of the non-symmetric product, whose `disp` argument
    SciPy 1.18 removes; the two agree to ~1e-9 relative (tests/test_metrics.py).
    """
    (mu_a, s_a), (mu_b, s_b) = stats_a, stats_b
    w, v = np.linalg.eigh(s_a)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    lam = np.linalg.eigvalsh(root_a @ s_b @ root_a)
    tr_covmean = np.sqrt(np.clip(lam, 0, None)).sum()
    diff = mu_a - mu_b
    return float(diff @ diff + np.trace(s_a) + np.trace(s_b) - 2 * tr_covmean)


def kernel_distance(features_a, features_b, *, num_subsets=100, max_subset_size=1000, seed=0):
    """clean-fid's unbiased KID: mean over `num_subsets` random subsets of min(n_a, n_b, max_subset_size)
    features. clean-fid draws the subsets from NumPy's global generator: it is seeded here and restored
    after, so the value is reproducible and no caller's random state changes."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        return cleanfid.kernel_distance(np.asarray(features_a, np.float64), np.asarray(features_b, np.float64),
                                        num_subsets=num_subsets, max_subset_size=max_subset_size)
    finally:
        np.random.set_state(state)


def precision_recall(real_features, fake_features, k=3):
    """Improved precision/recall (Kynkaanniemi et al. 2019) with density and coverage, via `prdc`."""
    import prdc
    with contextlib.redirect_stdout(io.StringIO()):  # prdc prints the set sizes on every call
        out = prdc.compute_prdc(real_features=real_features, fake_features=fake_features, nearest_k=k)
    return {key: float(v) for key, v in out.items()}


# ----------------------------------------------------------------------------
# Inception FID, only where the weight file is present.

def inception_path(inception_dir=None):
    """The Inception weight file clean-fid would use, or None if it is not on this machine."""
    path = pathlib.Path(inception_dir or CLEANFID_INCEPTION_DIR) / INCEPTION_FILE
    return path if path.exists() else None


def inception_extractor(inception_dir=None, device="cpu"):
    """clean-fid's Inception-v3 (torchscript) from a local file, never downloading; None if absent."""
    path = inception_path(inception_dir)
    if path is None:
        return None
    from cleanfid.inception_torchscript import InceptionV3W
    model = InceptionV3W(str(path.parent), download=False, resize_inside=False).to(device).eval()
    return lambda x: model(x)


def inception_features(images, *, inception_dir=None, batch_size=100, device="cpu"):
    """Inception pool features with clean resizing, or None when the weight file is not available."""
    model = inception_extractor(inception_dir, device)
    if model is None:
        return None
    return extract_features(images, model, batch_size=batch_size, device=device, resize="clean")
