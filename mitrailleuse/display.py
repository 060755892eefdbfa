"""What the CLI shows while it waits for a run: a rich progress bar and a closing summary."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)

from mitrailleuse.api import Progress as RunProgress
from mitrailleuse.api import Run
from mitrailleuse.batch.state import summary
from mitrailleuse.ratelimit import Rates

console = Console(stderr=True)


def follow(run: Run, poll_s: float = 0.5) -> RunProgress:
    """Show the run's progress until it ends: done/total, rate, failures, ETA."""
    bar = Progress(
        TextColumn("[bold]{task.fields[state]}"),
        BarColumn(bar_width=20),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]:.0f}/s"),
        TextColumn("[red]{task.fields[failed]} failed"),
        TextColumn("{task.fields[limits]}"),
        TextColumn("{task.fields[spend]}"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )
    started = time.monotonic()
    batch_mode = run.status().mode == "batch"
    with bar:
        current = run.progress()
        task = bar.add_task(
            "run", total=current.total, state=current.state, rate=0.0, failed=0, limits="", spend=""
        )
        while True:
            current = run.progress()
            elapsed = max(time.monotonic() - started, 1e-6)
            batches = run.batches() if batch_mode else []
            bar.update(
                task,
                completed=current.done,
                total=current.total,
                state=f"{current.state} [{summary(batches)}]" if batches else current.state,
                rate=current.done / elapsed,
                failed=current.failed,
                limits="" if batch_mode else rates_line(run.rates()),
                spend=spend_line(current),
            )
            if current.finished:
                return current
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
