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

Its modules, one job each: `parser` (the table of subcommands, built into argparse;
no Keras), `entry` (`main`), `commands` and `show` (the subcommands), `output`
(tables and JSON), `exit_status` (exit statuses and error messages). Keras is
imported by the subcommands that need it, not by this package.
"""

from keras_resume.cli.entry import main
from keras_resume.cli.exit_status import EXIT_FAILED, EXIT_OK, EXIT_USAGE, PROG
from keras_resume.cli.parser import build_parser

__all__ = ["EXIT_FAILED", "EXIT_OK", "EXIT_USAGE", "PROG", "build_parser", "main"]
