"""Choose the Stage-2 GAN weight with the judge, on seeds the reported table does not use.

Trains the Stage-2 decoder of a finished default run once per candidate weight, with the run's teacher,
latents and config otherwise unchanged, but with another training seed, and scores each in the base
resolution's judge with evaluation noise of another seed than the table's (seed 0). Prints one row per
weight and writes them as CSV. Each candidate costs one Stage-2 training (about 4 minutes on 2 cores).

    python benchmarks/choose_gan_weight.py --results results --weights 0.2 0.5 --seed 1 --out results/gan_weight.csv
"""

import argparse
import pathlib

import pandas as pd
import yaml

from pagoda import decoder, evaluate


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", default="results", help="a finished default run (teacher, latents, judge, reference)")
    p.add_argument("--config", default="config/config.yaml")
    p.add_argument("--weights", type=float, nargs="+", default=[0.2, 0.5])
    p.add_argument("--seed", type=int, default=1, help="training and evaluation seed (the table uses 0)")
    p.add_argument("--out", default=None, help="CSV of the rows (default: <results>/gan_weight_seed<seed>.csv)")
    args = p.parse_args()
    cfg = yaml.safe_load(pathlib.Path(args.config).read_text())
    if args.seed == cfg["seed"]:
        raise SystemExit(f"--seed {args.seed} is the table's seed: choose on another one")
    res, dec, ev = cfg["resolutions"][0], cfg["decoder"], cfg["evaluate"]
    stage = dec["stages"][0]
    results = pathlib.Path(args.results)
    work = results / "gan_weight"
    rows = []
    for w in args.weights:
        run = work / f"seed{args.seed}_w{w}"
        summary = decoder.train_decoder(
            data_dir=results / "data", latents_dir=results / "latents", init_path=results / "teacher" / "teacher.pt",
            run_dir=run, out_path=run / "decoder.pt", resolution=res, steps=stage["steps"],
            batch_size=stage.get("batch_size", dec["batch_size"]), lr_g=dec["lr_g"], lr_d=dec["lr_d"], gan_weight=w,
            weighting=stage["weighting"], ema_decay=dec["ema_decay"], distance=dec["distance"],
            objective=dec["objective"], feature_size=stage["feature_size"], backbones=dec["backbones"],
            backbone_source=dec["backbone_source"], sigma_max=dec["sigma_max"],
            checkpoint_every=dec["checkpoint_every"], seed=args.seed, progress=False)
        record = evaluate.evaluate(
            "pagoda", res, resolutions=cfg["resolutions"], reference_path=results / "eval" / f"reference_{res}.npz",
            judge_path=results / "judge" / str(res) / "judge.pt", out_path=run / "record.json",
            samples_path=run / "samples.npz", n_samples=ev["n_samples"], seed=args.seed, data_dir=results / "data",
            decoder_path=run / "decoder.pt", feature_size=ev["feature_size"], k=ev["k"],
            swd_min_resolution=ev["swd_min_resolution"], swd_descriptors_per_image=ev["swd_descriptors_per_image"],
            swd_projections=ev["swd_projections"])
        rows.append({"gan_weight": w, "seed": args.seed, "train_seconds": summary.get("seconds"),
                     **{k: record[k] for k in ("fd_judge", "kid_judge", "precision_judge", "recall_judge", "swd",
                                               "fd_effnet", "recall")}})
        print(pd.DataFrame(rows).round(4).to_string(index=False), flush=True)
    out = pathlib.Path(args.out or results / f"gan_weight_seed{args.seed}.csv")
    pd.DataFrame(rows).to_csv(out, index=False)
    print(f"written {out}")


if __name__ == "__main__":
    main()
