"""A dataset's data-quality scorecard: one figure per dimension, each from what lgsp already records.

    validity      of the rows pulled in the last `days`, the share the row rules let through (the
                  rest are in quarantine, never dropped), and how many wait there now
    timeliness    the freshness state of the pipelines that fill it (lgsp.freshness): fresh 1,
                  warn 0.5, stale or never 0
    consistency   of the rows that name a record of another dataset, the share that name one lgsp
                  has (lgsp.references); and of the groups a rule across rows reads, the share that
                  hold it (lgsp.group_checks): the lower of the two
    accuracy      of the records the last drift check sampled, the share equal at the source
                  (lgsp drift; datasets with a live lookup only)

A dimension lgsp cannot judge for a dataset (no references, no drift check, no objective, nothing
pulled in the window) has no score (None), and does not count towards the overall figure, the
lowest of the others: a dataset is as good as its weakest dimension (`weakest`; None when every
judged one is 1). Each card also has the
table's profile: its rows and how often each column is filled (current rows of a history
dataset). That is not scored: many empty values are right (a dossier's `finished_at` while it
is unsettled, a birth's `spouse_personal_id`); whether every record of the source is here is
`lgsp reconcile`'s question, asked of the source. `lgsp quality` prints the cards; the
lgsp_freshness DAG keeps them one row a day (`record`), which `lgsp quality --history` sums up
(`history`).

Example (`lgsp quality dossier --json`, shortened)::

    {"dataset": "dossier", "overall": 0.99, "weakest": "validity", "validity": {"score": 0.99,
     "pulled": 6000, "quarantined": 60, "open_quarantine": 60}, "timeliness": {"score": 1.0,
     "state": "fresh", ...}, ..., "profile": {"rows": 5940, "least_filled": [["satisfaction", 0.2017], ...]}}
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import sqlalchemy as sa

from catalog.models import Catalog
from indicators.periods import VN_TZ
from lgsp.freshness import SEVERITY, pipeline_freshness
from lgsp.references import check_all

DIMENSIONS = ("validity", "timeliness", "consistency", "accuracy")
TIMELINESS = {"fresh": 1.0, "warn": 0.5, "stale": 0.0, "never": 0.0}
LEAST_FILLED = 3


def _profile(conn: sa.Connection, tables: Any, catalog: Catalog, name: str) -> dict[str, Any]:
    dataset = catalog.datasets[name]
    table = tables[dataset.table_name]
    columns = list(dataset.columns)
    query = sa.select(sa.func.count(), *(sa.func.count(table.c[c]) for c in columns))
    if dataset.write_mode == "history":
        query = query.where(table.c.is_current)
    counts = conn.execute(query).one()
    rows = int(counts[0])
    if not rows:
        return {"rows": 0, "filled": {}, "least_filled": []}
    shares = {c: int(n) / rows for c, n in zip(columns, counts[1:])}
    least = sorted(((c, s) for c, s in shares.items() if s < 1), key=lambda cs: (cs[1], cs[0]))[:LEAST_FILLED]
    return {"rows": rows, "filled": {c: round(s, 4) for c, s in shares.items()},
            "least_filled": [[c, round(s, 4)] for c, s in least]}


def _validity(conn: sa.Connection, tables: Any, name: str, since: datetime) -> dict[str, Any]:
    batch, quarantine = tables["lgsp_batch"], tables["lgsp_quarantine"]
    pulled, rejected = conn.execute(sa.select(sa.func.coalesce(sa.func.sum(batch.c.rows_pulled), 0),
                                              sa.func.coalesce(sa.func.sum(batch.c.rows_quarantined), 0))
                                    .where(batch.c.dataset == name, batch.c.started_at >= since,
                                           batch.c.status == "loaded")).one()
    waiting = conn.execute(sa.select(sa.func.count()).select_from(quarantine)
                           .where(quarantine.c.dataset == name, quarantine.c.status == "open")).scalar_one()
    pulled, rejected = int(pulled), int(rejected)
    return {"score": round(1 - rejected / pulled, 4) if pulled else None, "pulled": pulled,
            "quarantined": rejected, "open_quarantine": int(waiting)}


def _timeliness(freshness: list[Any], name: str) -> dict[str, Any]:
    judged = [f for f in freshness if f.dataset == name and f.state != "unchecked"]
    if not judged:
        return {"score": None, "state": None, "age_s": None}
    worst = max(judged, key=lambda f: (SEVERITY[f.state], f.age_s if f.age_s is not None else float("inf")))
    return {"score": TIMELINESS[worst.state], "state": worst.state,
            "age_s": None if worst.age_s is None else round(worst.age_s, 1)}


def _consistency(references: list[dict[str, Any]], groups: list[dict[str, Any]], name: str) -> dict[str, Any]:
    own = [r for r in references if r["dataset"] == name]
    rows, orphans = sum(r["rows"] for r in own), sum(r["orphans"] for r in own)
    checks = [g for g in groups if g["dataset"] == name]
    grouped, breaking = sum(g["groups"] for g in checks), sum(g["breaking"] for g in checks)
    scores = [round(1 - orphans / rows, 4)] if rows else []
    scores += [round(1 - breaking / grouped, 4)] if grouped else []
    found = {"score": min(scores) if scores else None, "rows": rows, "orphans": orphans,
             "references": [r["reference"] for r in own]}
    if checks:
        found.update(groups=grouped, breaking_groups=breaking, group_checks=[g["check"] for g in checks])
    return found


def _accuracy(drift: dict[str, Any] | None) -> dict[str, Any]:
    if not drift or not drift.get("sampled"):
        return {"score": None, "sampled": 0, "same": 0, "checked_at": None}
    return {"score": round(drift["same"] / drift["sampled"], 4), "sampled": drift["sampled"], "same": drift["same"],
            "checked_at": drift["checked_at"]}


def scorecards(engine: sa.Engine, tables: Any, catalog: Catalog, dataset: str | None = None,
               days: float = 30.0, now: datetime | None = None, profile: bool = True,
               references: list[dict[str, Any]] | None = None,
               groups: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """The scorecard of each core dataset (of `dataset` only, if given), in catalog order; without the table's
    profile (a scan of the table) when `profile` is False; `references`, `groups`: lgsp.references' and
    lgsp.group_checks' check_all results, when the caller has them."""
    from lgsp import group_checks

    from lgsp.drift import last_checks

    now = now or datetime.now(timezone.utc)
    names = [d.name for d in catalog.datasets.values() if d.layer == "core" and dataset in (None, d.name)]
    drift = last_checks(engine, tables, names)
    with engine.connect() as conn:
        freshness = pipeline_freshness(conn, tables, catalog, now)
        if references is None:
            references = check_all(conn, tables, catalog, now, dataset=dataset, examples=0)
        if groups is None:
            groups = group_checks.check_all(conn, tables, catalog, now, dataset=dataset, examples=0)
        cards = []
        for name in names:
            card: dict[str, Any] = {
                "dataset": name, "validity": _validity(conn, tables, name, now - timedelta(days=days)),
                "timeliness": _timeliness(freshness, name), "consistency": _consistency(references, groups, name),
                "accuracy": _accuracy(drift.get(name))}
            if profile:
                card["profile"] = _profile(conn, tables, catalog, name)
            scores = [card[d]["score"] for d in DIMENSIONS if card[d]["score"] is not None]
            card["overall"] = min(scores) if scores else None
            card["weakest"] = (min((d for d in DIMENSIONS if card[d]["score"] is not None),
                                   key=lambda d: card[d]["score"]) if scores and min(scores) < 1 else None)
            cards.append(card)
    return cards


