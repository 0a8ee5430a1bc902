"""Progress bars (rich) that can be switched off, with a throughput column."""

from __future__ import annotations

import contextlib
from typing import Iterator

__all__ = ["progress_bar"]


class _NullBar:
    def advance(self, n: int = 1) -> None:
        pass

    def set_description(self, text: str) -> None:
        pass


class _RichBar:
    def __init__(self, progress, task):
        self._progress, self._task = progress, task

    def advance(self, n: int = 1) -> None:
        self._progress.advance(self._task, n)

    def set_description(self, text: str) -> None:
        """Replace the text before the bar (e.g. to show the current loss)."""
        self._progress.update(self._task, description=text)


@contextlib.contextmanager
def progress_bar(total: int, description: str, *, unit: str = "items", enabled: bool = True) -> Iterator:
    """A rich progress bar on stderr showing done/total, rate in ``unit``/s and time left."""
    if not enabled:
        yield _NullBar()
        return
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn,
                               TimeRemainingColumn)

    class _Rate(TextColumn):
        def render(self, task):  # type: ignore[override]
            speed = task.finished_speed or task.speed
            from rich.text import Text

            return Text(f"{speed:,.1f} {unit}/s" if speed else f"- {unit}/s", style="cyan")

    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TaskProgressColumn(), _Rate(""), TimeRemainingColumn(),
                        console=Console(stderr=True), transient=False)
    with progress:
        task = progress.add_task(description, total=total)
        yield _RichBar(progress, task)
