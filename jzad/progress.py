"""Live progress of a run on stderr with ``rich.progress``: one task per stage of each category.

``RunProgress(enabled)`` is a context manager; ``task(description, total)`` returns a ``Task`` whose
``advance(n)`` moves its bar and ``stage(text)`` shows what is running now (the scoring stage names the
method stage in flight, so a long device call is visible while it runs). Disabled, every call does nothing.
"""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)


class Task:
    """One progress line (no-op when its display is disabled)."""

    def __init__(self, progress: Progress | None, task_id):
        self._progress = progress
        self._id = task_id

    def advance(self, count: int = 1) -> None:
        """Move the bar by count units."""
        if self._progress is not None:
            self._progress.advance(self._id, count)

    def stage(self, text: str) -> None:
        """Show what is running now."""
        if self._progress is not None:
            self._progress.update(self._id, stage=text)

    def finish(self) -> None:
        """Mark the line complete."""
        if self._progress is not None:
            total = self._progress.tasks[self._task_index()].total
            self._progress.update(self._id, completed=total, stage="done")

    def _task_index(self) -> int:
        return [t.id for t in self._progress.tasks].index(self._id)


class RunProgress:
    """The run's live display: a context manager creating ``Task`` lines."""

    def __init__(self, enabled: bool = True, console: Console | None = None):
        self._progress = None
        if enabled:
            self._progress = Progress(
                SpinnerColumn(),
                TextColumn("{task.description:<28}"),
                BarColumn(bar_width=24),
                MofNCompleteColumn(),
                TextColumn("{task.fields[stage]:<16}"),
                TimeElapsedColumn(),
                console=console or Console(stderr=True),
            )

    def __enter__(self) -> "RunProgress":
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.stop()

    def task(self, description: str, total: int) -> Task:
        """A new progress line with ``total`` units."""
        if self._progress is None:
            return Task(None, None)
        return Task(self._progress, self._progress.add_task(description, total=max(int(total), 1), stage=""))
