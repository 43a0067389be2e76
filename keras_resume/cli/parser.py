"""The `keras-resume` argument parser: a table of the subcommands, their help, examples
and arguments (`SUBCOMMANDS`), built into argparse by `build_parser`, plus `run` from
`keras_resume.supervise`. Imports neither Keras nor the subcommands."""

from __future__ import annotations

import argparse
import importlib
import textwrap
from dataclasses import dataclass

from keras_resume.cli.exit_status import PROG

PLOT_INSTALL = "pip install 'keras-resume[plot]'"


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


def _positive(text: str) -> int:
    value = _non_negative(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def _argument(*flags: str, **options) -> tuple[tuple[str, ...], dict]:
    """One row of a subcommand's arguments: `add_argument(*flags, **options)`."""
    return flags, options


@dataclass(frozen=True)
class Subcommand:
    """One subcommand: its help (also its description), its example, and its arguments
    after the run directory, in the order --help lists them."""

    name: str
    help: str
    example: str
    arguments: tuple = ()


_JSON = _argument("--json", action="store_true", help="print JSON instead of a table (for scripts)")

DESCRIPTION = "Look into, check, export and prune a keras-resume run directory."
EXAMPLE = f"""
{PROG} ls runs/exp1                 # the checkpoints, the resume point, the best
{PROG} show runs/exp1               # history across restarts, resume points
{PROG} verify runs/exp1             # re-check every checksum
{PROG} export runs/exp1 --which best --to best.keras
{PROG} prune runs/exp1 --keep-last 2 --keep-every-epochs 10 --dry-run
{PROG} plot runs/exp1 --out curve.png
"""

SUBCOMMANDS = (
    Subcommand(
        "ls",
        "List the checkpoints of a run: epoch (1-based), step, global step, the monitored "
        "metric, size, age; marks the backup a resume continues from and the best one.",
        f"{PROG} ls runs/exp1\n{PROG} ls runs/exp1 --json | jq '.[] | select(.best)'",
        (_JSON,),
    ),
    Subcommand(
        "show",
        "Show what the manifest knows: without ID a summary (best value, per-epoch history "
        "across restarts, resume points, versions); with ID one checkpoint in full.",
        f"{PROG} show runs/exp1\n{PROG} show runs/exp1 12          # checkpoint 12: files, "
        f"sizes, checksums\n{PROG} show runs/exp1 --json   # the whole manifest",
        (_argument("id", nargs="?", help="a checkpoint id, 'latest' or 'best'"), _JSON),
    ),
    Subcommand(
        "verify",
        "Re-check the size and SHA-256 of every file of every checkpoint. Exit status 0 if "
        "all verify, 1 if any is damaged (the message names the file).",
        f"{PROG} verify runs/exp1 && echo intact",
        (_JSON,),
    ),
    Subcommand(
        "export",
        "Rebuild a checkpoint's model from its model.json, load the checkpoint, and save it "
        "as a .keras file or a TensorFlow SavedModel.",
        f"{PROG} export runs/exp1 --which best --to best.keras\n"
        f"{PROG} export runs/exp1 --which 12 --to serving/1 --format savedmodel",
        (
            _argument(
                "--which", default="latest", help="'latest' (default), 'best' or a checkpoint id"
            ),
            _argument("--to", required=True, help="the target: a .keras file or a directory"),
            _argument(
                "--format",
                choices=("keras", "savedmodel"),
                default="keras",
                help="keras (model.save, default) or savedmodel (model.export, TensorFlow backend)",
            ),
            _argument("--overwrite", action="store_true", help="replace an existing target"),
            _JSON,
        ),
    ),
    Subcommand(
        "prune",
        "Remove old checkpoints. Keeps the newest N backups, the newest K best checkpoints "
        "and the backups that completed every E-th epoch; never the newest backup or the "
        "current best. The manifest is updated first (atomically), then files are deleted.",
        f"{PROG} prune runs/exp1 --keep-last 2 --keep-every-epochs 10 --dry-run\n"
        f"{PROG} prune runs/exp1 --keep-last 2 --keep-every-epochs 10",
        (
            _argument(
                "--keep-last",
                type=_non_negative,
                default=1,
                metavar="N",
                help="backups to keep, newest first (default 1)",
            ),
            _argument(
                "--keep-best",
                type=_non_negative,
                default=1,
                metavar="K",
                help="best checkpoints to keep, newest first (default 1)",
            ),
            _argument(
                "--keep-every-epochs",
                type=_positive,
                default=None,
                metavar="E",
                help="also keep the epoch-end backup of every E-th epoch (1-based; default none)",
            ),
            _argument("--dry-run", action="store_true", help="only print what would be removed"),
            _JSON,
        ),
    ),
    Subcommand(
        "plot",
        "Plot the per-epoch metrics across restarts, with the resume points as dashed lines "
        f"and the best epoch starred. Needs matplotlib: {PLOT_INSTALL}.",
        f"{PROG} plot runs/exp1 --out curve.png\n"
        f"{PROG} plot runs/exp1 --out acc.pdf --metrics accuracy val_accuracy",
        (
            _argument("--out", required=True, help="the image to write (.png, .pdf, .svg)"),
            _argument(
                "--metrics",
                nargs="+",
                default=None,
                help="metrics to plot (default: every metric named *loss*, or all)",
            ),
            _argument("--dpi", type=int, default=120, help="resolution of a raster image"),
        ),
    ),
)

RUN_HELP = "run a training command, and rerun it after a crash until it finishes"
SUPERVISE = "keras_resume.supervise"


def _epilog(text: str) -> str:
    return "Example:\n" + textwrap.indent(textwrap.dedent(text).strip("\n"), "  ")


def build_parser() -> argparse.ArgumentParser:
    """The `keras-resume` argument parser, subcommands included."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=DESCRIPTION,
        epilog=_epilog(EXAMPLE),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for subcommand in SUBCOMMANDS:
        sub = subparsers.add_parser(
            subcommand.name,
            help=subcommand.help,
            description=subcommand.help,
            epilog=_epilog(subcommand.example),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sub.set_defaults(needs_run=True)
        sub.add_argument("run", help="the run directory (a path or an fsspec URL)")
        for flags, options in subcommand.arguments:
            sub.add_argument(*flags, **options)
    _add_run_command(subparsers)
    return parser


def _add_run_command(subparsers) -> None:
    """`run`, from `keras_resume.supervise` when that package exists."""
    try:
        supervise = importlib.import_module(SUPERVISE)
    except ModuleNotFoundError as e:
        if e.name != SUPERVISE:
            _add_broken_run(subparsers, e)
        return
    except Exception as e:  # noqa: BLE001 - a broken module must not break the other commands
        _add_broken_run(subparsers, e)
        return
    # add_arguments sets the description and the epilog (with its example).
    parser = subparsers.add_parser("run", help=RUN_HELP)
    supervise.add_arguments(parser)
    parser.set_defaults(run_command=supervise.run_command, needs_run=False)


def _add_broken_run(subparsers, error: Exception) -> None:
    parser = subparsers.add_parser("run", help=f"(unavailable: {SUPERVISE} failed)")
    parser.add_argument("rest", nargs=argparse.REMAINDER)
    parser.set_defaults(run_error=error, needs_run=False)
