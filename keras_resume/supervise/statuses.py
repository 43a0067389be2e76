"""The exit-status vocabulary of `keras-resume run`: which statuses exist, how a
`--retry-on`/`--no-retry-on` list names them, and how a status is described in
words. Standard library only."""

from __future__ import annotations

import signal

# keras_resume.EXIT_PREEMPTED, repeated here so this package needs no Keras.
EXIT_PREEMPTED = 128 + signal.SIGTERM
DEFAULT_NO_RETRY_ON = "2,126,127"
DEFAULT_RETRY_ON = "any"


class StatusSet:
    """A set of exit statuses, parsed from a `--retry-on`/`--no-retry-on` list.

    Example:

    ```python
    codes = StatusSet.parse("143,SIGKILL")
    codes.matches(143), codes.matches(-9), codes.matches(1)  # True, True, False
    ```

    Args:
        text: comma-separated items: an exit status (`143`), a signal (`SIGKILL`,
            `KILL` or `-9`: killed by that signal), `signal` (killed by any signal),
            `any` (any nonzero status) or `none` (nothing).
        option: the option the text came from, named in error messages.
    """

    def __init__(self, text: str, option: str = "--retry-on"):
        self.text = text
        self.statuses: set[int] = set()  # exit statuses, and -N for "killed by signal N"
        self.any_signal = False
        self.any_failure = False
        items = [item.strip() for item in text.split(",")]
        if items == [""]:
            raise ValueError(
                f"{option}: empty list; give statuses like '143,SIGKILL', or 'none' for none"
            )
        for item in items:
            self._add(item, option)

    @classmethod
    def parse(cls, text: str, option: str = "--retry-on") -> StatusSet:
        return cls(text, option)

    def _add(self, item: str, option: str) -> None:
        word = item.lower()
        if word == "none":
            return
        if word in ("any", "all"):
            self.any_failure = True
            return
        if word in ("signal", "signals"):
            self.any_signal = True
            return
        try:
            number = int(item)
        except ValueError:
            number = None
        if number is not None:
            self._add_number(number, item, option)
            return
        name = item.upper()
        member = signal.Signals.__members__.get(name if name.startswith("SIG") else "SIG" + name)
        if member is None:
            raise ValueError(
                f"{option}: '{item}' in '{self.text}' is not an exit status, a signal name "
                "(SIGKILL), 'signal', 'any' or 'none'; fix the list"
            )
        self.statuses.add(-int(member))

    def _add_number(self, number: int, item: str, option: str) -> None:
        if number == 0:
            raise ValueError(
                f"{option}: status 0 is success and is never retried; remove it from '{self.text}'"
            )
        if number > 255 or (number < 0 and -number not in _signal_numbers()):
            raise ValueError(
                f"{option}: '{item}' in '{self.text}' is neither an exit status (1 to 255) "
                "nor minus a signal number (-9 is SIGKILL); fix the list"
            )
        self.statuses.add(number)

    def matches(self, status: int) -> bool:
        """Whether a nonzero `Popen.returncode` is in the set."""
        if status == 0:
            return False
        if self.any_failure or status in self.statuses:
            return True
        return status < 0 and self.any_signal

    def __repr__(self) -> str:
        return f"StatusSet({self.text!r})"


def _signal_numbers() -> set[int]:
    return {int(s) for s in signal.Signals}


def signal_name(number: int) -> str:
    """`SIGKILL` for 9; `signal N` for a number that names no signal."""
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def describe_status(status: int) -> str:
    """Says how a command ended, from its `Popen.returncode`.

    Example: `describe_status(-9)` is `"exit status -9 (killed by SIGKILL)"`.
    """
    if status < 0:
        return f"exit status {status} (killed by {signal_name(-status)})"
    notes = {
        EXIT_PREEMPTED: "128 + SIGTERM: saved and stopped, or terminated",
        126: "not executable",
        127: "command not found",
    }
    note = notes.get(status)
    if note is None and 128 < status < 128 + 65:
        note = f"128 + {signal_name(status - 128)}"
    return f"exit status {status}" + (f" ({note})" if note else "")


def exit_code(status: int) -> int:
    """The supervisor's own exit status for a `Popen.returncode`: 128 + N for death by signal N."""
    return 128 - status if status < 0 else status
