#!/usr/bin/env python3
"""Checks what promtool cannot: that the dashboards import anywhere and plot rates, and that every
alert is explained and tested.

Usage: .venv/bin/python scripts/check-monitoring.py

grafana/dashboards/*.json:
- a `datasource` variable (Prometheus) and `service` / `instance` filter variables; every panel,
  query and variable uses `${datasource}`, never a hard-coded datasource uid (so a dashboard
  imported into an existing Grafana finds its Prometheus);
- every range is `$__rate_interval` (or `$__range` in a stat over the whole time range), never a
  fixed window;
- no raw counter: every `_total`, `_bucket`, `_sum`, `_count` series is inside rate(), irate() or
  increase();
- every paystream and process metric is filtered by `service` and `instance`; every recorded
  series (`level:metric:operation`) is one of deploy/alerts.yml's recording rules, filtered by
  `service` (the rules aggregate instances away).

deploy/alerts.yml, deploy/alerts.test.yml, README.md:
- every alert has a severity (page or ticket), a summary, a description and a runbook_url
  `README.md#<anchor>` naming a heading of README's "Runbook" section, titled with the alert's
  name; every heading there belongs to an alert;
- every alert rule has a unit test in which it fires with the rule's own labels; every recording
  rule is evaluated by a promql_expr_test.

Exits 1 listing every problem found. (Which metrics exist at all is checked against a running
`paystream up`: services/paystream/tests/e2e/up.rs.)
"""

import json
import pathlib
import re
import sys

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
RANGES = {"$__rate_interval", "$__range"}
COUNTER_SUFFIXES = ("_total", "_bucket", "_sum", "_count")
# A metric name as written in PromQL: recorded series contain colons.
NAME = re.compile(r"(?<![\w:$])([a-zA-Z_][a-zA-Z0-9_]*(?::[a-zA-Z0-9_]+)*)(\{[^}]*\})?")
FUNCTIONS = {
    "rate", "irate", "increase", "sum", "max", "min", "avg", "count", "abs", "time", "vector",
    "histogram_quantile", "clamp_min", "clamp_max", "by", "without", "on", "ignoring", "and",
    "or", "unless", "group_left", "group_right", "le", "label_values", "bool", "offset",
    "min_over_time", "max_over_time", "absent", "e",
}


def panels(dashboard):
    for p in dashboard.get("panels", []):
        yield p
        yield from p.get("panels", [])  # a row's own panels (collapsed rows keep them inside)


def datasources(node, path="$"):
    """Every `datasource` value anywhere in a JSON tree, with where it is."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "datasource":
                yield path, v
            yield from datasources(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from datasources(v, f"{path}[{i}]")


def selectors(expr):
    """(metric name, selector text or '', text before the name) for each series in a query."""
    for m in NAME.finditer(expr):
        name = m.group(1)
        if name in FUNCTIONS or name.startswith("__"):
            continue
        after = expr[m.end():].lstrip()
        if after.startswith("(") and m.group(2) is None:
            continue  # a function call
        if name.startswith(("paystream_", "process_")) or ":" in name:
            yield name, m.group(2) or "", expr[: m.start()]


def check_dashboard(path, recorded):
    problems = []
    where = path.relative_to(ROOT)
    d = json.loads(path.read_text(encoding="utf-8"))
    if "__inputs" in d:
        problems.append(f"{where}: __inputs (an export for one Grafana): use the datasource variable")
    variables = {v.get("name"): v for v in d.get("templating", {}).get("list", [])}
    ds = variables.get("datasource")
    if not ds or ds.get("type") != "datasource" or ds.get("query") != "prometheus":
        problems.append(f"{where}: no `datasource` variable of type datasource (prometheus)")
    for name in ("service", "instance"):
        v = variables.get(name)
        if not v or v.get("type") != "query" or not v.get("includeAll") or not v.get("multi"):
            problems.append(f"{where}: no `{name}` filter variable (a multi-value query with All)")
    for at, value in datasources(d):
        if value != DATASOURCE:
            problems.append(f"{where}: {at} = {value!r}: use {DATASOURCE}")
    ids = [p.get("id") for p in panels(d)]
    if len(ids) != len(set(ids)):
        problems.append(f"{where}: panel ids repeat: {sorted(ids)}")
    queries = 0
    for p in panels(d):
        title = p.get("title", "?")
        for t in p.get("targets", []):
            expr = t.get("expr", "")
            queries += 1
            for window in re.findall(r"\[([^\]]+)\]", expr):
                if window not in RANGES:
                    problems.append(f"{where}: {title!r}: fixed window [{window}]: use $__rate_interval")
                if window == "$__range" and p.get("type") != "stat":
                    problems.append(f"{where}: {title!r}: $__range outside a stat panel")
            for name, selector, before in selectors(expr):
                if name.endswith(COUNTER_SUFFIXES) and not re.search(r"\b(rate|irate|increase)\(\s*$", before):
                    problems.append(f"{where}: {title!r}: {name} plotted raw: use rate() or increase()")
                if ":" in name:
                    if name not in recorded:
                        problems.append(f"{where}: {title!r}: {name} is no recording rule of deploy/alerts.yml")
                    if 'service=~"$service"' not in selector:
                        problems.append(f"{where}: {title!r}: {name} not filtered by $service")
                elif not ('service=~"$service"' in selector and 'instance=~"$instance"' in selector):
                    problems.append(f"{where}: {title!r}: {name} not filtered by $service and $instance")
    if queries == 0:
        problems.append(f"{where}: no queries")
    return problems


def github_anchor(heading):
    text = heading.strip().lower().replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def runbook_headings():
    """Anchor → heading text of the `###` headings of README's "## Runbook" section."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    m = re.search(r"^## Runbook\n(.*?)(?=^## )", text, re.S | re.M)
    if not m:
        return None
    return {github_anchor(h): h.strip() for h in re.findall(r"^### (.+)$", m.group(1), re.M)}


