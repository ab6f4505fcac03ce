"""store/grafana/egress-filter.json: valid JSON, and every metric it queries is one our servers export."""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from dns_blocker.metrics import PromMetrics
from runtime.eventlog import EventLog, metrics_collector
from store import Store


def exported(tmp_path: Path) -> set[str]:
    """The sample names a real DNS and proxy metrics registry serve, with the log and store collectors."""
    from proxy_addons.telemetry import Metrics

    names: set[str] = set()
    store = Store(str(tmp_path / "m.db"))
    log = EventLog(None)
    try:
        registries: list[CollectorRegistry] = [PromMetrics().registry, Metrics().registry]
        for reg, prefix in zip(registries, ("egress_dns", "egress_proxy"), strict=True):
            reg.register(metrics_collector(prefix, lambda: log))
            reg.register(store.collector(prefix))
            # Labelled metrics only show up once a child exists: the dashboard queries them by label.
            for line in generate_latest(reg).decode().splitlines():
                m = re.match(r"# (?:HELP|TYPE) (\w+)", line) or re.match(r"(\w+)[{ ]", line)
                if m:
                    names.add(m.group(1))
    finally:
        store.close()
    for n in list(names):  # counters and histograms are queried by their sample names
        names |= {n + "_total", n + "_bucket", n + "_count", n + "_sum"}
    return names


def dashboard_doc() -> dict[str, object]:
    text = resources.files("store").joinpath("grafana", "egress-filter.json").read_text(encoding="utf-8")
    doc = json.loads(text)
    assert isinstance(doc, dict)
    return doc


def test_grafana_dashboard_is_valid_json_with_panels() -> None:
    doc = dashboard_doc()
    panels = doc["panels"]
    assert isinstance(panels, list) and len(panels) >= 8
    assert len({p["id"] for p in panels}) == len(panels)
    assert all(p["targets"] and all(t["expr"] for t in p["targets"]) for p in panels)


@pytest.mark.parametrize("prefix", [pytest.param("egress_dns", id="dns"),
                                    pytest.param("egress_proxy", id="proxy")])
def test_every_queried_metric_exists(tmp_path: Path, prefix: str) -> None:
    exprs = [t["expr"] for p in dashboard_doc()["panels"] for t in p["targets"]]  # type: ignore[attr-defined]
    used = {m for e in exprs for m in re.findall(r"\begress_[a-z_]+", e) if m.startswith(prefix)}
    assert used, f"no {prefix} metric on the dashboard"
    missing = used - exported(tmp_path)
    assert not missing, f"the dashboard queries metrics nobody exports: {sorted(missing)}"
