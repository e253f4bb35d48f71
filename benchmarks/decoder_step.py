"""Seconds per decoder step, per stage of a finished default run, for the stage's configuration and variants of it.

Each stage is rebuilt from the run's own files (data, latents, the previous stage's decoder) exactly as
`pagoda.decoder.train_decoder` builds it, trained `--warmup` steps, then `--steps` more; the time of those is
read from the stage's timing record. Variants change one keyword of the stage (e.g. the feature networks'
input size) and print their ratio to the configured stage, measured in the same process, one after the other.
`--before CONFIG` also times each stage as another configuration sets it up (e.g. the parent commit's,
`git show PARENT:config/config.yaml > /tmp/before.yaml`) and prints the configured stage's ratio to it.
`--profile` adds torch.profiler's table of the top operators for one stage.

    python benchmarks/decoder_step.py --results results --variant feature_size=32 [--profile 32] [--json PATH]
    python benchmarks/decoder_step.py --results results --before /tmp/before.yaml
"""

import argparse
import inspect
import json
import pathlib
import tempfile

import torch
import yaml

from pagoda import decoder, loop, workflow


def stage_kwargs(config, results, index):
    """train_decoder's keywords for stage `index`, as the workflow gives them, reading a finished run under
    `results`; no learning-curve snapshots (they are not part of a step)."""
    # Configurations from before beta2 was a key ran RAdam with train_decoder's (the paper's) default.
    beta2 = inspect.signature(decoder.train_decoder).parameters["beta2"].default
    decoder_config = {"beta2": beta2, **config["decoder"], "curve_points": 0}
    return workflow.decoder_stage({**config, "results": results, "decoder": decoder_config}, index)


def seconds_per_step(kwargs, *, warmup, steps):
    """Train `warmup` steps, then `steps` more in a second call; the second call's seconds per step."""
    with tempfile.TemporaryDirectory() as tmp:
        common = dict(kwargs, run_dir=f"{tmp}/run", out_path=f"{tmp}/decoder.pt", steps=warmup + steps,
                      checkpoint_every=warmup, progress=False)
        decoder.train_decoder(**common, max_steps_this_call=warmup)
        before = loop.read_timing(f"{tmp}/run")["seconds"]
        decoder.train_decoder(**common, max_steps_this_call=steps)
        return (loop.read_timing(f"{tmp}/run")["seconds"] - before) / steps


def profile_stage(kwargs, *, steps, rows=20):
    """torch.profiler's operator table of `steps` steps of one stage (after one warm-up step)."""
    from torch.profiler import ProfilerActivity, profile
    with tempfile.TemporaryDirectory() as tmp:
        common = dict(kwargs, run_dir=f"{tmp}/run", out_path=f"{tmp}/decoder.pt", steps=1 + steps,
                      checkpoint_every=1, progress=False)
        decoder.train_decoder(**common, max_steps_this_call=1)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            decoder.train_decoder(**common, max_steps_this_call=steps)
    return prof.key_averages().table(sort_by="cpu_time_total", row_limit=rows)


def parse_variant(text):
    key, value = text.split("=", 1)
    return key, yaml.safe_load(value)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", default="results", help="a finished run's results folder")
    p.add_argument("--config", default="config/config.yaml", help="the configuration that run used")
    p.add_argument("--before", help="another configuration to time each stage under (ratio = configured / before)")
    p.add_argument("--variant", action="append", default=[], type=parse_variant, metavar="KEY=VALUE",
                   help="a train_decoder keyword to change (repeatable; each variant changes one)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--threads", type=int, default=2, help="torch threads (the rule's: all cores)")
    p.add_argument("--profile", type=int, metavar="RES", help="also print the operator table of this stage")
    p.add_argument("--json")
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    config = yaml.safe_load(pathlib.Path(args.config).read_text())
    before = yaml.safe_load(pathlib.Path(args.before).read_text()) if args.before else None
    rows = []
    for index, res in enumerate(config["resolutions"]):
        kwargs = stage_kwargs(config, args.results, index)
        base = seconds_per_step(kwargs, warmup=args.warmup, steps=args.steps)
        new = [{"resolution": res, "variant": "configured", "seconds_per_step": base, "ratio": 1.0}]
        if before is not None:  # the ratio is then configured / before, on the configured row
            t = seconds_per_step(stage_kwargs(before, args.results, index), warmup=args.warmup, steps=args.steps)
            new = [{"resolution": res, "variant": "before", "seconds_per_step": t, "ratio": 1.0},
                   {**new[0], "ratio": base / t}]
        for key, value in args.variant:
            t = seconds_per_step(dict(kwargs, **{key: value}), warmup=args.warmup, steps=args.steps)
            new.append({"resolution": res, "variant": f"{key}={value}", "seconds_per_step": t, "ratio": t / base})
        rows += new
        for row in new:
            print(f"{row['resolution']:>4} px  {row['variant']:<24} {row['seconds_per_step'] * 1000:7.0f} ms/step"
                  f"  x{row['ratio']:.2f}", flush=True)
        if args.profile == res:
            print(profile_stage(kwargs, steps=args.steps))
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
