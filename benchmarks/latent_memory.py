"""Memory per training process for latent shard sets of growing size: in-memory concatenation vs memory maps.

Writes synthetic shards (float32 z of shape (3, R, R) plus labels, index, flip, as `pagoda.encode` writes
them), then, in a fresh process per case, loads them and reads `--batches` random batches the way
`DecoderTask` does. Prints the peak private (anonymous) memory of each process, which is what each DDP rank
pays on its own; file pages of a memory map are page cache, shared between the ranks of a node.

    python benchmarks/latent_memory.py --shards 4 --shard-size 2000 --scale 10
"""

import argparse
import json
import pathlib
import subprocess
import sys
import tempfile

import numpy as np

CHILD = r"""
import json, sys
import numpy as np
from pagoda import encode

def anon_mb():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024

out_dir, mode, batches, batch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
base = anon_mb()
if mode == "concatenate":  # what load_latents did before: every shard in RAM
    parts = [dict(np.load(p)) for p in encode.list_shards(out_dir)]
    lat = {k: np.concatenate([p[k] for p in parts]) for k in parts[0] if parts[0][k].ndim}
    del parts
else:
    lat = encode.load_latents(out_dir)
peak = anon_mb()
rng = np.random.default_rng(0)
for _ in range(batches):
    i = rng.integers(len(lat["z"]), size=batch)
    z = np.asarray(lat["z"][i]) + 0  # one training batch of latents
    peak = max(peak, anon_mb())
print(json.dumps({"peak_anon_mb": peak - base, "latents": int(len(lat["z"]))}))
"""


def write_shards(out_dir, n_shards, shard_size, resolution, seed=0):
    rng = np.random.default_rng(seed)
    for k in range(n_shards):
        z = (80 * rng.standard_normal((shard_size, 3, resolution, resolution))).astype(np.float32)
        np.savez(pathlib.Path(out_dir) / f"shard-{k:05d}.npz", z=z, labels=np.zeros(shard_size, np.int64),
                 index=np.arange(shard_size), flip=np.zeros(shard_size, bool), seconds=np.float64(0))


def measure(out_dir, mode, batches, batch):
    res = subprocess.run([sys.executable, "-c", CHILD, str(out_dir), mode, str(batches), str(batch)],
                         capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--shard-size", type=int, default=2000)
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--scale", type=int, default=10, help="the larger set has this many times the shards")
    parser.add_argument("--batches", type=int, default=50)
    parser.add_argument("--batch", type=int, default=256)
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in (args.shards, args.shards * args.scale):
            d = pathlib.Path(tmp) / str(n)
            d.mkdir()
            write_shards(d, n, args.shard_size, args.resolution)
            size_mb = sum(p.stat().st_size for p in d.iterdir()) / 2 ** 20
            for mode in ("concatenate", "memmap"):
                r = measure(d, mode, args.batches, args.batch)
                rows.append({"shards": n, "on_disk_mb": round(size_mb), "mode": mode, **r})
                print(f"{n:>4} shards ({size_mb:7.0f} MB on disk)  {mode:<12} peak private memory "
                      f"{r['peak_anon_mb']:8.1f} MB")
    for mode in ("concatenate", "memmap"):
        small, large = [r["peak_anon_mb"] for r in rows if r["mode"] == mode]
        print(f"{mode}: {args.scale}x the shards -> {large / max(small, 1e-9):.2f}x the memory")


if __name__ == "__main__":
    main()
