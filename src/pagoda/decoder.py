"""Stages 2 and 3: the one-step decoder G(z, y), trained with L_rec + lambda L_adv and grown per stage.

G(z, y) = F(c_in(sigma_max) z, c_noise(sigma_max), y): the teacher's network evaluated once at
sigma_max, its raw output taken as the image (METHOD.md, "Stage 2"). At the base resolution G starts
from the teacher's EMA weights; each growth stage (Stage 3) starts from the previous stage's decoder
grown by `growth.grow`, with most of the old network frozen, and reconstructs the real
high-resolution image from the *same* low-resolution latent. A guided decoder (PaGoDA Sec. 4) also takes
the guidance scale omega: its latents come from the guided PF-ODE at a stored omega, and D sees omega too.
"""

import copy
import dataclasses

import numpy as np
import torch

from . import diffaug, edm, loop
from .checkpoints import load_network, save_network
from .data import as_images, dataset_path, load_dataset, to_model
from .discriminator import ProjectedDiscriminator
from .edm import generate
from .encode import ShardedArray, list_shards, load_latents
from .features import feature_networks
from .losses import ReconstructionDistance, adaptive_weight, d_hinge_loss, g_hinge_loss
from .growth import grow
from .networks import UNet, num_params
from .sampling import class_labels, image_noise, seeds_for

OBJECTIVES = ("reconstruction", "distillation", "both", "none")  # none: the GAN alone (an ablation)
WEIGHTINGS = ("adaptive", "separate")


# ----------------------------------------------------------------------------
# Initialisation and freezing.

def paper_trainable_output_blocks(config):
    """The released code trains ADM-64's output_blocks[9:] (7 of 16): every block at the top resolution
    plus the last num_res_blocks of the level below (which end in the up-sampler). Same rule here."""
    return 2 * config.num_res_blocks + 1


def freeze_for_growth(net, trainable_output_blocks=None):
    """Freeze all but the last `trainable_output_blocks` base output blocks, every growth block and the heads."""
    k = paper_trainable_output_blocks(net.config) if trainable_output_blocks is None else trainable_output_blocks
    if not 0 <= k <= net.num_base_output_blocks:
        raise ValueError(f"trainable_output_blocks must be in [0, {net.num_base_output_blocks}], got {k}")
    net.requires_grad_(False)
    for block in net.output_blocks[net.num_base_output_blocks - k:]:
        block.requires_grad_(True)
    net.out.requires_grad_(True)
    net.growth_heads.requires_grad_(True)
    return net


def _rebuilt(net, **changes):
    """`net` with config fields changed that leave its parameters as they are (dropout, head style)."""
    if all(getattr(net.config, k) == v for k, v in changes.items()):
        return net
    out = UNet(dataclasses.replace(net.config, **changes)).to(next(net.parameters()).device)
    out.load_state_dict(net.state_dict())
    return out


def with_omega_embedding(net):
    """`net` as a guided G (PaGoDA Sec. 4): a new omega embedding whose zero last layer leaves the output as it was."""
    if net.config.omega_embedding:
        return net
    out = UNet(dataclasses.replace(net.config, omega_embedding=True)).to(next(net.parameters()).device)
    missing = out.load_state_dict(net.state_dict(), strict=False).missing_keys
    assert all(k.startswith("omega_embed.") for k in missing), missing
    return out


def init_decoder(init_path, *, resolution, channels=None, num_res_blocks=2, trainable_output_blocks=None,
                 growth_head="residual", guided=False, device="cpu"):
    """The generator to train at `resolution`: the teacher (base) or the previous decoder grown to it.
    `guided`: G takes the guidance scale omega (Stage 2 adds the embedding; growth stages keep it)."""
    net, _ = load_network(init_path, which="ema", device=device)
    if net.config.omega_embedding and not guided:
        raise ValueError(f"{init_path} is a guided decoder: grow it with guided=True")
    # No dropout in G (released code: the decoder is built with dropout 0): a teacher trained with it would
    # otherwise keep it live in every ResBlock during training while sampling runs without it.
    net = _rebuilt(net, dropout=0.0)
    if guided:
        net = with_omega_embedding(net)
    net.requires_grad_(True)
    if net.config.out_resolution == resolution:  # Stage 2: the teacher's network, fully trainable
        return net.train()
    factor = resolution // net.config.out_resolution
    if factor * net.config.out_resolution != resolution:
        raise ValueError(f"cannot grow {net.config.out_resolution} -> {resolution}: not an integer factor")
    if not net.config.growth:  # choose the head style once
        net = _rebuilt(net, growth_head=growth_head)
    grown = grow(net, factor=factor, channels=channels, num_res_blocks=num_res_blocks)
    return freeze_for_growth(grown, trainable_output_blocks).train()


