"""Progressive growing (PaGoDA Sec. 3.2): a decoder with more 2x levels that starts where its parent was."""

import dataclasses
import math

from .networks import GrowthLevel, UNet


def grow(net: UNet, *, factor=2, channels=None, num_res_blocks=2):
    """A copy of `net` with log2(factor) more 2x levels appended before the output head.

    Every existing parameter is copied, the head included. The new ResBlocks' last convs (and, with
    growth_head="residual", the new image residual's conv) are zero, so the grown network's output
    equals the nearest-neighbour upsampling of `net`'s output (exactly for "residual"; approximately
    for "shared", whose 3x3 head then runs at the new resolution).
    """
    if factor < 2 or factor & (factor - 1):
        raise ValueError(f"growth factor must be a power of two >= 2, got {factor}")
    channels = channels or net.out[0].num_channels
    levels = tuple(GrowthLevel(channels, num_res_blocks) for _ in range(int(math.log2(factor))))
    cfg = dataclasses.replace(net.config, growth=net.config.growth + levels)
    grown = UNet(cfg).to(next(net.parameters()).device)
    # Growing only appends blocks: every parameter of the parent exists, with its shape, in the grown net.
    new = grown.state_dict()
    new.update({name: value.clone() for name, value in net.state_dict().items()})
    grown.load_state_dict(new)
    return grown
