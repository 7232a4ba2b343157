"""What tflab shows the user: progress on stderr, results on stdout.

With --json, stdout carries only the one JSON document; everything else goes to stderr.
A live status line (rich) appears only when stderr is a terminal.
"""

from __future__ import annotations

import json
import sys
import time
from contextlib import contextmanager
from typing import IO, Callable, Iterator


class Console:
    """Progress and results for one command."""

    def __init__(self, *, json_mode: bool = False, out: IO[str] | None = None, err: IO[str] | None = None):
        self.json_mode = json_mode
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.live = bool(getattr(self.err, "isatty", lambda: False)())

    def info(self, text: str) -> None:
        """A progress line."""
        print(text, file=self.err, flush=True)

    def note(self, text: str) -> None:
        """Something the user should know that changed a default (a moved port, a fallback)."""
        print(f"note: {text}", file=self.err, flush=True)

    def warn(self, text: str) -> None:
        print(f"warning: {text}", file=self.err, flush=True)

    def stream(self, source: str, line: str) -> None:
        """One line of a command's output, prefixed with where it came from."""
        print(f"  {source} | {line}", file=self.err, flush=True)

    @contextmanager
    def waiting(self, what: str) -> Iterator[Callable[[str], None]]:
        """Say what we wait for and how long it took: a live status line on a terminal, lines otherwise.

        Yields update(text), which shows the current detail (printed only when it changes off a terminal).
        """
        started = time.monotonic()
        last = [""]
        if self.live:
            from rich.console import Console as RichConsole

            with RichConsole(file=self.err).status(what + " ...") as status:
                def update(text: str) -> None:
                    status.update(f"{what}: {text} ({time.monotonic() - started:.0f} s)")

                yield update
        else:
            self.info(what + " ...")

            def update(text: str) -> None:
                if text != last[0]:
                    last[0] = text
                    self.info(f"  {text}")

            yield update
        self.info(f"{what}: done in {time.monotonic() - started:.1f} s")

    def event(self, document: dict) -> None:
        """With --json, one compact JSON line on stdout (JSON Lines), for a command that runs on (tunnel)."""
        if self.json_mode:
            self.out.write(json.dumps(document, separators=(",", ":")) + "\n")
            self.out.flush()

    def result(self, document: dict, text: str) -> None:
        """The command's result: the JSON document with --json, else the text."""
        if self.json_mode:
            json.dump(document, self.out, indent=2)
            self.out.write("\n")
        else:
            self.out.write(text.rstrip("\n") + "\n")
        self.out.flush()


class NodeConsole(Console):
    """The console of one node of a run prepared in parallel with others (from its own thread): each
    line says which node it is about, and waits are plain lines (no live status line to share)."""

    def __init__(self, parent: Console, node: str):
        super().__init__(json_mode=parent.json_mode, out=parent.out, err=parent.err)
        self.live = False
        self.node = node

    def info(self, text: str) -> None:
        super().info(f"[{self.node}] {text}")

    def note(self, text: str) -> None:
        super().note(f"[{self.node}] {text}")

    def warn(self, text: str) -> None:
        super().warn(f"[{self.node}] {text}")

    def stream(self, source: str, line: str) -> None:
        super().stream(f"{self.node} {source}", line)