def frozen_names(net):
    return {n for n, p in net.named_parameters() if not p.requires_grad}


# ----------------------------------------------------------------------------
# The training task.

def _slice_params(params, sl):
    return {k: (v[sl] if torch.is_tensor(v) else v) for k, v in params.items()}


def _indexable(arrays):
    """Memory-mapped shard arrays as they are, everything else as tensors."""
    return {k: v if isinstance(v, ShardedArray) else torch.as_tensor(v) for k, v in arrays.items()}


def _flip_where(x, flip):
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)


class DecoderTask:
    """One G update (or two, with weighting='separate') and one D update per step."""

    def __init__(self, G, D, distance, *, latents, targets, train_images, train_labels, pairs=None,
                 objective="reconstruction", batch_size=32, lr_g=1e-4, lr_d=2e-3, beta2=0.999, gan_weight=0.2,
                 weighting="adaptive", ema_decay=0.999, sigma_max=edm.SIGMA_MAX, omega_range=None, real_omegas=None,
                 device="cpu"):
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        if weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
        if objective in ("distillation", "both") and pairs is None:
            raise ValueError(f"objective {objective!r} needs noise -> teacher-sample pairs")
        if objective == "none" and weighting == "adaptive":
            raise ValueError("objective 'none' (the GAN alone) needs weighting='separate': the adaptive weight "
                             "is a ratio to L_rec's gradient")
        self.G, self.D, self.distance = G.to(device), D.to(device), distance.to(device)
        self.ema = copy.deepcopy(self.G).eval().requires_grad_(False)
        self.latents = _indexable(latents)  # z stays memory-mapped (encode.ShardedArray): rows are read per batch
        self.targets = as_images(targets)            # uint8 (N, C, R, R), indexed by latents["index"]
        self.train_images = as_images(train_images)  # uint8, the GAN's real images
        self.train_labels = torch.as_tensor(train_labels)
        self.pairs = _indexable(pairs) if pairs is not None else None
        self.objective, self.batch_size, self.gan_weight = objective, batch_size, gan_weight
        self.weighting, self.ema_decay, self.sigma_max, self.device = weighting, ema_decay, sigma_max, device
        self.g_params = [p for p in self.G.parameters() if p.requires_grad]
        # RAdam (paper). Its rectification scales the first ~2 / (1 - beta2) steps down (to 0.33 of lr at step 230
        # with beta2 = 0.999): short CPU stages set a smaller beta2 (README, deviations).
        self.opt_g = torch.optim.RAdam(self.g_params, lr=lr_g, betas=(0.9, beta2))
        self.opt_d = torch.optim.RAdam(self.D.trainable_parameters(), lr=lr_d, betas=(0.9, beta2))
        self.conditional = self.G.label_emb is not None
        cfg = self.G.config
        self.z_shape = (cfg.in_channels, cfg.img_resolution, cfg.img_resolution)
        # Guidance (PaGoDA Sec. 4): the GAN's fake images get omega ~ U(omega_range), the latents' distribution;
        # real images get `real_omegas` (one per training image: the omega estimator's) or a uniform draw.
        self.guided, self.omega_range = cfg.omega_embedding, omega_range
        self.real_omegas = None if real_omegas is None else torch.as_tensor(real_omegas, dtype=torch.float32)
        if self.guided:
            if omega_range is None or "omega" not in self.latents:
                raise ValueError("a guided G needs guided latents (encode with omega_range) and their omega_range")
            if objective in ("distillation", "both"):
                raise ValueError("a guided G is trained with 'reconstruction' or 'none': the L_dstl pairs carry no omega")
            if self.real_omegas is not None and len(self.real_omegas) != len(self.train_images):
                raise ValueError(f"real_omegas has {len(self.real_omegas)} values for {len(self.train_images)} images")
        elif omega_range is not None or real_omegas is not None:
            raise ValueError("omega_range and real_omegas need a guided G (init_decoder(guided=True))")

    def modules(self):
        return {"G": self.G, "ema": self.ema, "D": self.D}

    def optimizers(self):
        return {"G": self.opt_g, "D": self.opt_d}

    def frozen(self):
        g = frozen_names(self.G)
        return {"G": g, "ema": g, "D": frozen_names(self.D)}

    def _labels(self, y):
        return y.to(self.device) if self.conditional else None

    def _prior(self, n, generator):
        z = self.sigma_max * torch.randn((n, *self.z_shape), generator=generator, device=generator.device)
        return z.to(self.device)

    def _omegas(self, n, generator, sl):
        """omega ~ U(omega_range) for a guided G's GAN samples (None without guidance: nothing is drawn)."""
        if not self.guided:
            return None
        low, high = self.omega_range
        return (low + (high - low) * torch.rand(n, generator=generator, device=generator.device))[sl].to(self.device)

    def _D(self, x, y, omega):
        return self.D(x, self._labels(y)) if omega is None else self.D(x, self._labels(y), omega)

    def reconstruction_loss(self, generator, sl):
        """L_rec on (z(x), x) pairs and/or L_dstl on (z, ODE(z)) pairs, mean over this rank's slice.
        Returns (loss, the batch's labels, their guidance scales or None)."""
        n = self.batch_size
        terms = []
        if self.objective in ("reconstruction", "both"):
            i = torch.randint(len(self.latents["z"]), (n,), generator=generator, device=generator.device).cpu()[sl]
            z, y = torch.as_tensor(self.latents["z"][i]).to(self.device), self.latents["labels"][i]
            x = _flip_where(to_model(self.targets[self.latents["index"][i]]), self.latents["flip"][i])
            omega = torch.as_tensor(self.latents["omega"][i]).to(self.device) if self.guided else None
            terms.append((z, y, omega, x.to(self.device)))
        if self.objective in ("distillation", "both"):
            j = torch.randint(len(self.pairs["z"]), (n,), generator=generator, device=generator.device).cpu()[sl]
            terms.append((torch.as_tensor(self.pairs["z"][j]).to(self.device), self.pairs["labels"][j], None,
                          torch.as_tensor(self.pairs["x"][j]).to(self.device)))
        res = terms[0][3].shape[-1]
        params = diffaug.sample_params(n, res, generator=generator, device=generator.device)
        loss = 0
        for z, y, omega, x in terms:
            x_hat = generate(self.G, z, self._labels(y), omega=omega, sigma_max=self.sigma_max)
            p = {k: (v.to(self.device) if torch.is_tensor(v) else v) for k, v in _slice_params(params, sl).items()}
            loss = loss + self.distance(x_hat, x, params=p).mean()
        return loss, terms[0][1], terms[0][2]

    def adversarial_loss(self, y, generator, sl, *, omega=None):
        """L_adv = -mean D(aug(G(z', y, omega))) with fresh prior noise z' (not the inverted latents)."""
        n = self.batch_size
        z = self._prior(n, generator)[sl]
        params = _slice_params(diffaug.sample_params(n, self.targets.shape[-1], generator=generator,
                                                     device=generator.device), sl)
        params = {k: (v.to(self.device) if torch.is_tensor(v) else v) for k, v in params.items()}
        x_fake = generate(self.G, z, self._labels(y), omega=omega, sigma_max=self.sigma_max)
        return g_hinge_loss(self._D(diffaug.augment(x_fake, params), y, omega))

    def _gradients(self, loss):
        """Gradients of `loss` w.r.t. G's trainable parameters (zeros where a parameter is unused)."""
        grads = torch.autograd.grad(loss, self.g_params, allow_unused=True)
        return [torch.zeros_like(p) if g is None else g for p, g in zip(self.g_params, grads)]

    def _g_update(self, loss, step):
        for p, g in zip(self.g_params, self._gradients(loss)):
            p.grad = g
        self._apply_g_update(step)

    def _apply_g_update(self, step):
        loop.average_gradients(self.g_params)
        for p in self.g_params:  # a non-finite gradient is dropped, not applied
            if p.grad is not None:
                torch.nan_to_num_(p.grad, nan=0, posinf=0, neginf=0)
        self.opt_g.step()
        loop.ema_update(self.ema, self.G, decay=self.ema_decay, step=step)

    def g_step(self, step, generator):
        sl = loop.rank_slice(self.batch_size)
        for p in self.D.trainable_parameters():  # the G step never needs D's gradients
            p.requires_grad_(False)
        if self.objective == "none":  # no L_rec: the GAN's labels are drawn from the training labels
            j = torch.randint(len(self.train_labels), (self.batch_size,), generator=generator,
                              device=generator.device).cpu()[sl]
            rec, y = torch.zeros((), device=self.device), self.train_labels[j]
            omega = self._omegas(self.batch_size, generator, sl)
        else:
            rec, y, omega = self.reconstruction_loss(generator, sl)
        if self.weighting == "adaptive":
            # grad(L_rec + lambda L_adv) = grad L_rec + lambda grad L_adv: one backward pass per term, and
            # lambda from their last-layer parts, instead of extra passes through the feature networks.
            grads_rec = self._gradients(rec)
            adv = self.adversarial_loss(y, generator, sl, omega=omega)
            grads_adv = self._gradients(adv)
            k = next(i for i, p in enumerate(self.g_params) if p is self.G.last_layer())
            lam = adaptive_weight(loop.mean_over_ranks(grads_rec[k]), loop.mean_over_ranks(grads_adv[k]),
                                  weight=self.gan_weight)
            for p, gr, ga in zip(self.g_params, grads_rec, grads_adv):
                p.grad = gr + lam * ga
            self._apply_g_update(step)
        else:  # released code from 256 px on: a step on L_rec, then a step on the fixed-weight GAN term
            if self.objective != "none":
                self._g_update(rec, step)
            # Weight 0 skips the GAN step (an ablation): a zero-gradient step would still move G by RAdam's momentum.
            adv, lam = torch.zeros((), device=self.device), torch.tensor(self.gan_weight)
            if self.gan_weight != 0:
                adv = self.adversarial_loss(y, generator, sl, omega=omega)
                self._g_update(lam * adv, step)
        for p in self.D.trainable_parameters():
            p.requires_grad_(True)
        return {"rec": loop.mean_over_ranks(rec.detach()).item(), "adv": loop.mean_over_ranks(adv.detach()).item(),
                "lambda": float(lam)}

    def d_step(self, step, generator):
        n, sl = self.batch_size, loop.rank_slice(self.batch_size)
        g = dict(generator=generator, device=generator.device)
        j = torch.randint(len(self.train_images), (n,), **g).cpu()[sl]
        flip = (torch.rand(n, **g) < 0.5).cpu()[sl]
        x_real = _flip_where(to_model(self.train_images[j]), flip).to(self.device)
        y = self.train_labels[j]
        z = self._prior(n, generator)[sl]
        params = _slice_params(diffaug.sample_params(n, x_real.shape[-1], **g), sl)
        params = {k: (v.to(self.device) if torch.is_tensor(v) else v) for k, v in params.items()}
        omega_fake = self._omegas(n, generator, sl)
        omega_real = self.real_omegas[j].to(self.device) if self.real_omegas is not None else \
            self._omegas(n, generator, sl)
        with torch.no_grad():
            x_fake = generate(self.G, z, self._labels(y), omega=omega_fake, sigma_max=self.sigma_max)
        # Real and fake share the per-index augmentation parameters (released code).
        logits_real = self._D(diffaug.augment(x_real, params), y, omega_real)
        logits_fake = self._D(diffaug.augment(x_fake, params), y, omega_fake)
        loss = d_hinge_loss(logits_real, logits_fake)
        self.opt_d.zero_grad(set_to_none=True)
        loss.backward()
        loop.average_gradients(self.D.trainable_parameters())
        self.opt_d.step()
        return {"d_loss": loop.mean_over_ranks(loss.detach()).item(),
                "d_real": loop.mean_over_ranks(logits_real.detach().mean()).item(),
                "d_fake": loop.mean_over_ranks(logits_fake.detach().mean()).item()}

    def step(self, step, generator):
        return {**self.g_step(step, generator), **self.d_step(step, generator)}

    def save_snapshot(self, path, *, step):
        """The EMA generator after `step` steps, in the final decoder's format (a learning-curve point)."""
        save_network(path, self.ema, kind="decoder", meta={"sigma_max": self.sigma_max, "steps": step})


