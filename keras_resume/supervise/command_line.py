"""The `keras-resume run` command line: its help text, its options (a table), and
`run_command`, which turns parsed options into a `Supervisor` or a `Launcher`.
`keras_resume.cli` registers it as the `run` subcommand; `main` runs it on its own
(`python -m keras_resume.supervise`). Standard library only."""

from __future__ import annotations

import argparse
import sys

from keras_resume.supervise.launcher import (
    COORDINATOR_HOST,
    Launcher,
    check_nprocs,
    check_port,
    distribution_env,
    free_port,
)
from keras_resume.supervise.messages import PROG
from keras_resume.supervise.restart import DEFAULT_GRACE, Supervisor
from keras_resume.supervise.statuses import DEFAULT_NO_RETRY_ON, DEFAULT_RETRY_ON, StatusSet

DESCRIPTION = """\
Run a training command and start it again when it crashes. The command resumes
by itself: a script that uses keras_resume.FullStateResume continues from its
newest backup. Restarts after death by a signal (an out-of-memory kill), exit
status 137 or 143 (a SIGTERM save) and any other failure except 2, 126 and 127,
with exponential backoff. A SIGTERM or SIGINT sent to this process is passed to
the command, which saves and exits 143; nothing is restarted after it. A command
still running --grace seconds later (default 10) is SIGKILLed with every process
it started. On Linux each command runs under a small guard process, so nothing it
started (even with setsid) outlives it, or a SIGKILLed supervisor.

With --nprocs N, starts N copies of the command as one multi-process job (JAX on
one host); when any of them fails, stops the others and restarts all N.
"""
EPILOG = """\
example:
  keras-resume run --max-restarts 5 --backoff 10 -- python train.py --dir runs/exp1

  Restarts `python train.py --dir runs/exp1` up to 5 times, waiting 10 s, 20 s,
  40 s, 60 s, 60 s before the restarts. Exits with the command's last status
  (128 + N when it was killed by signal N).

multi-process example:
  keras-resume run --nprocs 2 --max-restarts 5 -- python train.py --dir runs/exp1

  Starts 2 copies, each with KERAS_RESUME_COORDINATOR=127.0.0.1:PORT (a free port,
  or --coordinator-port), KERAS_RESUME_NUM_PROCESSES=2, KERAS_RESUME_PROCESS_ID=0
  or 1, and the same values in KERAS_DISTRIBUTION_JOB_ADDRESSES,
  KERAS_DISTRIBUTION_NUM_PROCESSES and KERAS_DISTRIBUTION_PROCESS_ID, which
  keras.distribution.initialize() reads when called without arguments. When one
  process fails, the other gets SIGTERM, then SIGKILL after --grace seconds, and
  both start again (on a new port). Exits 0 when all exit 0, else with the status
  of the first process that failed. SIGTERM to the launcher goes to every process.

status lists (--retry-on, --no-retry-on) are comma-separated:
  143        exit status 143
  SIGKILL    killed by SIGKILL (also KILL or -9)
  signal     killed by any signal
  any        any failure (any nonzero status)
  none       nothing (for --no-retry-on)
"""


def _non_negative(kind):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
        if value < 0:
            raise argparse.ArgumentTypeError(f"{text} is negative; give 0 or more")
        return value

    parse.__name__ = kind.__name__
    return parse


def _checked(convert, check):
    """An argparse type: `convert` the text, then `check` it; a failed check's message
    without the option's name (argparse names the option itself)."""

    def parse(text):
        value = convert(text)
        try:
            check(value)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e).split(" ", 1)[1]) from None
        return value

    return parse


def _whole_number(text):
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"'{text}' is not a whole number; give how many processes to start, e.g. --nprocs 2"
        ) from None


def _int_or_text(text):
    try:
        return int(text)
    except ValueError:
        return text  # check_port says why it is not a port


