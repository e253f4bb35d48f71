"""Run a training function in this process, or under torchrun with one DDP process per GPU.

Papermill executes a notebook in one kernel, which torchrun cannot fork into ranks. A training
notebook therefore calls `launch("pagoda.decoder:train_decoder", kwargs, nproc_per_node=...)`: with
one process it simply calls the function; with several it starts
`torchrun --standalone --nproc_per_node N -m pagoda.launch ...`, streams the ranks' output into the
notebook, and returns rank 0's result, so the notebook goes on to show it. The training functions
are DDP-ready (`pagoda.loop`): each rank takes its slice of the global batch and gradients are
averaged, so the result matches one process with the same global batch.
"""

import importlib
import json
import os
import pathlib
import subprocess
import sys

import torch


THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS",
                    "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")


def nproc_per_node(setting="auto"):
    """Processes for a training job: 'auto' = every visible CUDA device (1 on a CPU-only machine)."""
    if setting == "auto":
        return max(1, torch.cuda.device_count()) if torch.cuda.is_available() else 1
    n = int(setting)
    if n < 1:
        raise ValueError(f"nproc_per_node must be 'auto' or >= 1, got {setting!r}")
    return n


def call(target, kwargs):
    """target = 'package.module:function'."""
    module, _, name = target.partition(":")
    if not name:
        raise ValueError(f"target must look like 'pagoda.module:function', got {target!r}")
    return getattr(importlib.import_module(module), name)(**kwargs)


def launch(target, kwargs, *, nproc_per_node=1, work_dir, threads_per_process=None):
    """Run `target(**kwargs)` on `nproc_per_node` processes; return rank 0's (JSON-serialisable) result.

    `work_dir` receives the arguments and the result as JSON (`launch.json`, `launch_result.json`).
    On CPU each process gets `threads_per_process` threads (default: this process's share).
    """
    if nproc_per_node == 1 or int(os.environ.get("WORLD_SIZE", 1)) > 1:
        return call(target, kwargs)
    work_dir = pathlib.Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    args_path, result_path = work_dir / "launch.json", work_dir / "launch_result.json"
    args_path.write_text(json.dumps({"target": target, "kwargs": kwargs}, indent=1))
    result_path.unlink(missing_ok=True)
    threads = threads_per_process or max(1, torch.get_num_threads() // nproc_per_node)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc_per_node}",
           "-m", "pagoda.launch", str(args_path), str(result_path)]
    # Every threading library's variable, not OMP's alone: Snakemake sets MKL_NUM_THREADS & co. to the job's
    # threads, and torch then ran each rank with all of them (oversubscribed: 2 steps took 16 s, not 0.3 s).
    env = {**os.environ, **{var: str(threads) for var in THREAD_VARIABLES},
           "PYTHONPATH": os.pathsep.join(filter(None, [str(pathlib.Path(__file__).parents[1]),
                                                        os.environ.get("PYTHONPATH")]))}
    print("launching:", " ".join(cmd), flush=True)
    with subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        for line in proc.stdout:  # the ranks' output appears in the notebook and its log
            print(line, end="", flush=True)
    if proc.returncode:
        raise RuntimeError(f"torchrun exited with status {proc.returncode}: {' '.join(cmd)}")
    return json.loads(result_path.read_text())


def job_main(jobs, argv=None, *, description=None):
    """A workflow job's command line: `python -m pagoda.MODULE JOB 'JSON keywords'`, where `jobs` maps each
    JOB to (target, keywords it always gets). Prints the target's result as JSON (the job's log)."""
    import argparse
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("job", choices=sorted(jobs))
    parser.add_argument("params", help="the job's keyword arguments as JSON text")
    args = parser.parse_args(argv)
    target, extra = jobs[args.job]
    print(json.dumps(call(target, {**json.loads(args.params), **extra}), indent=1, default=str))


def main(argv=None):
    """Entry point of each torchrun rank: python -m pagoda.launch ARGS.json RESULT.json."""
    args_path, result_path = argv or sys.argv[1:]
    spec = json.loads(pathlib.Path(args_path).read_text())
    result = call(spec["target"], spec["kwargs"])
    import torch.distributed as dist
    if not dist.is_initialized() or dist.get_rank() == 0:
        pathlib.Path(result_path).write_text(json.dumps(result, indent=1))
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
