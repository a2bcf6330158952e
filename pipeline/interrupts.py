"""Ctrl-C and SIGTERM end every rotnet command alike: one line, "interrupted (Ctrl-C): WHAT WAS KEPT;
HOW TO GO ON", exit status 130 (Ctrl-C: 128 + SIGINT) or 143 (SIGTERM: 128 + SIGTERM), no traceback.

    @click.command(cls=interrupts.Command, interrupted="nothing was written; rerun the same command")
    def main(...): ...

* `Command` (every console script: rotnet-pipeline, -train, -evaluate, -correct, -inspect, -bench,
  -ablate, -export, -serve; `Group` for rotnet-cluster's subcommands): while it runs, SIGTERM raises `TerminatedError`, a KeyboardInterrupt, so every
  `finally` and every `except KeyboardInterrupt` of the command runs for it as for Ctrl-C (temporary
  files removed, locks released, reports written); a KeyboardInterrupt that reaches the command ends in
  `exit_interrupted` with the command's own `interrupted` note. (click alone prints "Aborted!" and
  exits 1; Python alone dies of SIGTERM with no word and none of its `finally` blocks run.)
* `exit_interrupted(error, note)`: the line and the exit code, for a command whose note depends on how
  far it got (rotnet-correct names its report, rotnet-pipeline its ledger).
* `received()`: the interrupt that arrived, if any. Beam's in-process runner catches the
  KeyboardInterrupt raised in a DoFn and re-raises its own error; `received()` tells it apart from a
  failure of the job.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

import click

EXIT_CTRL_C = 130  # 128 + SIGINT, what a shell reports for a command stopped by Ctrl-C
EXIT_SIGTERM = 143  # 128 + SIGTERM


class TerminatedError(KeyboardInterrupt):
    """SIGTERM arrived (`kill PID`, a scheduler's preemption, `timeout`)."""


_received: list[KeyboardInterrupt] = []  # the interrupts seen while the current Command runs
_first_words: list[Callable[[], None]] = []  # run in the signal handler, before the error is raised


def received() -> KeyboardInterrupt | None:
    """The latest Ctrl-C or SIGTERM this process received while a `Command` ran, else None."""
    return _received[-1] if _received else None


def _on_signal(signum: int, frame: Any) -> None:
    error = TerminatedError() if signum == signal.SIGTERM else KeyboardInterrupt()
    _received.append(error)
    for call in list(_first_words):
        call()
    raise error


@contextlib.contextmanager
def first_of_all(call: Callable[[], None]) -> Iterator[None]:
    """Run `call` inside the signal handler, before the interrupt is raised (e.g. mute the log
    handlers of worker threads that would each print the interrupt's traceback)."""
    _first_words.append(call)
    try:
        yield
    finally:
        _first_words.remove(call)


def describe(error: BaseException) -> tuple[str, int]:
    """("Ctrl-C", 130) or ("SIGTERM", 143) for an interrupt."""
    return ("SIGTERM", EXIT_SIGTERM) if isinstance(error, TerminatedError) else ("Ctrl-C", EXIT_CTRL_C)


def exit_interrupted(error: BaseException, note: str) -> NoReturn:
    """Print "interrupted (Ctrl-C|SIGTERM): NOTE" to stderr and exit 130 or 143."""
    cause, code = describe(error)
    click.echo(f"interrupted ({cause}): {note}", err=True)
    sys.stdout.flush()
    sys.exit(code)


@contextlib.contextmanager
def signals_raise() -> Iterator[None]:
    """SIGTERM raises TerminatedError and Ctrl-C KeyboardInterrupt (both recorded for `received`)
    inside the block; the previous handlers come back after it. Only the main thread can set them."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _received.clear()
    previous = {number: signal.signal(number, _on_signal) for number in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        _received.clear()  # a later job in this process (a test's) is not told of this one's


class Command(click.Command):
    """A click command whose Ctrl-C and SIGTERM end in one line and 130 / 143 (see the module).
    `interrupted`: what was kept and how to go on, when the command itself says nothing more precise."""

    def __init__(
        self, *args: Any, interrupted: str = "nothing was written; rerun the same command", **kwargs: Any
    ):
        super().__init__(*args, **kwargs)
        self.interrupted = interrupted

    def main(self, *args: Any, **kwargs: Any) -> Any:
        with signals_raise():
            return super().main(*args, **kwargs)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as error:
            exit_interrupted(error, self.interrupted)


class Group(click.Group):
    """A click group (rotnet-cluster) whose subcommands follow the same convention: each is a `Command`
    with its own `interrupted` note, and SIGTERM raises inside them as Ctrl-C does."""

    command_class = Command

    def main(self, *args: Any, **kwargs: Any) -> Any:
        with signals_raise():
            return super().main(*args, **kwargs)
