"""How `keras-resume` prints: rich consoles and tables, JSON for scripts, and the
short forms of sizes, ages, metric values and steps used in its tables. Rich is
imported on first use."""

from __future__ import annotations

import json
import sys


def console(stderr: bool = False):
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    # Piped output (a file, a test's capture) is not cut at 80 columns.
    width = None if stream.isatty() else 160
    return Console(stderr=stderr, highlight=False, width=width, soft_wrap=False)


def print_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, indent=1, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()


def human_size(size) -> str:
    from rich.filesize import decimal

    return decimal(int(size))


def human_age(seconds) -> str:
    if seconds is None:
        return "?"
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def metric_value(value) -> str:
    from keras_resume import runs as krr

    number = krr.log_value(value)
    if number is None:
        return "-" if value is None else str(value)
    return f"{number:.6g}"


def step_in_epoch(row: dict) -> str:
    return f"{row['step_in_epoch']} (end)" if row["epoch_complete"] else str(row["step_in_epoch"])


def table(title=None, caption=None):
    from rich import box
    from rich.table import Table

    return Table(title=title, caption=caption, box=box.SIMPLE_HEAD, title_justify="left")
