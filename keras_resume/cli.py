"""`keras-resume`: look into, check, export and prune a run directory from the shell.

Every subcommand reads the run through the public API (`CheckpointDirectory`,
`restore`, and the helpers in `keras_resume.runs`). Exit status: 0 on
success, 1 when a command fails (or `verify` finds a damaged checkpoint), 2
for a bad command line or a path that is not a keras-resume run.

Example:

```
keras-resume ls runs/exp1
keras-resume verify runs/exp1
keras-resume export runs/exp1 --which best --to best.keras
```
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import textwrap

from keras_resume.errors import (
    CheckpointDirectoryError,
    KerasResumeError,
    ManifestError,
    NoCheckpointError,
)

# Keras is imported by the subcommands that need it, not by this module.
PROG = "keras-resume"
PLOT_INSTALL = "pip install 'keras-resume[plot]'"
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class _UsageError(Exception):
    """A bad argument found after parsing: reported with exit status 2."""


# --- output -------------------------------------------------------------------------


def _console(stderr: bool = False):
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    # Piped output (a file, a test's capture) is not cut at 80 columns.
    width = None if stream.isatty() else 160
    return Console(stderr=stderr, highlight=False, width=width, soft_wrap=False)


def _print_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, indent=1, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()


def _human_size(size) -> str:
    from rich.filesize import decimal

    return decimal(int(size))


def _human_age(seconds) -> str:
    if seconds is None:
        return "?"
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def _fmt(value) -> str:
    from keras_resume import runs as krr

    number = krr.log_value(value)
    if number is None:
        return "-" if value is None else str(value)
    return f"{number:.6g}"


def _step(row: dict) -> str:
    return f"{row['step_in_epoch']} (end)" if row["epoch_complete"] else str(row["step_in_epoch"])


def _table(title=None, caption=None):
    from rich import box
    from rich.table import Table

    return Table(title=title, caption=caption, box=box.SIMPLE_HEAD, title_justify="left")


# --- subcommands ------------------------------------------------------------------------


def cmd_ls(args, ckpt, manifest) -> int:
    from keras_resume import runs as krr

    rows = krr.list_checkpoints(ckpt)
    if args.json:
        _print_json(rows)
        return EXIT_OK
    monitor = (manifest.get("best") or {}).get("monitor")
    table = _table(title=f"{ckpt.location}: {len(rows)} checkpoints")
    for name in ("id", "kind", "epoch", "step", "global step"):
        table.add_column(name, justify="right" if name != "kind" else "left")
    if monitor:
        table.add_column(monitor, justify="right")
    table.add_column("size", justify="right")
    table.add_column("age", justify="right")
    table.add_column("", justify="left")
    for row in rows:
        marks = [m for m, on in (("resume", row["resume"]), ("best", row["best"])) if on]
        cells = [
            str(row["id"]),
            row["kind"],
            str(row["epoch"]),
            _step(row),
            str(row["global_step"]),
        ]
        if monitor:
            cells.append(_fmt(row["value"]))
        cells += [_human_size(row["size"]), _human_age(row["age_s"]), ", ".join(marks)]
        table.add_row(*cells)
    console = _console()
    console.print(table)
    if not rows:
        console.print("No committed checkpoint yet.")
    return EXIT_OK


def _summary_lines(ckpt, manifest) -> list[str]:
    from keras_resume import runs as krr

    entries = manifest["checkpoints"]
    backups = [c for c in entries if c["kind"] == "backup"]
    size = sum(krr.checkpoint_size(c) for c in entries)
    lines = [
        f"run          {ckpt.location}",
        f"manifest     format {manifest['format']}, schema {manifest['schema_version']}, "
        f"created {manifest.get('created', '?')}",
        f"checkpoints  {len(entries)} ({len(backups)} backup, {len(entries) - len(backups)} "
        f"best), {_human_size(size)}; next id {manifest['next_id']}",
    ]
    if backups:
        newest = backups[-1]
        epoch, step = (
            (newest["epoch"] + 1, 0)
            if newest["epoch_complete"]
            else (newest["epoch"], newest["step_in_epoch"])
        )
        lines.append(
            f"resume from  {newest['dir']}: continues at epoch {epoch + 1}, step {step} "
            f"(global step {newest['global_step']})"
        )
    best = manifest.get("best")
    if best:
        where = f"epoch {best['epoch'] + 1}" if isinstance(best.get("epoch"), int) else "?"
        lines.append(
            f"best         {best['monitor']} = {_fmt(best['value'])} ({best['mode']}) at "
            f"{where}, checkpoint {best.get('checkpoint_id', '-')}"
        )
    else:
        lines.append("best         none (no BestCheckpoint in this run)")
    lines.append(
        f"resumes      {len(manifest['resumes'])}; fingerprints {len(manifest['fingerprints'])}"
    )
    return lines


def _show_summary(ckpt, manifest) -> None:
    from keras_resume import runs as krr

    console = _console()
    for line in _summary_lines(ckpt, manifest):
        console.print(line, markup=False)
    merged = krr.history(ckpt, as_frame=False)
    metrics = [k for k in merged if k != "epoch"]
    resumed_in: dict[int, list[str]] = {}
    for r in manifest["resumes"]:
        if isinstance(r.get("epoch"), int):
            resumed_in.setdefault(r["epoch"], []).append(f"at step {r.get('step_in_epoch', '?')}")
    history = _table(title="history (epochs across restarts)")
    history.add_column("epoch", justify="right")
    for name in metrics:
        history.add_column(name, justify="right")
    history.add_column("resumed", justify="left")
    for i, epoch in enumerate(merged["epoch"]):
        cells = [str(epoch + 1)] + [_fmt(merged[m][i]) for m in metrics]
        history.add_row(*cells, ", ".join(resumed_in.get(epoch, [])))
    console.print(history)
    resumes = _table(title="resume points")
    for name in ("#", "time", "from checkpoint", "epoch", "step", "global step"):
        resumes.add_column(name, justify="left" if name == "time" else "right")
    for i, r in enumerate(manifest["resumes"], start=1):
        epoch = r.get("epoch")
        resumes.add_row(
            str(i),
            str(r.get("time", "?")),
            str(r.get("checkpoint_id", "?")),
            str(epoch + 1) if isinstance(epoch, int) else "?",
            str(r.get("step_in_epoch", "?")),
            str(r.get("global_step", "?")),
        )
    console.print(resumes)
    versions: dict[str, list[int]] = {}
    for entry in manifest["checkpoints"]:
        key = json.dumps(entry.get("versions", {}), sort_keys=True)
        versions.setdefault(key, []).append(entry["id"])
    table = _table(title="versions that wrote the checkpoints")
    names = sorted({k for key in versions for k in json.loads(key)})
    for name in names + ["checkpoints"]:
        table.add_column(name)
    for key, ids in versions.items():
        values = json.loads(key)
        table.add_row(*[str(values.get(n, "-")) for n in names], ", ".join(map(str, ids)))
    console.print(table)


def _show_entry(ckpt, manifest, entry) -> None:
    console = _console()
    fields = _table(title=f"checkpoint {entry['id']} ({ckpt.checkpoint_path(entry)})")
    fields.add_column("field")
    fields.add_column("value", overflow="fold")
    resume_point = (
        (entry["epoch"] + 1, 0)
        if entry["epoch_complete"]
        else (entry["epoch"], entry["step_in_epoch"])
    )
    rows = [
        ("id", entry["id"]),
        ("dir", entry["dir"]),
        ("kind", entry["kind"]),
        ("fit", f"{entry.get('fit', 0)} (the script's fit call it belongs to, 0-based)"),
        ("epoch", f"{entry['epoch'] + 1} (manifest epoch {entry['epoch']}, 0-based)"),
        ("step_in_epoch", entry["step_in_epoch"]),
        ("epoch_complete", entry["epoch_complete"]),
        ("global_step", entry["global_step"]),
        ("resumes at", f"epoch {resume_point[0] + 1}, step {resume_point[1]}"),
        ("training_stopped", entry.get("training_stopped", False)),
        ("created", entry["created"]),
        ("logs", ", ".join(f"{k}={_fmt(v)}" for k, v in entry["logs"].items()) or "-"),
        ("fingerprint", entry["fingerprint"]),
    ]
    fp = manifest["fingerprints"].get(entry["fingerprint"], {})
    rows.append(
        (
            "model",
            f"{len(fp.get('variables', []))} variables; optimizer {fp.get('optimizer')} with "
            f"{len(fp.get('optimizer_variables', []))} variables",
        )
    )
    for name, value in sorted(entry.get("versions", {}).items()):
        rows.append((f"versions.{name}", value))
    for name, value in rows:
        fields.add_row(name, str(value))
    console.print(fields)
    files = _table(title="files")
    files.add_column("path")
    files.add_column("size", justify="right")
    files.add_column("bytes", justify="right")
    files.add_column("sha256", overflow="fold")
    for record in entry["files"]:
        digests = record.get("sha256_blocks") or [record.get("sha256", "?")]
        label = "\n".join(digests)
        if len(digests) > 1:
            label = f"{len(digests)} blocks of {record['block_bytes']} bytes:\n" + label
        files.add_row(record["path"], _human_size(record["size"]), str(record["size"]), label)
    console.print(files)


def _find_entry(ckpt, manifest, which) -> dict:
    from keras_resume import runs as krr

    which = krr.parse_which(which)
    if which in ("latest", "best"):
        try:
            return ckpt.select(which, verify=False)
        except NoCheckpointError as e:
            raise _UsageError(str(e)) from None
    ids = [c["id"] for c in manifest["checkpoints"]]
    for entry in manifest["checkpoints"]:
        if entry["id"] == which:
            return entry
    raise _UsageError(
        f"No checkpoint {which!r} in {ckpt.location} (ids: {', '.join(map(str, ids)) or 'none'}). "
        f"Give one of those ids, 'latest' or 'best'; `{PROG} ls {ckpt.location}` lists them."
    )


def cmd_show(args, ckpt, manifest) -> int:
    if args.id is None:
        if args.json:
            _print_json(manifest)
        else:
            _show_summary(ckpt, manifest)
        return EXIT_OK
    entry = _find_entry(ckpt, manifest, args.id)
    if args.json:
        _print_json(
            {**entry, "fingerprint_detail": manifest["fingerprints"].get(entry["fingerprint"])}
        )
    else:
        _show_entry(ckpt, manifest, entry)
    return EXIT_OK


def cmd_verify(args, ckpt, manifest) -> int:
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    from keras_resume import runs as krr

    out = _console()
    total = sum(krr.checkpoint_size(c) for c in manifest["checkpoints"])
    progress = Progress(
        TextColumn("verifying {task.fields[current]}"),
        BarColumn(),
        DownloadColumn(),
        TimeRemainingColumn(),
        console=_console(stderr=True),
        transient=True,
        disable=args.json,
    )

    with progress:
        task = progress.add_task("verify", total=total, current="")

        def step(entry, result):
            progress.update(task, advance=result["size"], current=entry["dir"])
            if args.json:
                return
            if result["ok"]:
                out.print(
                    f"ok       {entry['dir']}  (epoch {entry['epoch'] + 1}, "
                    f"{len(entry['files'])} files, {_human_size(result['size'])})",
                    markup=False,
                )
            else:
                out.print(f"DAMAGED  {entry['dir']}: {result['error']}", markup=False)

        results = krr.verify_run(ckpt, progress=step)
    damaged = [r for r in results if not r["ok"]]
    if args.json:
        _print_json({"run": ckpt.location, "ok": not damaged, "checkpoints": results})
    elif not results:
        out.print(f"{ckpt.location} holds no committed checkpoint: nothing to verify.")
    elif damaged:
        out.print(
            f"{len(damaged)} of {len(results)} checkpoints DAMAGED in {ckpt.location}. "
            "A resume falls back to the newest one that verifies; "
            f"`{PROG} prune` does not remove damaged ones for you.",
            markup=False,
        )
    else:
        out.print(f"all {len(results)} checkpoints verify.", markup=False)
    return EXIT_FAILED if damaged else EXIT_OK


def cmd_export(args, ckpt, manifest) -> int:
    from keras_resume import runs as krr

    if args.format == "keras" and not args.to.endswith(".keras"):
        raise _UsageError(
            f"--to {args.to}: format keras writes a .keras file. Give a path ending in "
            ".keras, or pass --format savedmodel for a directory."
        )
    if os.path.exists(args.to) and not args.overwrite:
        raise _UsageError(
            f"--to {args.to} already exists. Remove it, choose another path, or pass --overwrite."
        )
    result = krr.export_model(
        ckpt, args.to, which=args.which, format=args.format, overwrite=args.overwrite
    )
    if args.json:
        _print_json(result)
        return EXIT_OK
    _console().print(
        f"Exported {result['dir']} (epoch {result['epoch']}, step {result['step_in_epoch']}, "
        f"global step {result['global_step']}) of {ckpt.location} to {result['to']} "
        f"(format {result['format']}).",
        markup=False,
    )
    return EXIT_OK


def cmd_prune(args, ckpt, manifest) -> int:
    from keras_resume import runs as krr

    result = krr.prune(
        ckpt,
        keep_last=args.keep_last,
        keep_best=args.keep_best,
        keep_every_epochs=args.keep_every_epochs,
        dry_run=args.dry_run,
    )
    if args.json:
        _print_json(result)
        return EXIT_OK
    gone = "would remove" if args.dry_run else "removed"
    table = _table(title=f"{ckpt.location}: prune" + (" (dry run)" if args.dry_run else ""))
    for name in ("id", "kind", "epoch", "step", "global step", "size", "action", "why kept"):
        table.add_column(name, justify="right" if name in ("id", "size") else "left")
    rows = [(r, "keep", "; ".join(r["reasons"])) for r in result["kept"]]
    rows += [(r, gone, "") for r in result["removed"]]
    for row, action, why in sorted(rows, key=lambda item: item[0]["id"]):
        table.add_row(
            str(row["id"]),
            row["kind"],
            str(row["epoch"]),
            _step(row),
            str(row["global_step"]),
            _human_size(row["size"]),
            action,
            why,
        )
    console = _console()
    console.print(table)
    count = len(result["removed"])
    what = f"{count} checkpoint{'s' if count != 1 else ''}"
    freed = _human_size(result["freed"])
    if args.dry_run:
        console.print(f"Would remove {what} ({freed}); nothing was changed.")
    else:
        console.print(f"Removed {what}, freed {freed}.")
    return EXIT_OK


def cmd_plot(args, ckpt, manifest) -> int:
    from keras_resume import runs as krr

    figure = krr.plot(ckpt, metrics=args.metrics)
    # A bare Figure draws with the Agg renderer: no GUI backend is touched.
    figure.savefig(args.out, dpi=args.dpi)
    _console().print(f"Wrote {args.out}", markup=False)
    return EXIT_OK


# --- the parser ---------------------------------------------------------------------------


def _epilog(text: str) -> str:
    return "Example:\n" + textwrap.indent(textwrap.dedent(text).strip("\n"), "  ")


def _add(subparsers, name, help_text, example, handler):
    parser = subparsers.add_parser(
        name,
        help=help_text,
        description=help_text,
        epilog=_epilog(example),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(handler=handler, needs_run=True)
    parser.add_argument("run", help="the run directory (a path or an fsspec URL)")
    return parser


def _json_option(parser) -> None:
    parser.add_argument(
        "--json", action="store_true", help="print JSON instead of a table (for scripts)"
    )


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


def build_parser() -> argparse.ArgumentParser:
    """The `keras-resume` argument parser, subcommands included."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Look into, check, export and prune a keras-resume run directory.",
        epilog=_epilog(
            f"""
            {PROG} ls runs/exp1                 # the checkpoints, the resume point, the best
            {PROG} show runs/exp1               # history across restarts, resume points
            {PROG} verify runs/exp1             # re-check every checksum
            {PROG} export runs/exp1 --which best --to best.keras
            {PROG} prune runs/exp1 --keep-last 2 --keep-every-epochs 10 --dry-run
            {PROG} plot runs/exp1 --out curve.png
            """
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True

    p = _add(
        subparsers,
        "ls",
        "List the checkpoints of a run: epoch (1-based), step, global step, the monitored "
        "metric, size, age; marks the backup a resume continues from and the best one.",
        f"{PROG} ls runs/exp1\n{PROG} ls runs/exp1 --json | jq '.[] | select(.best)'",
        cmd_ls,
    )
    _json_option(p)

    p = _add(
        subparsers,
        "show",
        "Show what the manifest knows: without ID a summary (best value, per-epoch history "
        "across restarts, resume points, versions); with ID one checkpoint in full.",
        f"{PROG} show runs/exp1\n{PROG} show runs/exp1 12          # checkpoint 12: files, "
        f"sizes, checksums\n{PROG} show runs/exp1 --json   # the whole manifest",
        cmd_show,
    )
    p.add_argument("id", nargs="?", help="a checkpoint id, 'latest' or 'best'")
    _json_option(p)

    p = _add(
        subparsers,
        "verify",
        "Re-check the size and SHA-256 of every file of every checkpoint. Exit status 0 if "
        "all verify, 1 if any is damaged (the message names the file).",
        f"{PROG} verify runs/exp1 && echo intact",
        cmd_verify,
    )
    _json_option(p)

    p = _add(
        subparsers,
        "export",
        "Rebuild a checkpoint's model from its model.json, load the checkpoint, and save it "
        "as a .keras file or a TensorFlow SavedModel.",
        f"{PROG} export runs/exp1 --which best --to best.keras\n"
        f"{PROG} export runs/exp1 --which 12 --to serving/1 --format savedmodel",
        cmd_export,
    )
    p.add_argument(
        "--which", default="latest", help="'latest' (default), 'best' or a checkpoint id"
    )
    p.add_argument("--to", required=True, help="the target: a .keras file or a directory")
    p.add_argument(
        "--format",
        choices=("keras", "savedmodel"),
        default="keras",
        help="keras (model.save, default) or savedmodel (model.export, TensorFlow backend)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing target")
    _json_option(p)

    p = _add(
        subparsers,
        "prune",
        "Remove old checkpoints. Keeps the newest N backups, the newest K best checkpoints "
        "and the backups that completed every E-th epoch; never the newest backup or the "
        "current best. The manifest is updated first (atomically), then files are deleted.",
        f"{PROG} prune runs/exp1 --keep-last 2 --keep-every-epochs 10 --dry-run\n"
        f"{PROG} prune runs/exp1 --keep-last 2 --keep-every-epochs 10",
        cmd_prune,
    )
    p.add_argument(
        "--keep-last",
        type=_non_negative,
        default=1,
        metavar="N",
        help="backups to keep, newest first (default 1)",
    )
    p.add_argument(
        "--keep-best",
        type=_non_negative,
        default=1,
        metavar="K",
        help="best checkpoints to keep, newest first (default 1)",
    )
    p.add_argument(
        "--keep-every-epochs",
        type=_positive,
        default=None,
        metavar="E",
        help="also keep the epoch-end backup of every E-th epoch (1-based; default none)",
    )
    p.add_argument("--dry-run", action="store_true", help="only print what would be removed")
    _json_option(p)

    p = _add(
        subparsers,
        "plot",
        "Plot the per-epoch metrics across restarts, with the resume points as dashed lines "
        f"and the best epoch starred. Needs matplotlib: {PLOT_INSTALL}.",
        f"{PROG} plot runs/exp1 --out curve.png\n"
        f"{PROG} plot runs/exp1 --out acc.pdf --metrics accuracy val_accuracy",
        cmd_plot,
    )
    p.add_argument("--out", required=True, help="the image to write (.png, .pdf, .svg)")
    p.add_argument(
        "--metrics",
        nargs="+",
        default=None,
        help="metrics to plot (default: every metric named *loss*, or all)",
    )
    p.add_argument("--dpi", type=int, default=120, help="resolution of a raster image")

    _add_run_command(subparsers)
    return parser


def _add_run_command(subparsers) -> None:
    """`run`, from `keras_resume.supervisor` when that module exists."""
    try:
        supervisor = importlib.import_module("keras_resume.supervisor")
    except ModuleNotFoundError as e:
        if e.name != "keras_resume.supervisor":
            _add_broken_run(subparsers, e)
        return
    except Exception as e:  # noqa: BLE001 - a broken module must not break the other commands
        _add_broken_run(subparsers, e)
        return
    # add_arguments sets the description and the epilog (with its example).
    parser = subparsers.add_parser(
        "run", help="run a training command, and rerun it after a crash until it finishes"
    )
    supervisor.add_arguments(parser)
    parser.set_defaults(handler=None, run_command=supervisor.run_command, needs_run=False)


def _add_broken_run(subparsers, error: Exception) -> None:
    parser = subparsers.add_parser("run", help="(unavailable: keras_resume.supervisor failed)")
    parser.add_argument("rest", nargs=argparse.REMAINDER)
    parser.set_defaults(handler=None, run_error=error, needs_run=False)


# --- main -----------------------------------------------------------------------------------


def _error(command: str | None, message: str) -> None:
    where = f"{PROG} {command}" if command else PROG
    sys.stderr.write(f"{where}: error: {message}\n")
    sys.stderr.flush()


def main(argv: list[str] | None = None) -> int:
    """Runs `keras-resume` with `argv` (default: the process's arguments); returns the exit status.

    Example:

    ```python
    from keras_resume import cli
    status = cli.main(["verify", "runs/exp1"])
    ```

    Args:
        argv: the arguments after the program name. Defaults to None
            (`sys.argv[1:]`).

    Returns:
        0 on success, 1 when the command failed or found damage, 2 for a bad
        command line or a path that is not a keras-resume run.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, or a usage error argparse has printed
        return e.code if isinstance(e.code, int) else (EXIT_OK if e.code is None else EXIT_USAGE)
    command = args.command
    if not args.needs_run:  # `run`
        if getattr(args, "run_error", None) is not None:
            _error(
                command,
                f"keras_resume.supervisor cannot be imported ({type(args.run_error).__name__}: "
                f"{args.run_error}). Reinstall keras-resume.",
            )
            return EXIT_FAILED
        return int(args.run_command(args) or 0)
    from keras_resume import runs as krr  # loads Keras: not for `run`

    try:
        ckpt, manifest = krr.open_run(args.run)
    except (
        NoCheckpointError,
        ManifestError,
        CheckpointDirectoryError,
        NotADirectoryError,
        TypeError,
    ) as e:
        _error(command, str(e))
        return EXIT_USAGE
    try:
        return args.handler(args, ckpt, manifest)
    except _UsageError as e:
        _error(command, str(e))
        return EXIT_USAGE
    except (KerasResumeError, OSError, ValueError, ImportError) as e:
        _error(command, str(e))
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
