"""`python -m pagoda.notebook`, the workflow's papermill command: parameters, the kernel's transport, failures."""

import json
import os
import pathlib
import subprocess
import sys

import nbformat

from pagoda import notebook, workflow

SRC = pathlib.Path(__file__).resolve().parents[1] / "src"


def write_notebook(path, body):
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                           "language": "python"}})
    parameters = nbformat.v4.new_code_cell("lr_g = 0.0\nname = ''")
    parameters.metadata["tags"] = ["parameters"]
    nb.cells = [parameters, nbformat.v4.new_code_cell(body)]
    nbformat.write(nb, path)


def run(*args, python=()):
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    return subprocess.run([sys.executable, *python, "-m", "pagoda.notebook", *map(str, args)], env=env,
                          capture_output=True, text=True)


def test_kernel_runs_on_unix_sockets_with_typed_parameters(tmp_path):
    # TCP ports chosen by the manager can be taken by another process before the kernel binds them
    # ("Address already in use" failed a CI run); the kernel must listen on IPC sockets of its own.
    write_notebook(tmp_path / "in.ipynb", "import json\nfrom ipykernel.connect import get_connection_info\n"
                                          "info = json.loads(get_connection_info())\n"
                                          "print(json.dumps([info['transport'], info['ip'], lr_g, name]))")
    out = run(tmp_path / "in.ipynb", tmp_path / "out.ipynb", "-y", workflow.notebook_parameters(lr_g=8e-6, name="1e5"))
    assert out.returncode == 0, out.stderr
    printed = nbformat.read(tmp_path / "out.ipynb", as_version=4).cells[-1].outputs[0]["text"]
    transport, ip, lr_g, name = json.loads(printed)
    assert transport == "ipc" and pathlib.Path(ip).name == "kernel-ipc"
    assert not pathlib.Path(ip).parent.exists()  # the sockets' folder is removed with the kernel
    assert lr_g == 8e-6 and name == "1e5"
    assert "lr_g = 8e-06" in (tmp_path / "out.ipynb").read_text()  # papermill's injected-parameters cell
    assert "Executing Cell" in out.stderr  # the cells' progress reaches the rule's log, as papermill's CLI does


def test_a_failing_cell_fails_the_command_and_keeps_the_executed_copy(tmp_path):
    write_notebook(tmp_path / "in.ipynb", "raise ValueError('stage failed')")
    out = run(tmp_path / "in.ipynb", tmp_path / "out.ipynb")
    assert out.returncode != 0 and "stage failed" in out.stderr
    assert "stage failed" in (tmp_path / "out.ipynb").read_text()  # the rule's log shows where it failed


def test_parameters_are_read_as_papermill_reads_them():
    # YAML 1.1 with papermill's loader: later -y texts win, dates stay strings, 8.0e-06 is a float.
    parsed = notebook.parse_parameters(["{lr_g: 8.0e-06, day: 2024-01-02, steps: 3}", "{steps: 4}"])
    assert parsed == {"lr_g": 8e-6, "day": "2024-01-02", "steps": 4}


def test_the_command_does_not_build_jsonschemas_iri_grammar(tmp_path):
    # rfc3987_syntax compiles a grammar at import: 1.2 s of every Snakemake job, for a check nbformat never makes.
    write_notebook(tmp_path / "in.ipynb", "print(lr_g)")
    out = run(tmp_path / "in.ipynb", tmp_path / "out.ipynb", python=("-X", "importtime"))
    assert out.returncode == 0, out.stderr[-2000:]
    imported = {line.split("|")[-1].strip() for line in out.stderr.splitlines() if line.startswith("import time:")}
    assert "jsonschema" in imported  # notebook validation is loaded ...
    assert "rfc3987_syntax.syntax_helpers" not in imported and "lark" not in imported  # ... the IRI grammar is not
