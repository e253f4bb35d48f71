"""What a configuration asks the workflow to run: its resolutions, encoder shards and table rows.

The Snakefile imports this module (with `layout` and `workflow`) at every start, dry runs included, so it
imports no torch: that import alone was 2.3 s of a 7 s `snakemake -n` on the 2-core machine.
"""

FASHION_MNIST_SIZE = 32  # 28x28 zero-padded by 2 on each side
METHODS = ("data_test", "teacher_ode", "teacher_ode_bicubic", "pagoda", "stage2_bicubic", "data_bicubic")
# The generator behind each *_bicubic row, whose base-resolution samples it upsamples.
BICUBIC_SOURCE = {"teacher_ode_bicubic": "teacher_ode", "stage2_bicubic": "pagoda"}


def check_resolutions(resolutions, data_size):
    """Reject resolution lists the pipeline cannot build: each must divide the data size."""
    bad = [r for r in resolutions if r > data_size or data_size % r]
    if bad:
        raise ValueError(f"resolutions {bad} do not divide the data size {data_size}: every resolution "
                         f"must be data_size / 2^k (e.g. {[data_size // 4, data_size // 2, data_size]})")
    bad = [r for r in resolutions if r & (r - 1)]
    if bad:
        raise ValueError(f"resolutions {bad} are not powers of two")


def num_shards(n_images, shard_size, *, flips=True):
    """How many shard files `encode.encode_dataset` writes for these settings."""
    return -(-n_images * (2 if flips else 1) // shard_size)


def applies(method, resolution, resolutions):
    """Whether `method` has a row at `resolution` (base = resolutions[0])."""
    base = resolutions[0]
    if method in ("data_test", "pagoda"):
        return resolution in resolutions
    if method == "teacher_ode":
        return resolution == base
    if method in ("teacher_ode_bicubic", "stage2_bicubic", "data_bicubic"):
        return resolution in resolutions and resolution != base
    raise ValueError(f"unknown method {method!r}; known: {METHODS}")


def rows(resolutions):
    """All (method, resolution) pairs of the table, in table order."""
    return [(m, r) for m in METHODS for r in resolutions if applies(m, r, resolutions)]
