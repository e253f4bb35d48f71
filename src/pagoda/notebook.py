"""Execute a stage's notebook with papermill, its kernel reached over Unix sockets instead of TCP.

`python -m pagoda.notebook NOTEBOOK OUTPUT -y YAML` is `papermill NOTEBOOK OUTPUT -k python3
--log-output --no-progress-bar -y YAML` with two changes. Jupyter's default transport is TCP on ports
that the manager finds free, releases, and writes into the kernel's connection file; when several
kernels start at once (two Snakemake jobs, a test process's nbval kernel beside them) another process
can take such a port before the kernel binds it, and the kernel dies with "Address already in use"
(this failed a CI run). Unix sockets in a private temporary folder cannot be taken by anyone else.

The command also keeps jsonschema from loading `rfc3987_syntax`, which builds an IRI grammar at import
(1.2 s of every job's 1.5 s `import papermill` on the 2-core machine) for a format check that notebook
validation never uses; jsonschema skips that check when the module cannot be imported.
"""

import argparse
import logging
import sys
import tempfile

import yaml
from traitlets.config import Config


def kernel_config(folder):
    """The kernel manager's settings: IPC sockets named after a connection file in `folder`.

    The sockets are `<folder>/kernel-ipc-<n>`; a short folder keeps them under the 107-byte limit of a
    Unix socket path, which a deep Jupyter runtime directory can exceed."""
    return Config({"KernelManager": {"transport": "ipc", "connection_file": f"{folder}/kernel.json"}})


def parse_parameters(texts):
    """Papermill's -y: YAML 1.1 read with papermill's own loader (dates stay strings), later texts win."""
    from papermill.iorw import NoDatesSafeLoader  # imported on use, after main() has blocked rfc3987_syntax
    parameters = {}
    for text in texts:
        parameters.update(yaml.load(text, Loader=NoDatesSafeLoader) or {})
    return parameters


def execute(notebook, output, parameters, *, kernel_name="python3"):
    """Run `notebook` with `parameters` injected, writing the executed copy to `output` as it goes."""
    import papermill
    with tempfile.TemporaryDirectory(prefix="pagoda-kernel-") as folder:
        return papermill.execute_notebook(notebook, output, parameters=parameters, kernel_name=kernel_name,
                                          log_output=True, progress_bar=False, config=kernel_config(folder))


def main(argv=None):
    sys.modules.setdefault("rfc3987_syntax", None)  # import -> ImportError in this process only (docstring)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebook")
    parser.add_argument("output")
    parser.add_argument("-y", "--parameters-yaml", action="append", default=[],
                        help="parameters as a YAML string (papermill's -y)")
    args = parser.parse_args(argv)
    # What papermill's command line prints: the cells' output, through its logger, on stderr.
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    execute(args.notebook, args.output, parse_parameters(args.parameters_yaml))


if __name__ == "__main__":
    main()
