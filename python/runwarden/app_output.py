"""The supervised app's stdout and stderr under `--log-format json`: each line becomes one log
record of the `app` logger, with its stream and the app's pid as fields, so a pipeline that
reads one JSON object per line never meets the app's raw text. A Python traceback (from
"Traceback (most recent call last):" to its exception line) is kept as one record. With
`--log-format text` the app's output is not read at all: it goes to runwarden's own stdout
and stderr, as written.
"""

from __future__ import annotations

import asyncio
import logging

log = logging.getLogger("app")

TRACEBACK = "Traceback (most recent call last):"
# What continues a traceback besides indented lines: chained exceptions and their blank lines.
CONTINUES = (
    "During handling of the above exception",
    "The above exception was the direct cause",
    TRACEBACK,
)
LINE_LIMIT = 1 << 20
"""A line longer than this (1 MiB) is logged in pieces of this size."""


class Lines:
    """Groups one stream's lines into records: a traceback whole, every other line alone."""

    def __init__(self, stream: str, pid: int) -> None:
        self.extra = {"stream": stream, "pid": pid}
        self.held: list[str] = []

    def feed(self, line: str) -> None:
        if self.held:
            if line.startswith((" ", "\t")) or not line.strip() or line.startswith(CONTINUES):
                self.held.append(line)
                return
            self.held.append(line)  # the exception's own line ends it
            self.flush()
            return
        if line.startswith(TRACEBACK):
            self.held.append(line)
            return
        log.info("%s", line, extra=self.extra)

    def flush(self) -> None:
        if self.held:
            log.info("%s", "\n".join(self.held), extra=self.extra)
            self.held = []


async def relay(reader: asyncio.StreamReader, stream: str, pid: int) -> None:
    """Log `reader`'s lines until it ends (the app exited or closed the stream)."""
    lines = Lines(stream, pid)
    while True:
        try:
            raw = await reader.readuntil(b"\n")
        except asyncio.IncompleteReadError as end:
            raw = end.partial
            if raw:
                lines.feed(raw.decode(errors="replace"))
            break
        except asyncio.LimitOverrunError as long:
            raw = await reader.readexactly(min(long.consumed, LINE_LIMIT) or 1)
        lines.feed(raw.decode(errors="replace").rstrip("\r\n"))
    lines.flush()
