"""`lgsp discover SYSTEM [OPERATION]`: draft a dataset and its pipeline from what the system answers.

The draft is printed as the YAML blocks docs/adding-a-system.md asks for, with a note on every
guess; `--write` appends them to the catalog (after checking the whole catalog loads with them).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import typer


def fail(message: str) -> None:
    """lgsp's error line, the message shown as written (a draft's notes hold brackets: `[a, b]`)."""
    from rich.markup import escape

    from lgsp.cli import fail as cli_fail

    cli_fail(escape(message))


def register(app: typer.Typer) -> None:
    app.command(name="discover")(discover)


def discover(system: str = typer.Argument(None, help="a system declared in catalog/systems.yaml"),
             operation: str = typer.Argument(None, help="REST: the path (/api/cards); SOAP: the operation "
                                                        "(without it, the system's operations are listed: a SOAP "
                                                        "system's from its WSDL, a REST one's from its OpenAPI)"),
             dataset: str = typer.Option(None, help="the dataset's name (default: from the path or operation)"),
             pipeline: str = typer.Option(None, help="the pipeline's name (default: SYSTEM_DATASETs)"),
             sample: int = typer.Option(1000, min=1, max=100_000, help="records to read for the columns and rules"),
             param: list[str] = typer.Option(None, help="a parameter every call sends (NAME=VALUE; repeat)"),
             post: bool = typer.Option(False, help="REST: call with POST and a JSON body (parameters in it)"),
             records_field: str = typer.Option(None, help="where the records are in the answer (dotted path; "
                                                          "default: its largest array of objects)"),
             share: bool = typer.Option(False, help="draft catalog/sharing.yaml's entry too: restricted, every "
                                                    "personal-looking column protected (pseudonym, mask, withhold)"),
             write: bool = typer.Option(False, help="append the draft to catalog/datasets.yaml and pipelines.yaml "
                                                    "(and sharing.yaml) "
                                                    "(LGSP_CATALOG_DIR), after checking the catalog loads with it"),
             compare: str = typer.Option(None, help="instead: does this pipeline's system still answer as the catalog "
                                                    "says? (columns, types, key, cursor, rules; exit 1 on an error); "
                                                    "`all`: every pipeline"),
             since: str = typer.Option(None, help="with --compare: read the records changed since this date or time "
                                                  "(default: from the oldest)"),
             as_json: bool = typer.Option(False, "--json", help="with --compare: print the findings as JSON"),
             ) -> None:
    """Draft a dataset and its pipeline from what a declared system answers: columns and types, key, cursor,
    paging, row rules, each checked against the system; print it (or --write it to the catalog)."""
    import os

    from catalog import load_catalog
    from catalog.loader import CATALOG_DIR
    from rich.console import Console
    from rich.markup import escape

    from lgsp.discover import DiscoverError, discover as draft_of, list_operations, write_draft

    catalog = load_catalog()
    said = Console(stderr=True, highlight=False, emoji=False)
    if compare:
        return _compare(catalog, compare, sample, since, as_json)
    if system is None:
        fail("name a system (and its operation), or a pipeline with --compare")
    if system in catalog.systems and operation is None:
        try:
            for line in list_operations(catalog.systems[system]):
                print(line)
        except DiscoverError as exc:
            fail(str(exc))
        except Exception as exc:  # noqa: BLE001 - the connector's error names the system and what to check
            fail(f"cannot read {system}'s operations: {exc}")
        return
    pairs = [item.partition("=") for item in param or []]
    if any(not sep or not name for name, sep, _ in pairs):
        fail("--param takes NAME=VALUE")
    said.print(f"[cyan]->[/] asking {escape(system)} {escape(operation or '')} ...")
    try:
        draft = draft_of(catalog, system, operation or "", dataset=dataset, pipeline=pipeline, sample=sample,
                         params={name: value for name, _, value in pairs}, method="POST" if post else "GET",
                         records_field=records_field, share=share)
    except DiscoverError as exc:
        fail(str(exc))
    print(draft.text(), end="")
    if write:
        try:
            written = write_draft(draft, Path(os.environ.get("LGSP_CATALOG_DIR") or CATALOG_DIR))
        except DiscoverError as exc:
            fail(str(exc))
        said.print(f"appended to {escape(', '.join(str(p) for p in written))}: read it, then `lgsp catalog` and "
                   f"`lgsp run {draft.pipeline} --inline`")


def _compare(catalog: Any, pipeline: str, sample: int, since: str | None, as_json: bool) -> None:
    """One pipeline's comparison, or every pipeline's (`all`: after a peer's upgrade window, say)."""
    import json

    from rich.console import Console

    from lgsp.cli import _instant
    from lgsp.discover import DiscoverError, compare

    names = list(catalog.pipelines) if pipeline == "all" else [pipeline]
    try:
        results = [compare(catalog, name, sample=sample, since=_instant(since, "--since")) for name in names]
    except DiscoverError as exc:
        fail(str(exc))
    if as_json:
        said = [r.as_dict() for r in results]
        print(json.dumps(said if pipeline == "all" else said[0], ensure_ascii=False))
    else:
        console = Console(highlight=False, emoji=False)
        for result in results:
            _print_comparison(console, result)
    if not all(r.holds for r in results):
        raise typer.Exit(1)


def _print_comparison(console: Any, result: Any) -> None:
    from rich.markup import escape
    from rich.table import Table

    head = f"{result.pipeline}: {result.sampled} record(s) of {result.system}"
    if not result.findings:
        console.print(f"{head}: [green]the system answers as the catalog says[/]")
        return
    table = Table(title=f"{head} against the catalog")
    for column in ("severity", "what", "found"):
        table.add_column(column)
    for finding in result.findings:
        colour = {"error": "red", "warning": "yellow"}.get(finding.severity, "cyan")
        table.add_row(f"[{colour}]{finding.severity}[/]", escape(finding.subject), escape(finding.said))
    console.print(table)
    console.print("[green]no error: the next sync reads these records as the catalog says[/]" if result.holds
                  else "[red]the next sync would fail or quarantine wrongly: mend the catalog or ask the "
                       "system's owner[/]")
