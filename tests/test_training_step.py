"""The decoder's training step, wired as the paper says: checked on tiny networks against values computed
by hand, with a stub discriminator whose logits are a known function of its input."""

import copy

import numpy as np
import pytest
import torch
from conftest import make_task

from pagoda import decoder, diffaug, encode, loop
from pagoda.data import load_dataset
from pagoda.losses import adaptive_weight, d_hinge_loss, g_hinge_loss


class StubD(torch.nn.Module):
    """logits = 10 * mean(x) + b per image, recording every input and output."""

    def __init__(self):
        super().__init__()
        self.b = torch.nn.Parameter(torch.zeros(()))
        self.calls = []

    def trainable_parameters(self):
        return [self.b]

    def forward(self, x, labels=None):
        out = 10 * x.mean(dim=(1, 2, 3)) + self.b
        self.calls.append((x.detach().clone(), out.detach().clone()))
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
    rec, y = by_hand.reconstruction_loss(gen, sl)
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
    _, y = task.reconstruction_loss(gen, sl)
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
    stored = torch.as_tensor(encode.load_latents(latents)["z"])
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
