"""The decoder's training step, wired as the paper says: checked on tiny networks against values computed
by hand, with a stub discriminator whose logits are a known function of its input."""

import copy

import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_NET, make_task

from pagoda import decoder, diffaug, edm, encode, loop
from pagoda.data import load_dataset
from pagoda.features import EfficientNetLite0
from pagoda.losses import ReconstructionDistance, adaptive_weight, d_hinge_loss, g_hinge_loss
from pagoda.networks import UNet


class StubD(torch.nn.Module):
    """logits = 10 * mean(x) + b per image, recording every input and output."""

    def __init__(self):
        super().__init__()
        self.b = torch.nn.Parameter(torch.zeros(()))
        self.calls, self.labels, self.trainable = [], [], []

    def trainable_parameters(self):
        return [self.b]

    def forward(self, x, labels=None):
        out = 10 * x.mean(dim=(1, 2, 3)) + self.b
        self.calls.append((x.detach().clone(), out.detach().clone()))
        self.labels.append(labels)
        self.trainable.append(self.b.requires_grad)
        return out


def test_hinge_losses_on_known_logits():
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-3.0, 0.0])
    # D: mean relu(1 - real) + mean relu(1 + fake) = (0 + 0.5) / 2 + (0 + 1) / 2
    assert d_hinge_loss(real, fake).item() == pytest.approx(0.75)
    assert d_hinge_loss(fake, real).item() == pytest.approx((4 + 1) / 2 + (3 + 1.5) / 2)  # the order matters
    assert g_hinge_loss(fake).item() == pytest.approx(1.5)  # G: -mean D(fake)


def test_adaptive_weight_is_read_at_the_last_layer_of_g(tiny_teacher, tiny_data, latents):
    task = make_task(tiny_teacher, tiny_data, latents, gan_weight=0.3)
    by_hand = copy.deepcopy(task)
    # The same randomness as g_step draws, in the same order: L_rec, then L_adv.
    gen, sl = loop.step_generator(0, 0), loop.rank_slice(task.batch_size)
    rec, y, _ = by_hand.reconstruction_loss(gen, sl)
    last = by_hand.G.output_blocks[-1][0].out_layers[-1].weight  # the last ResBlock's last conv (released code)
    g_rec = torch.autograd.grad(rec, last)[0]
    g_adv = torch.autograd.grad(by_hand.adversarial_loss(y, gen, sl), last)[0]
    expected = 0.3 * min(max(g_rec.norm() / (g_adv.norm() + 1e-4), 0.01), 10)
    m = task.g_step(0, loop.step_generator(0, 0))
    assert m["lambda"] == pytest.approx(float(expected), rel=1e-5)
    # A weight read at any other layer, or the constant base weight, is another number.
    first = next(p for p in by_hand.G.parameters() if p.requires_grad)
    at_first = 0.3 * min(max(torch.autograd.grad(by_hand.reconstruction_loss(loop.step_generator(0, 0), sl)[0],
                                                 first)[0].norm() / 1e-4, 0.01), 10)
    assert abs(m["lambda"] - 0.3) > 1e-3 and abs(m["lambda"] - float(at_first)) > 1e-3
    assert adaptive_weight(g_rec, g_adv, weight=0.3).item() == pytest.approx(float(expected), rel=1e-6)


def test_d_step_applies_the_hinge_loss_to_real_and_fake_in_that_order(tiny_teacher, tiny_data, latents):
    images, _, _ = load_dataset(tiny_data, "train", 8)
    white = np.full_like(images, 255)  # real images are white: before and after the shared augmentation,
    task = make_task(tiny_teacher, tiny_data, latents, targets=white)  # brighter than the generator's
    task.D = StubD()
    m = task.d_step(0, loop.step_generator(0, 0))
    (x_real, l_real), (x_fake, l_fake) = task.D.calls
    assert x_real.mean() > x_fake.mean()
    expected = torch.relu(1 - l_real).mean() + torch.relu(1 + l_fake).mean()
    assert m["d_loss"] == pytest.approx(expected.item(), rel=1e-6)
    assert m["d_real"] == pytest.approx(l_real.mean().item()) and m["d_fake"] == pytest.approx(l_fake.mean().item())
    # Swapped, the same logits would give a clearly different loss.
    assert abs(m["d_loss"] - d_hinge_loss(l_fake, l_real).item()) > 0.1