# ----------------------------------------------------------------------------
# The stage.

def curve_steps(steps, points):
    """`points` evenly spaced steps of a `steps`-step run, ending at the last one."""
    return sorted({max(1, round(steps * (i + 1) / points)) for i in range(points)})


def train_decoder(*, data_dir, latents_dir, init_path, run_dir, out_path, resolution, steps=500, batch_size=32,
                  lr_g=1e-4, lr_d=2e-3, beta2=0.999, gan_weight=0.2, weighting="adaptive", ema_decay=0.999,
                  distance="feature", objective="reconstruction", pairs_dir=None, feature_size=224, d_feature_size=None,
                  backbones=("efficientnet_lite0",), backbone_source="offline",
                  growth_channels=None, growth_res_blocks=2, trainable_output_blocks=None, growth_head="residual",
                  sigma_max=edm.SIGMA_MAX, omega_range=None, real_omegas_path=None, seed=0, checkpoint_every=100,
                  curve_points=0, log_every=None, device="auto", progress=True, max_steps_this_call=None):
    """Train the decoder at `resolution` from `init_path` (teacher -> Stage 2; decoder -> Stage 3).

    Reconstruction targets are the training images at `resolution` for the stored latents (and flips);
    the GAN's real images are the whole training set at `resolution`. Writes `out_path` (EMA and raw
    weights, frozen ones included) when all `steps` are done and returns a summary. `curve_points`: also
    keep the EMA generator at that many evenly spaced steps, the last one included, in run_dir/snapshots
    (`evaluate.learning_curve`). L_dstl's noise -> teacher-sample pairs are read from `pairs_dir` (default:
    `latents_dir`). With `omega_range` G and D are guided (PaGoDA Sec. 4): the latents must be guided ones,
    the GAN's samples get omega ~ U(omega_range), and real images the `omega` array of `real_omegas_path`
    (one per training image: `guidance.label_real_images`) or, without it, a uniform draw.
    """
    device = loop.resolve_device(device)
    loop.init_distributed(device)
    torch.manual_seed(seed)  # new layers' initial weights and the discriminator's
    G = init_decoder(init_path, resolution=resolution, channels=growth_channels, num_res_blocks=growth_res_blocks,
                     trainable_output_blocks=trainable_output_blocks, growth_head=growth_head,
                     guided=omega_range is not None, device=device)
    images, labels, classes = load_dataset(data_dir, "train", resolution)
    real_omegas = np.load(real_omegas_path)["omega"] if real_omegas_path is not None else None
    latents = load_latents(latents_dir)
    if objective in ("distillation", "both") and G.config.out_resolution != G.config.img_resolution:
        raise ValueError(f"objective {objective!r} applies to Stage 2 only: its teacher pairs are "
                         f"{G.config.img_resolution}x{G.config.img_resolution} samples, not {resolution}x{resolution} "
                         "targets; grow with 'reconstruction' (or 'none')")
    pairs_dir = pairs_dir or latents_dir
    pairs = load_latents(pairs_dir, prefix="pairs") if objective in ("distillation", "both") else None
    # Frozen feature networks, shared by the distance and D (paper: DeiT-B + EfficientNet-lite0 via timm).
    backbone = feature_networks(backbones, feature_size, source=backbone_source)
    d_backbone = backbone if d_feature_size in (None, feature_size) else \
        feature_networks(backbones, d_feature_size, source=backbone_source)
    D = ProjectedDiscriminator(num_classes=len(classes) if G.label_emb is not None else 0,
                               omega_conditioned=omega_range is not None, backbone=d_backbone)
    dist_fn = ReconstructionDistance(distance, backbone=backbone)
    task = DecoderTask(G, D, dist_fn, latents=latents, targets=images, train_images=images, train_labels=labels,
                       pairs=pairs, objective=objective, batch_size=batch_size, lr_g=lr_g, lr_d=lr_d, beta2=beta2,
                       gan_weight=gan_weight, weighting=weighting, ema_decay=ema_decay, sigma_max=sigma_max,
                       omega_range=omega_range, real_omegas=real_omegas, device=device)
    guided = {} if omega_range is None else {  # unguided runs keep their fingerprints
        "omega_range": list(omega_range),
        "real_omegas": loop.file_fingerprint(real_omegas_path) if real_omegas_path is not None else "uniform"}
    loop.prepare_run_dir(run_dir, {
        "stage": "decoder", "resolution": resolution, "batch_size": batch_size, "lr_g": lr_g, "lr_d": lr_d,
        "beta2": beta2, "gan_weight": gan_weight, "weighting": weighting, "ema_decay": ema_decay, "distance": distance,
        "objective": objective, "feature_size": feature_size, "d_feature_size": d_feature_size,
        "backbones": [type(b).__name__ + ":" + getattr(b, "name", "efficientnet_lite0") for b in backbone],
        "network": G.config.to_dict(), "trainable_output_blocks": trainable_output_blocks, "sigma_max": sigma_max,
        "seed": seed, "curve_points": curve_points, "world_size": loop.world_size(),
        "init": loop.file_fingerprint(init_path),
        "latents": [loop.file_fingerprint(p) for p in list_shards(latents_dir)],
        "pairs": [loop.file_fingerprint(p) for p in list_shards(pairs_dir, prefix="pairs")]
        if pairs is not None else None,
        "data": loop.file_fingerprint(dataset_path(data_dir, "train", resolution)), **guided})
    rows = loop.run(task, run_dir=run_dir, total_steps=steps, seed=seed, checkpoint_every=checkpoint_every,
                    snapshot_steps=curve_steps(steps, curve_points), log_every=log_every, device=device,
                    progress=progress, desc=f"decoder {resolution}", max_steps_this_call=max_steps_this_call)
    timing = loop.read_timing(run_dir)
    summary = {"resolution": resolution, "base_resolution": G.config.img_resolution,
               "steps": rows[-1]["step"] if rows else 0,  # the last logged step (none yet early in a long run)
               "params": num_params(G), "trainable_params": num_params(G, trainable_only=True),
               "latent_pairs": int(len(latents["z"])), "objective": objective, "distance": distance,
               "weighting": weighting, "gan_weight": gan_weight, "sigma_max": sigma_max,
               "seconds": timing["seconds"], "device": timing["device"], "classes": list(classes), **guided}
    if summary["steps"] == steps and loop.rank() == 0:
        save_network(out_path, task.G, kind="decoder", ema=task.ema, meta=summary)
    return summary