def check_rules():
    problems = []
    rules = yaml.safe_load((ROOT / "deploy/alerts.yml").read_text(encoding="utf-8"))
    tests = yaml.safe_load((ROOT / "deploy/alerts.test.yml").read_text(encoding="utf-8"))
    alerts, recorded = [], set()
    for group in rules.get("groups", []):
        for rule in group.get("rules", []):
            if "record" in rule:
                recorded.add(rule["record"])
            else:
                alerts.append(rule)

    fired = []  # (alertname, expected labels) of every expected alert in the tests
    evaluated = set()
    for case in tests.get("tests", []):
        for t in case.get("alert_rule_test", []):
            for a in t.get("exp_alerts") or []:
                fired.append((t["alertname"], a.get("exp_labels") or {}))
        for t in case.get("promql_expr_test", []):
            evaluated.add(t["expr"].strip())

    runbook = runbook_headings()
    if runbook is None:
        problems.append("README.md: no `## Runbook` section")
        runbook = {}
    documented = set()
    for rule in alerts:
        name = rule["alert"]
        labels = rule.get("labels") or {}
        notes = rule.get("annotations") or {}
        if labels.get("severity") not in ("page", "ticket"):
            problems.append(f"alerts.yml: {name}: severity must be page or ticket")
        for key in ("summary", "description", "runbook_url"):
            if not notes.get(key):
                problems.append(f"alerts.yml: {name}: no annotations.{key}")
        url = notes.get("runbook_url", "")
        anchor = url.split("#", 1)[1] if url.startswith("README.md#") else None
        if anchor is None:
            problems.append(f"alerts.yml: {name}: runbook_url {url!r} is not README.md#<anchor>")
        elif anchor not in runbook:
            problems.append(f"alerts.yml: {name}: README.md has no runbook heading #{anchor}")
        elif runbook[anchor].replace("`", "") != name:
            problems.append(f"alerts.yml: {name}: its runbook heading is {runbook[anchor]!r}")
        else:
            documented.add(anchor)
        if not any(a == name and all(str(got.get(k)) == str(v) for k, v in labels.items())
                   for a, got in fired):
            problems.append(f"alerts.test.yml: no test in which {name} {labels} fires")
    for anchor in set(runbook) - documented:
        problems.append(f"README.md: runbook heading {runbook[anchor]!r} belongs to no alert")
    for record in sorted(recorded):
        if not any(record in e for e in evaluated):
            problems.append(f"alerts.test.yml: no promql_expr_test evaluates {record}")
    return problems, recorded, len(alerts)


def main():
    problems, recorded, alerts = check_rules()
    dashboards = sorted((ROOT / "grafana/dashboards").glob("*.json"))
    for path in dashboards:
        problems += check_dashboard(path, recorded)
    for p in problems:
        print(f"check-monitoring: {p}", file=sys.stderr)
    if problems:
        return 1
    print(f"check-monitoring: {len(dashboards)} dashboards, {alerts} alert rules and "
          f"{len(recorded)} recording rules ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