def test_g_adversarial_term_is_minus_the_mean_fake_logit(tiny_teacher, tiny_data, latents):
    task = make_task(tiny_teacher, tiny_data, latents, weighting="separate", gan_weight=1.0)
    task.D = StubD()
    m = task.g_step(0, loop.step_generator(0, 0))
    (_, logits), = task.D.calls
    assert m["adv"] == pytest.approx(-logits.mean().item(), rel=1e-6)
    # Minimising it raises D's score of G's images: after the step, the same noise scores higher.
    gen, sl = loop.step_generator(0, 0), loop.rank_slice(task.batch_size)
    _, y, _ = task.reconstruction_loss(gen, sl)
    assert -task.adversarial_loss(y, gen, sl).item() > logits.mean().item()


def test_gan_noise_is_fresh_prior_noise_at_sigma_max(tiny_teacher, tiny_data, latents, monkeypatch):
    task = make_task(tiny_teacher, tiny_data, latents)
    task.batch_size = 256  # enough draws to measure a standard deviation
    seen = []
    real_generate = decoder.generate

    def recording(net, z, labels, **kw):
        seen.append(z.detach().clone())
        return real_generate(net, z, labels, **kw)
    monkeypatch.setattr(decoder, "generate", recording)
    gen, sl = loop.step_generator(0, 0), loop.rank_slice(task.batch_size)
    task.adversarial_loss(torch.zeros(256, dtype=torch.long), gen, sl)
    task.d_step(0, loop.step_generator(0, 1))
    assert len(seen) == 2
    for z in seen:
        assert z.std().item() == pytest.approx(80.0, rel=0.02) and abs(z.mean().item()) < 1.0
    stored = torch.as_tensor(np.asarray(encode.load_latents(latents)["z"]))
    assert not any(torch.equal(z[:1], s[None]) for z in seen for s in stored)  # not the encoded latents


def test_real_and_fake_and_both_sides_of_a_pair_share_one_augmentation(tiny_teacher, tiny_data, latents,
                                                                       monkeypatch):
    task = make_task(tiny_teacher, tiny_data, latents)
    used = []
    real_augment = diffaug.augment

    def recording(x, params):
        used.append(params)
        return real_augment(x, params)
    monkeypatch.setattr(diffaug, "augment", recording)
    task.d_step(0, loop.step_generator(0, 0))
    assert len(used) == 2 and used[0] is used[1]  # D's real and fake batch
    used.clear()
    task.reconstruction_loss(loop.step_generator(0, 0), loop.rank_slice(task.batch_size))
    assert len(used) == 2 and used[0] is used[1]  # G(z(x)) and x inside the feature distance
    assert used[0]["brightness"].std() > 0  # per-sample draws, not one for the batch


def test_latents_are_paired_with_their_own_images_and_flips(tiny_teacher, tiny_data, latents, monkeypatch):
    # Images that identify themselves: image k is k + 1 in the left half and 0 in the right half, so a
    # flip moves the value to the right. Latent i stores its image index and flip; its z is filled with i.
    n_img = 40
    images = np.zeros((n_img, 1, 8, 8), np.uint8)
    for k in range(n_img):
        images[k, :, :, :4] = k + 1
    index = np.array([3, 3, 17, 17, 29, 29, 5, 5, 11, 11])
    flip = np.array([False, True] * 5)
    lat = {"z": np.stack([np.full((1, 8, 8), float(i)) for i in range(10)]).astype(np.float32),
           "labels": np.zeros(10, np.int64), "index": index, "flip": flip}
    task = make_task(tiny_teacher, tiny_data, latents, targets=images, latent_arrays=lat)
    pairs = []
    monkeypatch.setattr(decoder, "generate", lambda net, z, labels, **kw: z.clone().requires_grad_(True))
    task.distance = lambda x_hat, x, params=None: pairs.append((x_hat.detach(), x)) or x_hat.sum() * 0
    task.reconstruction_loss(loop.step_generator(0, 0), loop.rank_slice(task.batch_size))
    (z, x), = pairs
    for zi, xi in zip(z, x):
        i = int(zi[0, 0, 0])
        k = index[i]
        value = (k + 1) / 127.5 - 1
        left, right = xi[0, :, :4], xi[0, :, 4:]
        if flip[i]:
            left, right = right, left
        assert torch.allclose(left, torch.tensor(float(value))) and torch.allclose(right, torch.tensor(-1.0))
    assert len({int(zi[0, 0, 0]) for zi in z}) > 1


