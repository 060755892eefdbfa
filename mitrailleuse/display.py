"""What the CLI shows while it waits for a run: a progress line, and how the run ended.

The line is built by priority, so that the figures a person waits for (state, done/total,
rate, ETA) stay whole on a narrow terminal and the secondary ones (failures, live rates,
spend) drop first. Without a terminal (CI, ``nohup``) a plain line is written every few
seconds instead of a bar.
"""

from __future__ import annotations

import enum
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.live import Live
from rich.text import Text

from mitrailleuse.batch.state import summary
from mitrailleuse.ratelimit import Rates

if TYPE_CHECKING:
    from mitrailleuse.api import Progress as RunProgress
    from mitrailleuse.api import Run

console = Console(stderr=True, highlight=False)

#: How often a plain progress line is written when there is no terminal.
PLAIN_EVERY_S = 5.0


class ProgressStyle(enum.StrEnum):
    """``--progress``: a live line on a terminal, a line every few seconds, or nothing."""

    AUTO = "auto"
    BAR = "bar"
    PLAIN = "plain"
    NONE = "none"


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What one look at a run shows."""

    progress: RunProgress
    elapsed_s: float
    limits: str
    batches: str

    @property
    def rate(self) -> float:
        """Items per second so far."""
        return self.progress.done / max(self.elapsed_s, 1e-6)

    @property
    def eta(self) -> str:
        """Time left at the rate so far, ``-:--:--`` before the first item."""
        left = self.progress.total - self.progress.done
        if not self.rate or left <= 0:
            return "-:--:--" if left > 0 else "0:00:00"
        return str(timedelta(seconds=round(left / self.rate)))

    def line(self, width: int, bar: bool = True) -> str:
        """The progress line, at most ``width`` characters: secondary figures drop first."""
        current = self.progress
        state = f"{current.state} [{self.batches}]" if self.batches else current.state
        done = f"{current.done}/{current.total}"
        main = [state, done, f"{self.rate:.0f}/s", f"ETA {self.eta}"]
        extra = [
            f"{current.failed} failed" if current.failed else "",
            self.limits,
            spend_line(current),
        ]
        text = " ".join(main)
        if bar:
            text = _with_bar(text, state, current, width)
        for part in filter(None, extra):
            if len(text) + 1 + len(part) <= width:
                text += " " + part
        return text


def _with_bar(text: str, state: str, current: RunProgress, width: int) -> str:
    """Put a bar after the state when the line has room for one (10 to 20 cells)."""
    room = width - len(text) - 1
    cells = min(20, room - 40) if room - 40 >= 10 else 0
    if not cells:
        return text
    filled = round(cells * current.done / current.total) if current.total else 0
    bar = "━" * filled + "╌" * (cells - filled)
    return f"{state} {bar}{text[len(state) :]}"


def follow(run: Run, style: ProgressStyle = ProgressStyle.AUTO, poll_s: float = 0.5) -> RunProgress:
    """Show the run's progress until it ends, and return how it ended."""
    if style is ProgressStyle.AUTO:
        style = ProgressStyle.BAR if console.is_terminal else ProgressStyle.PLAIN
    started = time.monotonic()
    status = run.status()
    batch_mode = status.mode == "batch"
    if style is not ProgressStyle.NONE and status.mode_reason:
        print(f"{status.mode} mode: {status.mode_reason}", file=sys.stderr, flush=True)

    def look() -> Snapshot:
        current = run.progress()
        batches = summary(run.batches()) if batch_mode else ""
        limits = "" if batch_mode else rates_line(run.rates())
        return Snapshot(current, time.monotonic() - started, limits, batches)

    if style is ProgressStyle.BAR:
        return _follow_live(look, poll_s)
    return _follow_plain(look, poll_s, style is ProgressStyle.PLAIN)


def _follow_live(look: Any, poll_s: float) -> RunProgress:
    with Live(console=console, auto_refresh=False, transient=False) as live:
        while True:
            snapshot = look()
            live.update(Text(snapshot.line(console.width), no_wrap=True), refresh=True)
            if snapshot.progress.finished:
                return snapshot.progress
            time.sleep(poll_s)


def _follow_plain(look: Any, poll_s: float, talk: bool) -> RunProgress:
    next_line = 0.0
    while True:
        snapshot = look()
        finished = snapshot.progress.finished
        if talk and (finished or time.monotonic() >= next_line):
            print(snapshot.line(console.width, bar=False), file=sys.stderr, flush=True)
            next_line = time.monotonic() + PLAIN_EVERY_S
        if finished:
            return snapshot.progress
        time.sleep(poll_s)


def rates_line(rates: Rates) -> str:
    """Live request and token rates against the limits: ``412/500 rpm 90k/200k tpm``."""
    line = f"{rates.requests_per_minute:.0f}/{rates.limits.requests_per_minute} rpm"
    if rates.limits.tokens_per_minute:
        line += (
            f" {rates.tokens_per_minute / 1000:.0f}k/{rates.limits.tokens_per_minute // 1000}k tpm"
        )
    return line


def spend_line(progress: RunProgress) -> str:
    """What the run cost so far, and the whole run at that pace: ``$0.0123 → ~$0.0510``."""
    projected = progress.projected_usd
    if projected is None:
        return ""
    return f"${progress.spent_usd:.4f} → ~${projected:.4f}"


def summary_line(progress: RunProgress) -> str:
    """One line on how the run ended."""
    return (
        f"{progress.state}: {progress.done}/{progress.total} done, "
        f"{progress.succeeded} succeeded, {progress.failed} failed, {progress.cached} cached, "
        f"${progress.spent_usd:.6f}"
    )


def digest_lines(failures: dict[str, dict[str, Any]], shown: int = 5) -> list[str]:
    """The run's failures by type, most frequent first, each with its first message and hint."""
    lines = []
    for kind, found in list(failures.items())[:shown]:
        hinted = f": {found['hint']}" if found.get("hint") else ""
        lines.append(f"  {found['count']} × {kind}{hinted}")
        if found.get("first_message"):
            lines.append(f"      first: {found['first_id']}: {found['first_message']}")
    if len(failures) > shown:
        lines.append(f"  … and {len(failures) - shown} more types: see summary.json")
    return lines
