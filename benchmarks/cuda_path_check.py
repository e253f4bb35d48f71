"""Every stage of the study at smoke size on one device (a CUDA-path check; the tests run on CPU).

Takes a data folder written by the data stage (e.g. results/smoke/data from `pytest --nbval`) and runs,
on `--device`: teacher training (through pagoda.launch), encoding, Stage 2 and one growth stage,
the judge at 16, reference statistics and one evaluation row, and the inverse-problem study. Prints each
stage's seconds and result; any device-placement bug stops it with a traceback.

    python benchmarks/cuda_path_check.py --data results/smoke/data --out /tmp/cuda_check --device cuda
"""

import argparse
import json
import pathlib
import time

from pagoda import decoder, encode, evaluate, inverse_study, judge, launch


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="data stage output with train/test at 8, 16 (and 32)")
    p.add_argument("--out", required=True)
    p.add_argument("--device", default="cuda")
    args = p.parse_args()
    out, data, dev = pathlib.Path(args.out), args.data, args.device
    for sub in ("eval", "judge"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    report = {}

    def stage(name, fn):
        t0 = time.time()
        result = fn()
        report[name] = {"seconds": round(time.time() - t0, 2)}
        print(f"{name:12s} {report[name]['seconds']:7.2f} s", flush=True)
        return result

    teacher = out / "teacher" / "teacher.pt"
    stage("teacher", lambda: launch.launch("pagoda.teacher:train_teacher", dict(
        data_dir=data, resolution=8, run_dir=str(out / "teacher"), out_path=str(teacher),
        network={"model_channels": 16, "channel_mult": [1, 2], "num_res_blocks": 1, "attention_resolutions": [4],
                 "num_head_channels": 8}, total_steps=20, batch_size=64, checkpoint_every=10, device=dev,
        progress=False), nproc_per_node=launch.nproc_per_node("auto"), work_dir=out / "teacher"))
    summary = stage("encode", lambda: encode.encode_dataset(
        teacher_path=teacher, data_dir=data, resolution=8, out_dir=out / "latents", n_images=64, num_points=10,
        shard_size=64, device=dev, progress=False))
    report["encode"]["images_per_sec"] = summary.get("images_per_sec")
    paths = {}
    for res, init in ((8, teacher), (16, None)):
        paths[res] = out / "decoder" / str(res) / "decoder.pt"
        stage(f"decoder_{res}", lambda res=res, init=init: decoder.train_decoder(
            data_dir=data, latents_dir=out / "latents", init_path=init or paths[8], run_dir=out / "decoder" / str(res),
            out_path=paths[res], resolution=res, steps=4, batch_size=16, feature_size=32, checkpoint_every=2,
            weighting="adaptive" if res == 8 else "separate", device=dev, progress=False))
    judge_path = out / "judge" / "judge.pt"
    stage("judge", lambda: judge.train_judge(data_dir=data, resolution=16, run_dir=out / "judge", out_path=judge_path,
                                             steps=20, device=dev, progress=False))
    ref = out / "eval" / "reference_16.npz"
    stage("reference", lambda: evaluate.reference_statistics(data_dir=data, resolution=16, out_path=ref,
                                                             judge_path=judge_path, n_images=200, swd_images=128,
                                                             device=dev))
    record = stage("evaluate", lambda: evaluate.evaluate(
        "pagoda", 16, resolutions=[8, 16], reference_path=ref, judge_path=judge_path,
        out_path=out / "eval" / "pagoda_16.json", samples_path=out / "eval" / "pagoda_16.npz", n_samples=128,
        data_dir=data, decoder_path=paths[16], swd_min_resolution=8, device=dev))
    report["evaluate"].update({k: record[k] for k in ("fd_judge", "swd", "fd_effnet")})
    study = stage("inverse", lambda: inverse_study.run_study(
        data_dir=data, teacher_path=teacher, decoder_path=paths[16], judge_path=judge_path, n_images=8, num_points=6,
        device=dev, opt_steps=5))
    report["inverse"]["rows"] = len(study["table"])
    print(json.dumps(report, indent=1))
    (out / "cuda_path_check.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
