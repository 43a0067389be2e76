"""`keras-resume run`: reruns a training command that crashed, until it finishes.

A training script that uses `FullStateResume` continues where it stopped when it
is started again; this supervisor is the loop around it. It starts the command,
waits, and starts it again when it died of a signal (an out-of-memory kill, a
SIGKILL) or exited with a retryable status, with exponential backoff, up to
`--max-restarts` times. A SIGTERM or SIGINT sent to the supervisor is passed to
the command (keras-resume then saves and exits with status 143) and ends the
loop: nothing is restarted; a command still running `--grace` seconds later is
SIGKILLed. On Linux every command runs under a guard (`guard.py`, a child
subreaper): whatever the command started, even with `setsid`, is killed when it
ends or when the supervisor dies, even of SIGKILL.

    keras-resume run --max-restarts 5 -- python train.py --epochs 30
    python -m keras_resume.supervisor -- python train.py

With `--nprocs N` it launches a multi-process job (JAX, one host): N copies of
the command, each told the coordinator address, N and its process id through
environment variables, so that `keras.distribution.initialize()` needs no
arguments. When one process fails, the others are stopped (SIGTERM, then SIGKILL
after `--grace` seconds) and the whole job is started again.

    keras-resume run --nprocs 2 --max-restarts 5 -- python train.py

The package uses only the standard library, so the supervising process stays
small: it imports neither Keras nor TensorFlow. Its modules, one job each:

- `statuses`: the exit-status vocabulary (`StatusSet`, `describe_status`);
- `messages`: how it speaks (stderr and the "keras_resume" logger);
- `posix`: process groups, signals, starting a command under its guard;
- `guard`: the guard itself, a script run between supervisor and command;
- `restart`: the restart loop (`Supervisor`) and the one-command `Runner`;
- `launcher`: the N-process job (`Launcher`);
- `command_line`: the options, help text and `main`.
"""

from keras_resume.supervise.command_line import (
    DESCRIPTION,
    EPILOG,
    add_arguments,
    main,
    run_command,
)
from keras_resume.supervise.launcher import (
    COORDINATOR_HOST,
    Launcher,
    ProcessJob,
    check_nprocs,
    check_port,
    distribution_env,
    free_port,
)
from keras_resume.supervise.messages import PROG, logger
from keras_resume.supervise.posix import FORWARDED_SIGNALS, GUARD, Command
from keras_resume.supervise.restart import (
    DEFAULT_GRACE,
    Attempt,
    OneCommand,
    Runner,
    Supervisor,
)
from keras_resume.supervise.statuses import (
    DEFAULT_NO_RETRY_ON,
    DEFAULT_RETRY_ON,
    EXIT_PREEMPTED,
    StatusSet,
    describe_status,
    exit_code,
)

__all__ = [
    "COORDINATOR_HOST",
    "DEFAULT_GRACE",
    "DEFAULT_NO_RETRY_ON",
    "DEFAULT_RETRY_ON",
    "DESCRIPTION",
    "EPILOG",
    "EXIT_PREEMPTED",
    "FORWARDED_SIGNALS",
    "GUARD",
    "PROG",
    "Attempt",
    "Command",
    "Launcher",
    "OneCommand",
    "ProcessJob",
    "Runner",
    "StatusSet",
    "Supervisor",
    "add_arguments",
    "check_nprocs",
    "check_port",
    "describe_status",
    "distribution_env",
    "exit_code",
    "free_port",
    "logger",
    "main",
    "run_command",
]
