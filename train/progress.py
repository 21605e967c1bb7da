"""What a run shows while it trains: a rich progress bar on stderr, plural wording (lines go through :data:`rn_deploy.log.Log`)."""

from __future__ import annotations

from typing import Any

from rn_deploy.log import Log as Log  # the one log type, re-exported for rn_deploy.train.loop


class ProgressBar:
    """A rich progress bar on stderr (rank 0), or nothing."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.bar: Any = None

    def __enter__(self) -> ProgressBar:
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[stats]}"), TimeRemainingColumn(), console=Console(stderr=True),
                                transient=False)
            self.bar.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)

    def task(self, desc: str, total: int) -> Any:
        return self.bar.add_task(desc, total=total, stats="") if self.bar else None

    def update(self, task: Any, stats: str, advance: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(task, advance=advance, stats=stats)


def plural(n: int, word: str) -> str:
    """``1 epoch``, ``4 epochs``."""
    return f"{n} {word}{'' if n == 1 else 's'}"