def percent(score: float | None) -> str:
    """0.9912 -> "99.1%"; None -> "-"."""
    return "-" if score is None else f"{score:.1%}"


def quality_line(cards: list[dict[str, Any]]) -> str:
    """One line for the demo's summary: the datasets' overall scores, the lowest named."""
    judged = [c for c in cards if c["overall"] is not None]
    if not judged:
        return "Quality: nothing to judge yet (`lgsp quality`)"
    worst = min(judged, key=lambda c: (c["overall"], c["dataset"]))
    lowest = f"lowest {worst['dataset']} ({worst['weakest']})" if worst["weakest"] else "every one 100%"
    return (f"Quality: {len(judged)} datasets scored, overall {percent(worst['overall'])} to "
            f"{percent(max(c['overall'] for c in judged))}; {lowest}; `lgsp quality` for each")


def record(wh: Any, cards: list[dict[str, Any]], now: datetime | None = None) -> int:
    """Keep today's scorecards (Vietnam's day) in `lgsp_quality_score`: the latest check's scores, and the lowest
    overall of the day. The lgsp_freshness DAG calls it every 15 minutes. Returns the rows written."""
    now = now or datetime.now(timezone.utc)
    day = now.astimezone(VN_TZ).date()
    table = wh.system["lgsp_quality_score"]
    with wh.engine.connect() as conn:
        kept = {r.dataset: r for r in conn.execute(sa.select(table).where(table.c.day == day))}
    rows = []
    for card in cards:
        before = kept.get(card["dataset"])
        lows = [v for v in (card["overall"], before.lowest if before is not None else None) if v is not None]
        rows.append({"dataset": card["dataset"], "day": day, "overall": card["overall"],
                     "lowest": min(lows) if lows else None, "weakest": card["weakest"],
                     **{d: card[d]["score"] for d in DIMENSIONS},
                     "checks": (before.checks if before is not None else 0) + 1, "checked_at": now})
    with wh.transaction() as conn:
        wh.upsert(conn, table, rows, ["dataset", "day"])
    return len(rows)


def history(wh: Any, days: float = 30.0, now: datetime | None = None) -> list[dict[str, Any]]:
    """Per dataset over the last `days` days: the days recorded, the mean of each day's latest overall score,
    the lowest score seen and on which day, the dimension most often the weakest, and the latest day's score."""
    now = now or datetime.now(timezone.utc)
    since = (now - timedelta(days=days)).astimezone(VN_TZ).date()
    table = wh.system["lgsp_quality_score"]
    with wh.engine.connect() as conn:
        rows = conn.execute(sa.select(table).where(table.c.day > since, table.c.day <= now.astimezone(VN_TZ).date())
                            .order_by(table.c.dataset, table.c.day)).all()
    by_dataset: dict[str, list[Any]] = {}
    for row in rows:
        by_dataset.setdefault(row.dataset, []).append(row)
    result = []
    for dataset, recorded in by_dataset.items():
        scored = [r for r in recorded if r.overall is not None]
        lowest = min((r for r in recorded if r.lowest is not None), key=lambda r: (r.lowest, r.day), default=None)
        weakest = [r.weakest for r in recorded if r.weakest]
        result.append({
            "dataset": dataset, "days": len(recorded),
            "mean": round(sum(r.overall for r in scored) / len(scored), 4) if scored else None,
            "lowest": None if lowest is None else lowest.lowest,
            "lowest_day": None if lowest is None else lowest.day.isoformat(),
            "most_often_weakest": max(set(weakest), key=weakest.count) if weakest else None,
            "latest": recorded[-1].overall, "latest_day": recorded[-1].day.isoformat()})
    return result
