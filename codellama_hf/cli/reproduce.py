"""`codellama-hf reproduce`: the Code Llama miniature, an experiment that lives beside the library.

The experiment (experiments/miniature/ in the repository: its pipeline, toy data and report template) uses the
library but is not part of it, so a wheel install does not ship it; this command finds it in the checkout the
package was installed from (`pip install -e .`) and runs it, exactly as `python -m experiments.miniature` does.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

EXPERIMENT = Path(__file__).resolve().parents[2] / "experiments" / "miniature"
_MODULE = "codellama_hf_miniature"


def _experiment_main():
    """experiments/miniature/__main__.py, imported under a private name so its relative imports resolve."""
    if _MODULE not in sys.modules:
        init = EXPERIMENT / "__init__.py"
        if not init.is_file():
            raise FileNotFoundError(
                f"{EXPERIMENT}: the miniature experiment ships with the repository, not the package; "
                "run it from a checkout (git clone, then pip install -e .)"
            )
        spec = importlib.util.spec_from_file_location(_MODULE, init, submodule_search_locations=[str(EXPERIMENT)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[_MODULE] = module
        spec.loader.exec_module(module)
    return importlib.import_module(f"{_MODULE}.__main__")


def _missing(err: FileNotFoundError):
    def run(args: argparse.Namespace) -> int:
        raise err

    return run


def register(subparsers) -> None:
    help = "Code Llama in miniature: the whole recipe on a CPU, with a report on the paper's claims"
    try:
        experiment = _experiment_main()
    except FileNotFoundError as err:  # still listed, and says where the experiment is when run
        parser = subparsers.add_parser("reproduce", help=help)
        parser.set_defaults(func=_missing(err))
        return
    parser = subparsers.add_parser(
        "reproduce",
        help=help,
        description=experiment.DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    experiment.add_arguments(parser)
    parser.set_defaults(func=experiment.run)