# `keras-resume run`'s options, in the order --help lists them: (flag, add_argument options).
OPTIONS = (
    (
        "--max-restarts",
        dict(
            type=_non_negative(int),
            default=3,
            metavar="N",
            help="start the command again at most N times (default: 3)",
        ),
    ),
    (
        "--backoff",
        dict(
            type=_non_negative(float),
            default=1.0,
            metavar="SECONDS",
            help="wait before the first restart, doubled for each next one (default: 1)",
        ),
    ),
    (
        "--max-backoff",
        dict(
            type=_non_negative(float),
            default=60.0,
            metavar="SECONDS",
            help="the longest wait between restarts (default: 60)",
        ),
    ),
    (
        "--retry-on",
        dict(
            default=None,
            metavar="CODES",
            help=f"statuses that restart the command (default: {DEFAULT_RETRY_ON}: any failure "
            "not in --no-retry-on); see the list syntax below",
        ),
    ),
    (
        "--no-retry-on",
        dict(
            default=None,
            metavar="CODES",
            help=f"statuses that stop at once, checked before --retry-on (default: "
            f"{DEFAULT_NO_RETRY_ON}: usage error, not executable, command not found)",
        ),
    ),
    (
        "--nprocs",
        dict(
            type=_checked(_whole_number, check_nprocs),
            default=None,
            metavar="N",
            help="start N copies of the command as one multi-process job and restart all of "
            "them when one fails (default: one command, no job variables)",
        ),
    ),
    (
        "--coordinator-port",
        dict(
            type=_checked(_int_or_text, check_port),
            default=None,
            metavar="PORT",
            help="with --nprocs: the coordinator's port on 127.0.0.1 (default: a free port, "
            "chosen again for each attempt)",
        ),
    ),
    (
        "--grace",
        dict(
            type=_non_negative(float),
            default=None,
            metavar="SECONDS",
            help=f"how long the command may take to exit after this supervisor passed it a "
            f"SIGTERM or SIGINT (with --nprocs: also after another process failed) before it "
            f"and every process it started get SIGKILL; make it longer than a checkpoint "
            f"save (default: {DEFAULT_GRACE:g})",
        ),
    ),
    (
        "training_command",  # not "command": a CLI's subcommand dest is often called that
        dict(
            nargs=argparse.REMAINDER,
            metavar="command",
            help="the training command and its arguments, after '--'",
        ),
    ),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds `keras-resume run`'s options and its command to an argument parser.

    Use it to register `run` as a subcommand of a larger command line; pair it with
    `run_command`.

    Example:

    ```python
    sub = parser.add_subparsers(dest="subcommand")
    run = sub.add_parser("run", help="rerun a training command that crashed")
    supervisor.add_arguments(run)
    run.set_defaults(func=supervisor.run_command)
    ```

    Args:
        parser: the parser to add to. Its description and epilog are set (with an
            example) unless it has its own.
    """
    if parser.description is None:
        parser.description = DESCRIPTION
    if parser.epilog is None:
        parser.epilog = EPILOG
    if parser.formatter_class is argparse.HelpFormatter:
        parser.formatter_class = argparse.RawDescriptionHelpFormatter  # keeps the example
    for flag, options in OPTIONS:
        parser.add_argument(flag, **options)


def _status_sets(args) -> tuple[StatusSet, StatusSet]:
    retry_text = args.retry_on if args.retry_on is not None else DEFAULT_RETRY_ON
    no_retry_text = args.no_retry_on if args.no_retry_on is not None else DEFAULT_NO_RETRY_ON
    retry = StatusSet(retry_text, "--retry-on")
    no_retry = StatusSet(no_retry_text, "--no-retry-on")
    both = retry.statuses & no_retry.statuses
    if both and args.no_retry_on is None:
        # Naming a status in --retry-on beats the default --no-retry-on list.
        no_retry.statuses -= both
        no_retry.text = ",".join(str(s) for s in sorted(no_retry.statuses)) or "none"
    elif both:
        named = ", ".join(str(s) for s in sorted(both))
        raise ValueError(
            f"--retry-on '{retry.text}' and --no-retry-on '{no_retry.text}' both name {named}; "
            "name each status in one of them"
        )
    return retry, no_retry


def _usage_error(args) -> str | None:
    """What is wrong with a `run` command line that argparse accepted; `None` if nothing."""
    if not _training_command(args):
        return (
            f"no command to run; put the training command after '--', e.g.\n"
            f"  {PROG} --max-restarts 3 -- python train.py"
        )
    try:
        _status_sets(args)
    except ValueError as e:
        return str(e)
    job_options = [
        name
        for name, value in (("--coordinator-port", getattr(args, "coordinator_port", None)),)
        if value is not None
    ]
    if getattr(args, "nprocs", None) is None and job_options:
        named = " and ".join(job_options)
        verb = "applies" if len(job_options) == 1 else "apply"
        return (
            f"{named} {verb} to a multi-process job only; add --nprocs N "
            f"(e.g. --nprocs 2), or leave {named} out"
        )
    return None


def _training_command(args) -> list[str]:
    command = list(args.training_command)
    return command[1:] if command[:1] == ["--"] else command


def run_command(args: argparse.Namespace) -> int:
    """Runs `keras-resume run` from parsed arguments; returns the exit status.

    Args:
        args: the namespace of a parser that `add_arguments` set up.

    Returns:
        0 when the command succeeded (with `--nprocs`: every process); its last exit
        status (128 + N for death by signal N; with `--nprocs`, the status of the
        first process that failed) otherwise; 2 for a usage error.
    """
    error = _usage_error(args)
    if error is not None:
        sys.stderr.write(f"{PROG}: error: {error}\n")
        return 2
    command = _training_command(args)
    retry, no_retry = _status_sets(args)
    nprocs, grace = getattr(args, "nprocs", None), getattr(args, "grace", None)
    options = dict(
        grace=DEFAULT_GRACE if grace is None else grace,
        max_restarts=args.max_restarts,
        backoff=args.backoff,
        max_backoff=args.max_backoff,
        retry_on=retry,
        no_retry_on=no_retry,
    )
    if nprocs is None:
        return Supervisor(command, **options).run()
    if nprocs == 1:
        # One process: the single-command supervisor, with the job's variables.
        port = args.coordinator_port or free_port()
        env = distribution_env(f"{COORDINATOR_HOST}:{port}", 1, 0)
        return Supervisor(command, env=env, **options).run()
    launcher = Launcher(command, nprocs=nprocs, coordinator_port=args.coordinator_port, **options)
    return launcher.run()


def main(argv: list[str] | None = None) -> int:
    """The `keras-resume run` command line on its own (`python -m keras_resume.supervisor`).

    Example:

    ```python
    from keras_resume import supervisor

    status = supervisor.main(["--max-restarts", "2", "--", "python", "train.py"])
    ```

    Args:
        argv: the arguments, without the program name. Defaults to `sys.argv[1:]`.
    """
    parser = argparse.ArgumentParser(prog=PROG)
    add_arguments(parser)
    args = parser.parse_args(argv)
    return run_command(args)
