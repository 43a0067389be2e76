"""The `keras-resume` subcommands that read or change a run: `ls`, `verify`,
`export`, `prune` and `plot` (`show` is in show.py), and `HANDLERS`, which maps each
subcommand's name to its function. Each takes the parsed arguments, the opened
`CheckpointDirectory` and its manifest, and returns the exit status; Keras is
imported by `keras_resume.runs`, on first use."""

from __future__ import annotations

import os

from keras_resume.cli import output
from keras_resume.cli.exit_status import EXIT_FAILED, EXIT_OK, PROG, UsageError
from keras_resume.cli.show import cmd_show


def cmd_ls(args, ckpt, manifest) -> int:
    from keras_resume import runs as krr

    rows = krr.list_checkpoints(ckpt)
    if args.json:
        output.print_json(rows)
        return EXIT_OK
    monitor = (manifest.get("best") or {}).get("monitor")
    table = output.table(title=f"{ckpt.location}: {len(rows)} checkpoints")
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
            output.step_in_epoch(row),
            str(row["global_step"]),
        ]
        if monitor:
            cells.append(output.metric_value(row["value"]))
        cells += [output.human_size(row["size"]), output.human_age(row["age_s"]), ", ".join(marks)]
        table.add_row(*cells)
    console = output.console()
    console.print(table)
    if not rows:
        console.print("No committed checkpoint yet.")
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

    out = output.console()
    total = sum(krr.checkpoint_size(c) for c in manifest["checkpoints"])
    progress = Progress(
        TextColumn("verifying {task.fields[current]}"),
        BarColumn(),
        DownloadColumn(),
        TimeRemainingColumn(),
        console=output.console(stderr=True),
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
                    f"{len(entry['files'])} files, {output.human_size(result['size'])})",
                    markup=False,
                )
            else:
                out.print(f"DAMAGED  {entry['dir']}: {result['error']}", markup=False)

        results = krr.verify_run(ckpt, progress=step)
    damaged = [r for r in results if not r["ok"]]
    if args.json:
        output.print_json({"run": ckpt.location, "ok": not damaged, "checkpoints": results})
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
        raise UsageError(
            f"--to {args.to}: format keras writes a .keras file. Give a path ending in "
            ".keras, or pass --format savedmodel for a directory."
        )
    if os.path.exists(args.to) and not args.overwrite:
        raise UsageError(
            f"--to {args.to} already exists. Remove it, choose another path, or pass --overwrite."
        )
    result = krr.export_model(
        ckpt, args.to, which=args.which, format=args.format, overwrite=args.overwrite
    )
    if args.json:
        output.print_json(result)
        return EXIT_OK
    output.console().print(
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
        output.print_json(result)
        return EXIT_OK
    gone = "would remove" if args.dry_run else "removed"
    table = output.table(title=f"{ckpt.location}: prune" + (" (dry run)" if args.dry_run else ""))
    for name in ("id", "kind", "epoch", "step", "global step", "size", "action", "why kept"):
        table.add_column(name, justify="right" if name in ("id", "size") else "left")
    rows = [(r, "keep", "; ".join(r["reasons"])) for r in result["kept"]]
    rows += [(r, gone, "") for r in result["removed"]]
    for row, action, why in sorted(rows, key=lambda item: item[0]["id"]):
        table.add_row(
            str(row["id"]),
            row["kind"],
            str(row["epoch"]),
            output.step_in_epoch(row),
            str(row["global_step"]),
            output.human_size(row["size"]),
            action,
            why,
        )
    console = output.console()
    console.print(table)
    count = len(result["removed"])
    what = f"{count} checkpoint{'s' if count != 1 else ''}"
    freed = output.human_size(result["freed"])
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
    output.console().print(f"Wrote {args.out}", markup=False)
    return EXIT_OK


HANDLERS = {
    "ls": cmd_ls,
    "show": cmd_show,
    "verify": cmd_verify,
    "export": cmd_export,
    "prune": cmd_prune,
    "plot": cmd_plot,
}
