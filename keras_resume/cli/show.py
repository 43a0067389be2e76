"""`keras-resume show`: a run's summary (history across restarts, resume points, the
versions that wrote it), or one checkpoint in full."""

from __future__ import annotations

import json

from keras_resume.cli import output
from keras_resume.cli.exit_status import EXIT_OK, PROG, UsageError
from keras_resume.errors import NoCheckpointError


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
        f"best), {output.human_size(size)}; next id {manifest['next_id']}",
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
            f"best         {best['monitor']} = {output.metric_value(best['value'])} "
            f"({best['mode']}) at {where}, checkpoint {best.get('checkpoint_id', '-')}"
        )
    else:
        lines.append("best         none (no BestCheckpoint in this run)")
    lines.append(
        f"resumes      {len(manifest['resumes'])}; fingerprints {len(manifest['fingerprints'])}"
    )
    return lines


def _show_summary(ckpt, manifest) -> None:
    from keras_resume import runs as krr

    console = output.console()
    for line in _summary_lines(ckpt, manifest):
        console.print(line, markup=False)
    merged = krr.history(ckpt, as_frame=False)
    metrics = [k for k in merged if k != "epoch"]
    resumed_in: dict[int, list[str]] = {}
    for r in manifest["resumes"]:
        if isinstance(r.get("epoch"), int):
            resumed_in.setdefault(r["epoch"], []).append(f"at step {r.get('step_in_epoch', '?')}")
    history = output.table(title="history (epochs across restarts)")
    history.add_column("epoch", justify="right")
    for name in metrics:
        history.add_column(name, justify="right")
    history.add_column("resumed", justify="left")
    for i, epoch in enumerate(merged["epoch"]):
        cells = [str(epoch + 1)] + [output.metric_value(merged[m][i]) for m in metrics]
        history.add_row(*cells, ", ".join(resumed_in.get(epoch, [])))
    console.print(history)
    resumes = output.table(title="resume points")
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
    table = output.table(title="versions that wrote the checkpoints")
    names = sorted({k for key in versions for k in json.loads(key)})
    for name in names + ["checkpoints"]:
        table.add_column(name)
    for key, ids in versions.items():
        values = json.loads(key)
        table.add_row(*[str(values.get(n, "-")) for n in names], ", ".join(map(str, ids)))
    console.print(table)


def _show_entry(ckpt, manifest, entry) -> None:
    console = output.console()
    fields = output.table(title=f"checkpoint {entry['id']} ({ckpt.checkpoint_path(entry)})")
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
        (
            "logs",
            ", ".join(f"{k}={output.metric_value(v)}" for k, v in entry["logs"].items()) or "-",
        ),
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
    files = output.table(title="files")
    files.add_column("path")
    files.add_column("size", justify="right")
    files.add_column("bytes", justify="right")
    files.add_column("sha256", overflow="fold")
    for record in entry["files"]:
        digests = record.get("sha256_blocks") or [record.get("sha256", "?")]
        label = "\n".join(digests)
        if len(digests) > 1:
            label = f"{len(digests)} blocks of {record['block_bytes']} bytes:\n" + label
        files.add_row(record["path"], output.human_size(record["size"]), str(record["size"]), label)
    console.print(files)


def _find_entry(ckpt, manifest, which) -> dict:
    from keras_resume import runs as krr

    which = krr.parse_which(which)
    if which in ("latest", "best"):
        try:
            return ckpt.select(which, verify=False)
        except NoCheckpointError as e:
            raise UsageError(str(e)) from None
    ids = [c["id"] for c in manifest["checkpoints"]]
    for entry in manifest["checkpoints"]:
        if entry["id"] == which:
            return entry
    raise UsageError(
        f"No checkpoint {which!r} in {ckpt.location} (ids: {', '.join(map(str, ids)) or 'none'}). "
        f"Give one of those ids, 'latest' or 'best'; `{PROG} ls {ckpt.location}` lists them."
    )


def cmd_show(args, ckpt, manifest) -> int:
    if args.id is None:
        if args.json:
            output.print_json(manifest)
        else:
            _show_summary(ckpt, manifest)
        return EXIT_OK
    entry = _find_entry(ckpt, manifest, args.id)
    if args.json:
        output.print_json(
            {**entry, "fingerprint_detail": manifest["fingerprints"].get(entry["fingerprint"])}
        )
    else:
        _show_entry(ckpt, manifest, entry)
    return EXIT_OK
