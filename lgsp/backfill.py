"""Backfill: re-pull a pipeline's past data intervals, each as one DAG run, without moving its cursor.

`lgsp backfill PIPELINE --from 2025-08-01 --to 2025-08-04` cuts `[from, to)`
at the pipeline's schedule (Vietnam time: `@daily` = one local day) and runs
the pipeline's DAG once per interval, with the interval as its `since`/`until`
(the source is asked only for rows changed inside it) and its start as the
run's logical date. Loads are upserts on the dataset key, so running the same
backfill again changes nothing.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

from croniter import croniter

VN = ZoneInfo("Asia/Ho_Chi_Minh")
MAX_INTERVALS = 1000
PRESETS = {"@hourly": "0 * * * *", "@daily": "0 0 * * *", "@weekly": "0 0 * * 0", "@monthly": "0 0 1 * *",
           "@yearly": "0 0 1 1 *"}


@dataclass(frozen=True)
class DataInterval:
    """One run's window `[start, end)` (aware datetimes)."""

    start: datetime
    end: datetime

    def conf(self) -> dict[str, object]:
        """The DAG params of a run that pulls this interval."""
        return {"full_refresh": False, "since": self.start.isoformat(), "until": self.end.isoformat()}

    def __str__(self) -> str:
        return f"[{self.start.isoformat()}, {self.end.isoformat()})"


def data_intervals(start: datetime, end: datetime, schedule: str | None) -> list[DataInterval]:
    """`[start, end)` cut at every tick of `schedule` (cron or preset, in Vietnam time) in between.

    Together the intervals cover `[start, end)` exactly once; without a schedule it is one interval.

    Raises:
        ValueError: `end` is not after `start`, the schedule is not a cron expression, or the range would
            make more than 1000 runs (backfill it in parts, or with a coarser `--every`).
    """
    if end <= start:
        raise ValueError(f"--to {end.isoformat()} must be after --from {start.isoformat()}")
    if schedule is None:
        return [DataInterval(start, end)]
    expression = PRESETS.get(schedule, schedule)
    if not croniter.is_valid(expression):
        raise ValueError(f"schedule {schedule!r} is not a cron expression or preset ({', '.join(PRESETS)})")
    ticks = croniter(expression, start.astimezone(VN))
    edges = [start]
    while True:
        tick = ticks.get_next(datetime)
        if tick >= end:
            break
        edges.append(tick.astimezone(timezone.utc))
        if len(edges) > MAX_INTERVALS:
            raise ValueError(f"{schedule!r} cuts [{start}, {end}) into more than {MAX_INTERVALS} runs: backfill a "
                             "shorter range, or pass a coarser --every (e.g. @daily)")
    edges.append(end)
    return [DataInterval(a.astimezone(timezone.utc), b.astimezone(timezone.utc)) for a, b in zip(edges, edges[1:])]


def local_midnight(day: str) -> datetime:
    """`2025-08-01` -> 2025-08-01 00:00 in Vietnam; an ISO instant with an offset is kept as given."""
    value = datetime.fromisoformat(day)
    return value if value.tzinfo else value.replace(tzinfo=VN)


def covered(intervals: list[DataInterval]) -> timedelta:
    """How much time the intervals cover (equals `to - from` when they tile the range)."""
    return sum((i.end - i.start for i in intervals), timedelta())
