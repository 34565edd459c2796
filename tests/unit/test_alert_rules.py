"""The alert rules of docs/observability.md, as an operator would paste them: Prometheus's own
``promtool`` takes them, each one fires on the trouble it names and stays quiet otherwise, and
every metric they read is one a node exposes."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from tests.conftest import missing_service

from batchserve.engine.metrics import NodeMetrics
from batchserve.server.metrics import HttpMetrics
from batchserve.store import Store

DOCS = Path(__file__).resolve().parents[2] / "docs" / "observability.md"

# promtool's unit tests of the rules: minute-by-minute series of what a node exposes, and which
# alerts are firing at a given time. A cluster figure comes from two API nodes (two instances).
RULE_TESTS = """
rule_files: [rules.yml]
evaluation_interval: 1m
tests:
  # Batches run, and no record has finished since minute 10: stuck after 15 + 5 minutes.
  - interval: 1m
    input_series:
      - series: 'batchserve_batches{state="running", instance="a"}'
        values: '1x60'
      - series: 'batchserve_batches{state="running", instance="b"}'
        values: '1x60'
      - series: 'batchserve_records{service="s", status="succeeded", instance="a"}'
        values: '0+10x10 100x50'
      - series: 'batchserve_records{service="s", status="succeeded", instance="b"}'
        values: '0+10x10 100x50'
    alert_rule_test:
      - eval_time: 20m
        alertname: BatchserveBatchStuck
        exp_alerts: []
      - eval_time: 40m
        alertname: BatchserveBatchStuck
        exp_alerts:
          - exp_labels:
              state: running
            exp_annotations:
              summary: "batchserve: batches are running but no record has finished for 15 minutes"
  # Records keep finishing: never stuck.
  - interval: 1m
    input_series:
      - series: 'batchserve_batches{state="running", instance="a"}'
        values: '1x60'
      - series: 'batchserve_records{service="s", status="failed", instance="a"}'
        values: '0+3x60'
    alert_rule_test:
      - eval_time: 60m
        alertname: BatchserveBatchStuck
        exp_alerts: []
  # Waiting records grow for over an hour: the queue alert fires; a steady queue does not.
  - interval: 1m
    input_series:
      - series: 'batchserve_queue_records{service="s", instance="a"}'
        values: '0+100x90'
      - series: 'batchserve_queue_oldest_pending_seconds{instance="a"}'
        values: '0+60x90'
    alert_rule_test:
      - eval_time: 20m
        alertname: BatchserveQueueGrowing
        exp_alerts: []
      - eval_time: 80m
        alertname: BatchserveQueueGrowing
        exp_alerts:
          - exp_annotations:
              summary: "batchserve: the queue of waiting records keeps growing"
  - interval: 1m
    input_series:
      - series: 'batchserve_queue_records{service="s", instance="a"}'
        values: '500x90'
      - series: 'batchserve_queue_oldest_pending_seconds{instance="a"}'
        values: '30x90'
    alert_rule_test:
      - eval_time: 80m
        alertname: BatchserveQueueGrowing
        exp_alerts: []
  # A worker dies every minute on node a; one died once on node b.
  - interval: 1m
    input_series:
      - series: 'batchserve_worker_restarts_total{reason="crashed", instance="a"}'
        values: '0+1x30'
      - series: 'batchserve_worker_restarts_total{reason="crashed", instance="b"}'
        values: '0 1x29'
    alert_rule_test:
      - eval_time: 25m
        alertname: BatchserveWorkerCrashLoop
        exp_alerts:
          - exp_labels:
              instance: a
            exp_annotations:
              summary: "batchserve: workers on a keep crashing"
"""


def documented_rules() -> str:
    """The YAML block of the docs' Alerts section."""
    section = DOCS.read_text().split("## Alerts", 1)[1]
    found = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert found is not None, "docs/observability.md has no YAML block under '## Alerts'"
    return found.group(1)


@pytest.fixture
def promtool() -> str:
    # scripts/ fetch it into the virtual environment where the system has none.
    found = shutil.which("promtool") or shutil.which("promtool", path=str(Path(sys.executable).parent))
    if found is None:
        missing_service("promtool is not installed (apt-get install prometheus)")
    assert found is not None
    return found


def test_the_documented_alert_rules_are_valid_for_prometheus(promtool, tmp_path):  # type: ignore[no-untyped-def]
    rules = tmp_path / "rules.yml"
    rules.write_text(documented_rules())
    checked = subprocess.run(
        [promtool, "check", "rules", str(rules)], capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 3 rules found" in checked.stdout


def test_each_alert_fires_on_its_trouble_and_only_then(promtool, tmp_path):  # type: ignore[no-untyped-def]
    (tmp_path / "rules.yml").write_text(documented_rules())
    (tmp_path / "tests.yml").write_text(RULE_TESTS)
    tested = subprocess.run(
        [promtool, "test", "rules", "tests.yml"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_the_alerts_read_only_metrics_a_node_exposes(store: Store) -> None:
    metrics = NodeMetrics()
    metrics.watch_cluster(store)
    HttpMetrics(metrics)
    exposed: set[str] = set()
    for family in text_string_to_metric_families(generate_latest(metrics.registry).decode()):
        exposed.add(family.name)
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
        exposed.update(family.name + s for s in suffixes.get(family.type, ()))
    rules = yaml.safe_load(documented_rules())
    expressions = [r["expr"] for group in rules["groups"] for r in group["rules"]]
    read = {name for e in expressions for name in re.findall(r"\bbatchserve_\w+", e)}
    assert read, expressions
    assert read <= exposed, sorted(read - exposed)