# ----------------------------------------------------------------------------
# The same wiring on a cheap task: the tiny teacher as G, the stub D and the pixel L2 distance.

SIGMA = 7.0  # not the default 80, so that a test sees which sigma_max is used
LATENT_INDEX = np.array([0, 3, 3, 7, 9, 11])
LATENT_FLIP = np.array([False, True, False, True, True, False])


def labelled_images(n, res=8):
    """Image k is 2k + 1 in its left half and 0 in its right half: its value names it, a flip is visible."""
    images = np.zeros((n, 1, res, res), np.uint8)
    for k in range(n):
        images[k, :, :, :res // 2] = 2 * k + 1
    return images


def model_images(images, flip):
    """uint8 images -> [-1, 1], mirrored where `flip`: computed in NumPy, apart from the code under test."""
    x = images.astype(np.float64) / 127.5 - 1
    return torch.as_tensor(np.where(np.asarray(flip)[:, None, None, None], x[..., ::-1], x), dtype=torch.float32)


def sliced(params, sl):
    return {k: v[sl] if torch.is_tensor(v) else v for k, v in params.items()}


def small_task(tiny_teacher, *, z=None, pair_z=None, pair_x=None, distance=None, **kw):
    """A DecoderTask on 40 labelled 8 px images, 6 latents and 5 pairs (batch 8, sigma_max 7); L2 distance."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    latents = {"z": (80 * rng.standard_normal((6, 1, 8, 8))).astype(np.float32) if z is None else z,
               "labels": np.array([3, 1, 4, 1, 5, 9]), "index": LATENT_INDEX, "flip": LATENT_FLIP}
    pairs = {"z": (80 * rng.standard_normal((5, 1, 8, 8))).astype(np.float32) if pair_z is None else pair_z,
             "x": rng.uniform(-1, 1, (5, 1, 8, 8)).astype(np.float32) if pair_x is None else pair_x,
             "labels": np.array([2, 7, 1, 8, 2])}
    images = labelled_images(40)
    args = dict(latents=latents, targets=images, train_images=images, train_labels=(7 * np.arange(40)) % 10,
                pairs=pairs, batch_size=8, lr_g=1e-3, lr_d=1e-2, gan_weight=0.3, ema_decay=0.5, sigma_max=SIGMA)
    args.update(kw)
    return decoder.DecoderTask(decoder.init_decoder(tiny_teacher, resolution=8), StubD(),
                               distance or ReconstructionDistance("l2"), **args)


def state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_task_defaults_are_the_papers_hyperparameters(tiny_teacher):
    G = decoder.init_decoder(tiny_teacher, resolution=8)
    G.input_blocks.requires_grad_(False)  # a frozen part, as after growth
    D = StubD()
    D.w = torch.nn.Parameter(torch.ones(2), requires_grad=False)
    images = labelled_images(10)
    lat = {"z": np.zeros((2, 1, 8, 8), np.float32), "labels": np.array([1, 2]), "index": np.array([0, 1]),
           "flip": np.array([False, True])}
    task = decoder.DecoderTask(G, D, ReconstructionDistance("l2"), latents=lat, targets=images,
                               train_images=images, train_labels=np.arange(10))
    assert (task.objective, task.batch_size, task.gan_weight, task.weighting) == ("reconstruction", 32, 0.2, "adaptive")
    assert (task.ema_decay, task.sigma_max, task.device, task.pairs) == (0.999, 80.0, "cpu", None)
    trainable = [p for n, p in G.named_parameters() if not n.startswith("input_blocks.")]
    for opt, lr, params in ((task.opt_g, 1e-4, trainable), (task.opt_d, 2e-3, [D.b])):
        (group,) = opt.param_groups
        assert isinstance(opt, torch.optim.RAdam) and group["lr"] == lr and group["betas"] == (0.9, 0.999)
        assert len(group["params"]) == len(params) and all(a is b for a, b in zip(group["params"], params))
    assert len(task.g_params) == len(trainable) and all(a is b for a, b in zip(task.g_params, trainable))
    # The EMA starts as a frozen copy of G in eval mode.
    assert task.ema is not G and not task.ema.training and not any(p.requires_grad for p in task.ema.parameters())
    assert all(torch.equal(v, G.state_dict()[k]) for k, v in task.ema.state_dict().items())
    assert task.modules() == {"G": G, "ema": task.ema, "D": D}
    assert task.optimizers() == {"G": task.opt_g, "D": task.opt_d}
    frozen_g = {n for n, _ in G.input_blocks.named_parameters(prefix="input_blocks")}
    assert task.frozen() == {"G": frozen_g, "ema": frozen_g, "D": {"w"}}
    assert task.conditional and task.z_shape == (1, 8, 8)
    assert all(torch.is_tensor(v) for v in task.latents.values()) and torch.is_tensor(task.train_labels)
    assert task.targets.dtype == torch.uint8 and task.train_images.shape == (10, 1, 8, 8)


def test_beta2_reaches_both_optimizers(tiny_teacher):
    G, D, images = decoder.init_decoder(tiny_teacher, resolution=8), StubD(), labelled_images(10)
    lat = {"z": np.zeros((2, 1, 8, 8), np.float32), "labels": np.array([1, 2]), "index": np.array([0, 1]),
           "flip": np.array([False, True])}
    task = decoder.DecoderTask(G, D, ReconstructionDistance("l2"), latents=lat, targets=images, train_images=images,
                               train_labels=np.arange(10), lr_g=3e-4, beta2=0.99)
    assert [(o.param_groups[0]["lr"], o.param_groups[0]["betas"]) for o in (task.opt_g, task.opt_d)] == [
        (3e-4, (0.9, 0.99)), (2e-3, (0.9, 0.99))]


def test_task_rejects_unknown_objectives_weightings_and_missing_pairs(tiny_teacher):
    with pytest.raises(ValueError, match="^" + re.escape(
            "objective must be one of ('reconstruction', 'distillation', 'both', 'none'), got 'rec'") + "$"):
        small_task(tiny_teacher, objective="rec")
    with pytest.raises(ValueError, match="^" + re.escape(
            "weighting must be one of ('adaptive', 'separate'), got 'fixed'") + "$"):
        small_task(tiny_teacher, weighting="fixed")
    for objective in ("distillation", "both"):
        with pytest.raises(ValueError, match=f"^objective '{objective}' needs noise -> teacher-sample pairs$"):
            small_task(tiny_teacher, objective=objective, pairs=None)
    assert small_task(tiny_teacher, pairs=None).pairs is None  # reconstruction alone needs none
    with pytest.raises(ValueError, match="^" + re.escape("objective 'none' (the GAN alone) needs weighting='separate': "
                                                         "the adaptive weight is a ratio to L_rec's gradient") + "$"):
        small_task(tiny_teacher, objective="none", pairs=None)


def test_objective_none_steps_g_on_the_gan_term_alone(tiny_teacher, monkeypatch):
    task = small_task(tiny_teacher, objective="none", weighting="separate", pairs=None)
    by_hand = copy.deepcopy(task)
    monkeypatch.setattr(decoder.DecoderTask, "reconstruction_loss", lambda *a: pytest.fail("L_rec was computed"))
    m = task.g_step(0, loop.step_generator(0, 0))
    (_, logits), = task.D.calls
    assert m["rec"] == 0 and m["adv"] == pytest.approx(-logits.mean().item(), rel=1e-6) and m["lambda"] == pytest.approx(0.3)
    # The GAN's labels are training labels drawn with the step's generator, then one update on 0.3 L_adv.
    gen, sl = loop.step_generator(0, 0), loop.rank_slice(task.batch_size)
    j = torch.randint(40, (8,), generator=gen)[sl]
    y = torch.as_tensor((7 * np.arange(40)) % 10)[j]
    assert torch.equal(task.D.labels[0], y)
    by_hand._g_update(0.3 * by_hand.adversarial_loss(y, gen, sl), 0)
    for a, b in zip(task.G.parameters(), by_hand.G.parameters()):
        torch.testing.assert_close(a, b)


def test_gan_weight_zero_with_separate_weighting_takes_no_gan_step(tiny_teacher):
    task = small_task(tiny_teacher, weighting="separate", gan_weight=0.0)
    by_hand = copy.deepcopy(task)
    m = task.g_step(0, loop.step_generator(0, 0))
    assert task.D.calls == [] and m["adv"] == 0 and m["lambda"] == 0
    gen, sl = loop.step_generator(0, 0), loop.rank_slice(task.batch_size)
    by_hand._g_update(by_hand.reconstruction_loss(gen, sl)[0], 0)  # L_rec's update and nothing after it
    for a, b in zip(task.G.parameters(), by_hand.G.parameters()):
        torch.testing.assert_close(a, b)


def test_unconditional_generator_gets_no_labels(tiny_teacher, tmp_path):
    from dataclasses import replace
    from pagoda.checkpoints import save_network
    save_network(tmp_path / "u.pt", UNet(replace(TINY_NET, num_classes=0)), kind="teacher")
    task = small_task(tmp_path / "u.pt")
    assert not task.conditional and task._labels(torch.tensor([1, 2])) is None
    assert torch.equal(small_task(tiny_teacher)._labels(torch.tensor([1, 2])), torch.tensor([1, 2]))


def test_reconstruction_loss_sums_mean_distances_over_this_ranks_share_of_the_batch(tiny_teacher, monkeypatch):
    # z names its latent (i) or pair (100 + j); the stub G returns z and the stub distance returns
    # mean(x_hat) - mean(x), so both terms are known by hand. Rank 1 of 2 uses items 4..7 of the batch.
    def filled(values):
        return np.asarray(values, np.float32)[:, None, None, None] + np.zeros((1, 1, 8, 8), np.float32)
    task = small_task(tiny_teacher, objective="both", z=filled(np.arange(6)), pair_z=filled(100 + np.arange(5)),
                      pair_x=filled(np.arange(5) / 10))
    calls, seen = [], []

    def stub_generate(net, z, labels, **kw):
        calls.append((net, labels, kw))
        return z.clone()
    monkeypatch.setattr(decoder, "generate", stub_generate)
    task.distance = lambda x_hat, x, params=None: seen.append((x_hat, x, params)) or \
        x_hat.flatten(1).mean(1) - x.flatten(1).mean(1)
    loss, y, _ = task.reconstruction_loss(loop.step_generator(0, 5), slice(4, 8))
    # The batch's draws, in order: latent indices, pair indices, augmentation.
    g = loop.step_generator(0, 5)
    i, j = torch.randint(6, (8,), generator=g)[4:], torch.randint(5, (8,), generator=g)[4:]
    p = sliced(diffaug.sample_params(8, 8, generator=g), slice(4, 8))
    assert len(set(i.tolist())) > 1 and LATENT_FLIP[i].any() and not LATENT_FLIP[i].all()  # a telling draw
    (zi, x, p1), (zj, xj, p2) = seen
    x_expected = model_images(labelled_images(40)[LATENT_INDEX[i]], LATENT_FLIP[i])
    torch.testing.assert_close(x, x_expected)
    assert torch.equal(zi[:, 0, 0, 0], i.float()) and torch.equal(zj[:, 0, 0, 0], 100 + j.float())
    torch.testing.assert_close(xj, (j.float() / 10).view(-1, 1, 1, 1).expand(-1, 1, 8, 8))
    expected = (i.float() - x_expected.flatten(1).mean(1)).mean() + (100 + j.float() - j.float() / 10).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert torch.equal(y, torch.tensor([3, 1, 4, 1, 5, 9])[i])  # the reconstruction term's labels
    (n1, y1, kw1), (n2, y2, kw2) = calls
    assert n1 is task.G and n2 is task.G and kw1 == kw2 == {"omega": None, "sigma_max": SIGMA}  # unguided
    assert torch.equal(y1, y) and torch.equal(y2, torch.tensor([2, 7, 1, 8, 2])[j])
    for q in (p1, p2):  # one augmentation draw for both terms, sliced like the batch
        assert q.keys() == p.keys() and q["cutout_size"] == 2  # 0.2 of 8 px
        assert all(torch.equal(q[k], p[k]) for k in p if torch.is_tensor(p[k]))


def test_adversarial_loss_is_minus_d_of_g_on_fresh_prior_noise_at_the_targets_resolution(tiny_teacher, monkeypatch):
    images16 = labelled_images(40, 16)
    task = small_task(tiny_teacher, targets=images16, train_images=images16)
    calls = []

    def grown_g(net, z, labels, **kw):  # a stand-in for a grown G: 8 px latents -> 16 px images
        calls.append((net, z, labels, kw))
        return F.interpolate(z, scale_factor=2)
    monkeypatch.setattr(decoder, "generate", grown_g)
    y = torch.tensor([5, 6, 7, 8])
    loss = task.adversarial_loss(y, loop.step_generator(0, 1), slice(4, 8))
    g = loop.step_generator(0, 1)
    z = SIGMA * torch.randn((8, 1, 8, 8), generator=g)
    x = diffaug.augment(F.interpolate(z[4:], scale_factor=2),
                        sliced(diffaug.sample_params(8, 16, generator=g), slice(4, 8)))
    ((net, z_used, labels, kw),) = calls
    assert net is task.G and torch.equal(z_used, z[4:]) and labels is not None and torch.equal(labels, y)
    assert kw == {"omega": None, "sigma_max": SIGMA}
    ((d_in, logits),) = task.D.calls
    torch.testing.assert_close(d_in, x)
    assert torch.equal(task.D.labels[0], y)
    assert loss.item() == pytest.approx(-10 * x.mean().item(), rel=1e-5)


def test_adaptive_g_step_applies_grad_rec_plus_lambda_grad_adv_and_updates_the_ema(tiny_teacher):
    task = small_task(tiny_teacher)
    by_hand = copy.deepcopy(task)
    m = task.g_step(100, loop.step_generator(0, 100))
    assert task.D.trainable == [False] and task.D.b.requires_grad  # D frozen during the G step only
    gen, sl = loop.step_generator(0, 100), slice(0, 8)
    params = by_hand.g_params
    rec, y, _ = by_hand.reconstruction_loss(gen, sl)
    g_rec = torch.autograd.grad(rec, params)
    adv = by_hand.adversarial_loss(y, gen, sl)
    g_adv = torch.autograd.grad(adv, params)
    k = next(n for n, p in enumerate(params) if p is by_hand.G.last_layer())
    lam = 0.3 * min(max(g_rec[k].norm().item() / (g_adv[k].norm().item() + 1e-4), 0.01), 10)
    assert 0.003 < lam < 3  # inside the clip: the ratio itself matters
    assert m["rec"] == pytest.approx(rec.item(), rel=1e-6) and m["adv"] == pytest.approx(adv.item(), rel=1e-6)
    assert m["lambda"] == pytest.approx(lam, rel=1e-5)
    for p, gr, ga in zip(task.g_params, g_rec, g_adv):
        torch.testing.assert_close(p.grad, gr + lam * ga, rtol=1e-4, atol=1e-7)
    # One RAdam step on that gradient; the EMA (decay 0.5 reached at step 100) halves the way to G.
    for p, gr, ga in zip(params, g_rec, g_adv):
        p.grad = gr + lam * ga
    by_hand.opt_g.step()
    for (n, p), q, e in zip(task.G.named_parameters(), params, by_hand.ema.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(task.ema.get_parameter(n), (e + p) / 2, rtol=1e-5, atol=1e-6)


def test_separate_g_step_is_a_step_on_l_rec_then_a_step_on_w_l_adv(tiny_teacher):
    task = small_task(tiny_teacher, weighting="separate")
    by_hand = copy.deepcopy(task)
    m = task.g_step(3, loop.step_generator(0, 3))
    assert task.D.trainable == [False] and task.D.b.requires_grad
    gen, sl = loop.step_generator(0, 3), slice(0, 8)
    params, beta = by_hand.g_params, 4 / 13  # EMA warm-up at step 3: min(0.5, (1 + 3) / (10 + 3))
    ema = [e.detach().clone() for e in by_hand.ema.parameters()]
    rec, y, _ = by_hand.reconstruction_loss(gen, sl)
    for p, g in zip(params, torch.autograd.grad(rec, params)):
        p.grad = g
    by_hand.opt_g.step()
    ema = [beta * e + (1 - beta) * p.detach() for e, p in zip(ema, params)]
    adv = by_hand.adversarial_loss(y, gen, sl)  # the GAN term of the already updated G
    for p, g in zip(params, torch.autograd.grad(0.3 * adv, params)):
        p.grad = g
    by_hand.opt_g.step()
    ema = [beta * e + (1 - beta) * p.detach() for e, p in zip(ema, params)]
    assert m["lambda"] == pytest.approx(0.3) and m["rec"] == pytest.approx(rec.item(), rel=1e-6)
    assert m["adv"] == pytest.approx(adv.item(), rel=1e-5)
    for p, q, e, e_hand in zip(task.G.parameters(), params, task.ema.parameters(), ema):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(e, e_hand, rtol=1e-4, atol=1e-6)


def test_d_step_uses_this_ranks_share_of_flipped_real_images_and_their_labels(tiny_teacher, monkeypatch):
    task = small_task(tiny_teacher)
    monkeypatch.setattr(loop, "rank_slice", lambda n: slice(n // 2, n))  # rank 1 of 2
    m = task.d_step(2, loop.step_generator(0, 2))
    g = loop.step_generator(0, 2)
    j = torch.randint(40, (8,), generator=g)
    flip = torch.rand(8, generator=g) < 0.5
    z = SIGMA * torch.randn((8, 1, 8, 8), generator=g)
    p = sliced(diffaug.sample_params(8, 8, generator=g), slice(4, 8))
    assert flip[4:].any() and not flip[4:].all()
    labels = torch.as_tensor((7 * np.arange(40)) % 10)[j[4:]]
    x_real = diffaug.augment(model_images(labelled_images(40)[j[4:].numpy()], flip[4:].numpy()), p)
    with torch.no_grad():
        x_fake = diffaug.augment(edm.generate(task.G, z[4:], labels, sigma_max=SIGMA), p)
    (d_real, l_real), (d_fake, l_fake) = task.D.calls
    torch.testing.assert_close(d_real, x_real)
    torch.testing.assert_close(d_fake, x_fake, rtol=1e-4, atol=1e-5)
    assert all(torch.equal(y, labels) for y in task.D.labels)
    # d/db of mean relu(1 - real) + mean relu(1 + fake): the hinge's active share on each side.
    grad_b = -(l_real < 1).float().mean() + (l_fake > -1).float().mean()
    assert task.D.b.grad.item() == pytest.approx(grad_b.item())
    assert m["d_loss"] == pytest.approx(d_hinge_loss(l_real, l_fake).item(), rel=1e-6)


def test_step_returns_the_g_and_d_metrics(tiny_teacher):
    m = small_task(tiny_teacher).step(0, loop.step_generator(0, 0))
    assert set(m) == {"rec", "adv", "lambda", "d_loss", "d_real", "d_fake"}


def test_unused_parameters_get_zero_gradients_and_non_finite_gradients_are_dropped(tiny_teacher):
    task = small_task(tiny_teacher, ema_decay=0.5)
    bias, weight = task.G.out[-1].bias, task.G.out[-1].weight
    grads = task._gradients(3 * bias.sum())
    for p, g in zip(task.g_params, grads):
        assert g is not None and g.shape == p.shape
        assert torch.equal(g, torch.full_like(p, 3.0) if p is bias else torch.zeros_like(p))
    with torch.no_grad():
        bias.add_(1.0)  # G moved away from its EMA
    before = state(task.G)
    for p in task.g_params:
        p.grad = torch.zeros_like(p)
    weight.grad[0, 0, 0] = torch.tensor([float("nan"), float("inf"), -float("inf")])
    task._apply_g_update(1000)
    assert torch.equal(weight.grad, torch.zeros_like(weight))
    after = state(task.G)
    assert all(torch.equal(v, after[k]) for k, v in before.items())  # a zero gradient: RAdam does not move
    # EMA at decay 0.5: halfway from its old bias to G's.
    torch.testing.assert_close(task.ema.out[-1].bias, bias.detach() - 0.5)


def test_gradients_and_logged_values_are_averaged_over_ranks(tiny_teacher, monkeypatch):
    task = small_task(tiny_teacher)
    averaged, means = [], []
    monkeypatch.setattr(loop, "average_gradients", lambda params: averaged.append(list(params)))
    monkeypatch.setattr(loop, "mean_over_ranks", lambda x: means.append(x) or x)
    task.g_step(0, loop.step_generator(0, 0))
    last = task.G.last_layer()
    assert len(averaged) == 1 and len(averaged[0]) == len(task.g_params)
    assert all(a is b for a, b in zip(averaged[0], task.g_params))
    assert [tuple(x.shape) for x in means] == [tuple(last.shape)] * 2 + [()] * 2  # lambda's inputs, rec, adv
    averaged.clear(), means.clear()
    m = task.d_step(0, loop.step_generator(0, 0))
    assert len(averaged) == 1 and averaged[0] == [task.D.b]
    assert [x.item() for x in means] == pytest.approx([m["d_loss"], m["d_real"], m["d_fake"]])


@pytest.mark.parametrize("kw", [dict(objective="both"), dict(weighting="separate", gan_weight=0.0, feature=True),
                                dict(objective="none", weighting="separate")],
                         ids=["both-adaptive-l2", "separate-no-gan-feature", "gan-alone"])
def test_task_keeps_networks_and_batches_on_its_device(tiny_teacher, monkeypatch, kw):
    # The meta device stands in for a GPU: any batch, label or augmentation left on the CPU fails. The feature
    # distance uses the augmentation's parameters (L2 does not); weight 0 skips the separate GAN step.
    if kw.pop("feature", False):
        kw["distance"] = ReconstructionDistance("feature", backbone=EfficientNetLite0(input_size=32))
    task = small_task(tiny_teacher, device="meta", **kw)
    for module in (task.G, task.ema, task.D, task.distance):  # the feature distance's networks too
        assert all(t.device.type == "meta" for t in (*module.parameters(), *module.buffers()))
    devices = []
    monkeypatch.setattr(loop, "mean_over_ranks", lambda x: devices.append(x.device.type) or torch.zeros(()))
    task.step(0, loop.step_generator(0, 0))  # meta values cannot be read: logged as zeros here
    assert devices and set(devices) == {"meta"}
    assert all(x.device.type == "meta" for x, _ in task.D.calls)
    assert all(y.device.type == "meta" for y in task.D.labels)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("weighting", ["adaptive", "separate"])
def test_task_steps_on_cuda_with_the_loops_cuda_generator(tiny_teacher, weighting):
    # On a GPU the loop hands each step a CUDA generator: every draw must be made on its device.
    task = small_task(tiny_teacher, objective="both", device="cuda", weighting=weighting)
    m = task.step(0, loop.step_generator(0, 0, "cuda"))
    assert all(np.isfinite(v) for v in m.values())
    assert all(p.device.type == "cuda" for module in (task.G, task.ema, task.D) for p in module.parameters())
    rec, y, _ = task.reconstruction_loss(loop.step_generator(0, 1, "cuda"), slice(4, 8))
    adv = task.adversarial_loss(y, loop.step_generator(0, 1, "cuda"), slice(4, 8))
    assert rec.device.type == adv.device.type == "cuda"
