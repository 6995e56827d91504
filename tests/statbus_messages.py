"""The message bodies statbus's three SSE routes send (the contract: statbus 99371ab, its
listener and routes, restated from facts), as templates for ``tests.raw_sse.expect_frame``:
the wire tests frame them (``data: ...``), the browser tests compare them with what
``onmessage`` got."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tests.raw_sse import CID, STR, TS, js_json, js_parse, js_stringify

# The keys statbus's worker_status route keeps of an import_job_progress payload, in its order
# (after "type"; the two counts come last, 0 when absent or null).
PROGRESS_KEYS = (
    "job_id",
    "state",
    "total_rows",
    "analysis_completed_pct",
    "imported_rows",
    "import_completed_pct",
)


def established(job_ids: Iterable[int], scope: str) -> str:
    """import-jobs' first message."""
    return (
        '{"type":"connection_established","jobIds":'
        + js_stringify([float(i) for i in job_ids])
        + f',"scope":"{scope}","timestamp":"{TS}","connectionId":"{CID}",'
        + f'"serverInfo":{{"version":"{STR}","environment":"{STR}"}}}}'
    )


def job_message(verb: str, enriched: str) -> str:
    """import-jobs' message for a row as its listener read it."""
    return f'{{"verb":"{verb}","import_job":{js_json(enriched)},"timestamp":"{TS}"}}'


def deleted_message(job_id: int) -> str:
    return f'{{"verb":"DELETE","import_job":{{"id":{job_id}}},"timestamp":"{TS}"}}'


def reshaped_progress(raw: str) -> str:
    """What the worker_status route sends for an import_job_progress payload."""
    payload = js_parse(raw)
    out: dict[str, Any] = {"type": "import_job_progress"}
    for key in PROGRESS_KEYS:
        if key in payload:
            out[key] = payload[key]
    for key in ("error_count", "warning_count"):
        value = payload.get(key)
        out[key] = 0.0 if value is None else value
    return js_stringify(out)
