"""Where the stages write under a results folder: one naming shared by the workflow's rules and the notebooks."""

import json
import pathlib


def teacher_path(results):
    return f"{results}/teacher/teacher.pt"


def decoder_path(decoder_dir, resolution):
    return f"{decoder_dir}/{resolution}/decoder.pt"


def judge_path(judges_dir, resolution):
    return f"{judges_dir}/{resolution}/judge.pt"


def reference_path(eval_dir, resolution):
    return f"{eval_dir}/reference_{resolution}.npz"


def record_path(eval_dir, method, resolution):
    return f"{eval_dir}/{method}_{resolution}.json"


def samples_path(eval_dir, method, resolution):
    return f"{eval_dir}/samples/{method}_{resolution}.npz"


def record_samples_path(record):
    """The samples written with an evaluation record: {eval_dir}/samples/{name}.npz next to {eval_dir}/{name}.json."""
    parent, _, name = str(record).rpartition("/")
    return f"{parent}/samples/{name.removesuffix('.json')}.npz"


def read_records(paths):
    """The evaluation records (one JSON object each) at `paths`, in order."""
    return [json.loads(pathlib.Path(p).read_text()) for p in paths]
