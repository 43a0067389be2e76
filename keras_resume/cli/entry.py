"""`keras-resume`'s `main`: parses the command line, hands `run` to the supervisor,
opens the run directory for the other subcommands and maps their errors to exit
statuses."""

from __future__ import annotations

from keras_resume.cli.exit_status import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    UsageError,
    report_error,
)
from keras_resume.cli.parser import SUPERVISE, build_parser
from keras_resume.errors import (
    CheckpointDirectoryError,
    KerasResumeError,
    ManifestError,
    NoCheckpointError,
)


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
    if not args.needs_run:  # `run`
        return _run(args)
    return _on_run_directory(args)


def _run(args) -> int:
    """`keras-resume run`, or why it is unavailable."""
    if getattr(args, "run_error", None) is not None:
        report_error(
            args.command,
            f"{SUPERVISE} cannot be imported ({type(args.run_error).__name__}: "
            f"{args.run_error}). Reinstall keras-resume.",
        )
        return EXIT_FAILED
    return int(args.run_command(args) or 0)


def _on_run_directory(args) -> int:
    """A subcommand that reads or changes a run directory (loads Keras)."""
    from keras_resume import runs as krr
    from keras_resume.cli.commands import HANDLERS

    command = args.command
    try:
        ckpt, manifest = krr.open_run(args.run)
    except (
        NoCheckpointError,
        ManifestError,
        CheckpointDirectoryError,
        NotADirectoryError,
        TypeError,
    ) as e:
        report_error(command, str(e))
        return EXIT_USAGE
    try:
        return HANDLERS[command](args, ckpt, manifest)
    except UsageError as e:
        report_error(command, str(e))
        return EXIT_USAGE
    except (KerasResumeError, OSError, ValueError, ImportError) as e:
        report_error(command, str(e))
        return EXIT_FAILED