# ----------------------------------------------------------------------------
# Looking at a trained decoder.

@torch.no_grad()
def reconstructions(decoder_path, *, latents_dir, data_dir, n=10, device="cpu"):
    """(real images at the decoder's resolution, G(z(x_low), y)) for the first n stored latents."""
    net, meta = load_network(decoder_path, device=device, expect_kind="decoder")
    lat = {k: v[:n] for k, v in load_latents(latents_dir).items()}
    images, _, _ = load_dataset(data_dir, "train", net.config.out_resolution)
    x = _flip_where(to_model(images[lat["index"]]), torch.as_tensor(lat["flip"]))
    labels = torch.as_tensor(lat["labels"]).to(device) if net.label_emb is not None else None
    x_hat = generate(net, torch.as_tensor(lat["z"]).to(device), labels,
                     sigma_max=meta.get("sigma_max", edm.SIGMA_MAX)).clamp(-1, 1).cpu()
    return x, x_hat


@torch.no_grad()
def same_noise_samples(paths, *, n=10, seed=0, labels=None, device="cpu"):
    """One-step samples of several decoders (e.g. consecutive stages) from the same z and labels."""
    nets = [load_network(p, device=device, expect_kind="decoder") for p in paths]
    cfg = nets[0][0].config
    noise = image_noise(seeds_for(n, seed), (cfg.in_channels, cfg.img_resolution, cfg.img_resolution), device)
    y = class_labels(n, cfg.num_classes) if labels is None else torch.as_tensor(labels)
    y = y.to(device) if y is not None else None
    # z = sigma_max n at each decoder's own sigma_max, as sampling.sample_decoder draws it.
    return [generate(net, s * noise, y, sigma_max=s).clamp(-1, 1).cpu()
            for net, s in ((net, meta.get("sigma_max", edm.SIGMA_MAX)) for net, meta in nets)]


def placement_error(high, base):
    """Mean |resize(high, base res) - base| on the [0, 1] intensity scale, per image and averaged.

    PaGoDA's claim (Sec. 3.2): growing keeps objects where the base generator put them, so the
    grown output seen at the base resolution matches the base output for the same z.
    """
    from .data import resize
    per_image = (resize(high, base.shape[-1]) - base).abs().flatten(1).mean(1) / 2
    return per_image
