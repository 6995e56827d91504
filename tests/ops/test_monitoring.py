"""Prometheus alert rules and the Grafana dashboard, checked against promtool, a real
Prometheus and the metrics a real relay exports."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.ops_support import DEPLOY, background, free_port, require_tool, wait_for_http
from tests.support import base_url, relay_config, running_relay

RULES = DEPLOY / "prometheus" / "stability-relay.rules.yml"
RULE_TESTS = DEPLOY / "prometheus" / "stability-relay.rules.test.yml"
DASHBOARD = DEPLOY / "grafana" / "stability-relay.json"
# Names PromQL uses that are not metrics the relay exports.
NOT_RELAY_METRICS = {"up"}
SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "gauge": ("",),
}


def rule_expressions() -> dict[str, str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {rule["alert"]: rule["expr"] for group in groups for rule in group["rules"]}


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def dashboard_expressions() -> dict[str, str]:
    """Every PromQL expression in the dashboard (panels and template variables), by where."""
    found: dict[str, str] = {}
    for panel in dashboard()["panels"]:
        for target in panel.get("targets", []):
            found[f"{panel['title']} / {target['refId']}"] = target["expr"]
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            query = re.fullmatch(r"label_values\((.+), \w+\)", variable["query"]["query"])
            assert query, variable
            found[f"${variable['name']}"] = query.group(1)
    return found


def concrete(expr: str) -> str:
    """A dashboard query as Grafana sends it, for one job and every instance."""
    return (
        expr.replace("$__rate_interval", "1m")
        .replace("$job", "stability-relay")
        .replace("$instance", ".*")
    )


def metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\b(relay_[a-z0-9_]+|up)\b", expr))


async def exported_series_names(url: str) -> set[str]:
    """The series names a real relay's /metrics declares (counters with ``_total``)."""
    async with aiohttp.ClientSession() as session, session.get(url + "/metrics") as response:
        assert response.status == 200
        text = await response.text()
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ("",)))
    return names


def test_promtool_checks_the_rules() -> None:
    promtool = require_tool("promtool", "prometheus")
    result = subprocess.run(
        [promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rule_expressions())} rules found" in result.stdout


def test_promtool_rule_unit_tests_pass() -> None:
    promtool = require_tool("promtool", "prometheus")
    result = subprocess.run(
        [promtool, "test", "rules", RULE_TESTS.name],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=RULE_TESTS.parent,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_unit_test() -> None:
    tested = {
        case["alertname"]
        for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert tested == set(rule_expressions())


def test_dashboard_is_grafana_json_covering_what_operators_watch() -> None:
    board = dashboard()
    assert board["uid"] and board["title"] and board["schemaVersion"] >= 36
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in board["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
    queried = " ".join(dashboard_expressions().values())
    for metric in (
        "relay_system_stable",  # stability over time
        "relay_state_transitions_total",
        "relay_sse_clients",
        "relay_reconnects_total",
        "relay_webhook_deliveries_total",  # webhook outcomes
        "relay_notify_queue_usage_ratio",
        "relay_polling",  # holds
        "relay_drain_waiting",
    ):
        assert metric in queried, f"the dashboard does not show {metric}"


async def test_rules_and_dashboard_query_only_metrics_the_relay_exports(db_dsn: str) -> None:
    async with running_relay(relay_config(db_dsn)) as relay:
        exported = await exported_series_names(base_url(relay))
    assert "relay_sse_clients_limit" in exported
    assert "relay_webhook_deliveries_total" in exported
    queries = {**rule_expressions(), **dashboard_expressions()}
    for where, expr in queries.items():
        unknown = metric_names(expr) - exported - NOT_RELAY_METRICS
        assert not unknown, f"{where} queries {unknown}, which the relay does not export"


async def test_queries_run_on_a_real_prometheus_scraping_a_relay(
    db_dsn: str, tmp_path: Path
) -> None:
    """Every rule loads and evaluates, and every dashboard query is valid PromQL with data."""
    prometheus = require_tool("prometheus", "prometheus")
    async with running_relay(relay_config(db_dsn)) as relay:
        port = free_port()
        config = tmp_path / "prometheus.yml"
        config.write_text(
            yaml.safe_dump(
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "rule_files": [str(RULES)],
                    "scrape_configs": [
                        {
                            "job_name": "stability-relay",
                            "static_configs": [{"targets": [f"127.0.0.1:{relay.port}"]}],
                        }
                    ],
                }
            )
        )
        url = f"http://127.0.0.1:{port}"
        log = tmp_path / "prometheus.log"
        args = [
            prometheus,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ]
        with background(args, log) as process:
            await wait_for_http(url + "/-/ready", process, log, timeout=30)
            async with aiohttp.ClientSession() as session:

                async def query(expr: str, where: str = "") -> list[Any]:
                    params = {"query": expr}
                    async with session.get(url + "/api/v1/query", params=params) as response:
                        body = await response.json()
                    assert body["status"] == "success", (where, expr, body)
                    result: list[Any] = body["data"]["result"]
                    return result

                for _ in range(100):  # until two scrapes are in (rate() needs two)
                    samples = await query("relay_system_stable[1m]")
                    if samples and len(samples[0]["values"]) >= 2:
                        break
                    await asyncio.sleep(0.2)
                state = await query('max(relay_system_stable{job="stability-relay"})')
                assert state[0]["value"][1] == "1"
                for where, expr in dashboard_expressions().items():
                    await query(concrete(expr), where)
                await asyncio.sleep(1.5)  # a rule evaluation after the scrapes
                async with session.get(url + "/api/v1/rules") as response:
                    rules = (await response.json())["data"]["groups"][0]["rules"]
        assert {rule["name"] for rule in rules} == set(rule_expressions())
        for rule in rules:
            assert rule["health"] == "ok", rule
            assert rule["state"] == "inactive", rule  # a healthy relay raises no alert
