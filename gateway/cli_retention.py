"""`gateway retention sweep`: one retention sweep now, as every gateway runs it on its interval."""

from __future__ import annotations

import logging
from typing import Annotated

from cyclopts import App, Parameter

from gateway.cli_common import (
    UNREACHABLE_POSTGRES,
    CliError,
    Json,
    cli_settings,
    print_json,
    with_database,
)
from gateway.retention import Sweeper, SweepReport
from gateway.store.pg import Database

retention = App(
    name="retention",
    help="""Retention of the audit log and the prompt log.

    Examples
    - `gateway retention sweep --dry-run`
    """,
)


@retention.command(name="sweep")
def retention_sweep(
    *, dry_run: Annotated[bool, Parameter(negative=())] = False, json: Json = False
) -> None:
    """Drop expired audit partitions and delete expired audit and prompt-log rows, now.

    Examples
    - `gateway retention sweep --dry-run --json`

    Parameters
    ----------
    dry_run
        Change nothing: count what a sweep would create, drop and delete.
    """
    settings = cli_settings()
    # The report says what happened; the sweeper's log lines would only repeat it.
    logging.getLogger("gateway.retention").setLevel(logging.CRITICAL)

    async def work(database: Database) -> SweepReport:
        sweeper = Sweeper(
            database,
            default_retention_days=settings.audit_log_default_retention_days,
            interval_s=settings.retention_sweep_interval_s,
        )
        return await sweeper.sweep_once(dry_run=dry_run)

    report = with_database(settings, work)
    if report.outcome == "unavailable":
        raise CliError(UNREACHABLE_POSTGRES)
    if report.outcome == "skipped":
        raise CliError("another sweep is running (a gateway's, most likely); try again shortly")
    if json:
        print_json(report)
    else:
        _print_report(report)
    if report.outcome == "incomplete":
        raise CliError(
            "audit writes held a lock too long for some steps; run it again, "
            "or leave them to the gateways' next sweep"
        )


def _print_report(report: SweepReport) -> None:
    would = "would be " if report.dry_run else ""
    created = ", ".join(report.partitions_created) or "none"
    dropped = ", ".join(report.partitions_dropped) or "none"
    print(f"audit partitions {would}created: {created}")
    print(f"audit partitions {would}dropped: {dropped}")
    print(f"audit rows {would}deleted: {report.audit_rows_deleted}")
    print(f"prompt-log rows {would}deleted: {report.prompt_rows_deleted}")
