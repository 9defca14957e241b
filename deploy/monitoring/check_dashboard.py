#!/usr/bin/env python3
"""Checks the Grafana dashboard, and the metric names of the alert rules and
their tests, against the metric names pgwarden's health API exports.

    check_dashboard.py [--metrics FILE | --source DIR] [--promql-rules OUT]
                       DASHBOARD.json RULES.yml [RULES.test.yml]

The exported names come from FILE when given: a scrape of a node's /metrics
(`curl -s http://node:8008/metrics > FILE`) or a list of names, one a line.
Otherwise they are read from the health API's source (DIR, by default
crates/health-api/src): the names passed to its `metric(...)` helper and
those of hand-written `# TYPE` lines, test modules left out. Besides those,
`up` may be used: Prometheus writes it for every target.

The dashboard must parse as JSON and have a schemaVersion, a Prometheus
data source variable, and panels that each have a gridPos inside the
24-column grid (no two overlapping) and, except rows, at least one target
with a PromQL `expr`; every `$variable` used must be defined. Every metric
name in a panel's or variable's query, in a rule's `expr` and in a test's
input series must be an exported one. Each alert must have a test case that
expects it to fire and one that expects it silent, and a `runbook` into
docs/ must name an existing heading.

With --promql-rules, the dashboard's queries are written to OUT as recording
rules (variables replaced by sample values) so that `promtool check rules OUT`
parses them. Python 3 standard library only: no YAML parser, so the YAML
files are read line by line, for the forms these files use, and anything
else found where an expression is expected is an error rather than skipped.
Exits 1 with one line per problem.
"""

import argparse
import json
import re
import sys
from pathlib import Path

# Series Prometheus itself adds for every scraped target.
PROMETHEUS_SERIES = {"up"}

# Grafana's built-in variables that may appear in a query.
GRAFANA_BUILTINS = {
    "__rate_interval", "__interval", "__interval_ms", "__range", "__range_s", "__range_ms",
    "__from", "__to", "__dashboard", "__user", "__org",
}

# PromQL words that are neither metrics nor followed by "(".
PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
    "bool", "offset", "atan2", "inf", "nan",
    # Aggregations may be written `sum by (x) (...)`, so not always followed by "(".
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
    "bottomk", "topk", "quantile", "limitk", "limit_ratio",
}

METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
GRID_COLUMNS = 24


class Problems:
    def __init__(self):
        self.lines = []

    def add(self, where, what):
        self.lines.append(f"{where}: {what}")


def exported_from_source(source_dir):
    """Metric names the health API's code writes, from its Rust source."""
    names = set()
    files = sorted(Path(source_dir).rglob("*.rs"))
    for path in files:
        text = path.read_text(encoding="utf-8")
        tests = re.search(r"#\[cfg\(test\)\]\s*mod\s+\w+\s*\{", text)
        if tests:
            text = text[: tests.start()]
        names.update(re.findall(r'\bmetric\(\s*"([a-zA-Z_:][a-zA-Z0-9_:]*)"', text))
        names.update(re.findall(r"# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) ", text))
    if not names:
        sys.exit(
            f"check_dashboard: found no metric names in {source_dir} ({len(files)} .rs files); "
            "the code's shape changed: pass --metrics with a scrape of /metrics"
        )
    return names


def exported_from_file(path):
    """Metric names from a /metrics scrape or a list of names."""
    names = set()
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            parts = line.split()
            if len(parts) >= 3:
                names.add(parts[2])
        elif line and not line.startswith("#"):
            match = METRIC_NAME.match(line)
            if match:
                names.add(match.group(0))
    if not names:
        sys.exit(f"check_dashboard: no metric names in {path}")
    return names


def strip_strings(expr):
    """The expression with its string literals emptied."""
    return re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)


def metric_names(expr):
    """Metric names a PromQL expression selects; raises ValueError for a
    selector by `__name__`, which cannot be checked."""
    text = strip_strings(expr)
    matchers = re.findall(r"\{[^{}]*\}", text)
    if any("__name__" in m for m in matchers):
        raise ValueError("selects metrics by __name__; name them instead")
    text = re.sub(r"\{[^{}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\$\{[^}]*\}|\$\w+|\[\[\w+\]\]", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w:.])[a-zA-Z_:][a-zA-Z0-9_:]*", text):
        word = match.group(0)
        rest = text[match.end():].lstrip()
        if rest.startswith("(") or word.lower() in PROMQL_WORDS:
            continue
        names.add(word)
    return names


def variables_used(text):
    """Grafana variables a text uses: $name, ${name}, ${name:format}, [[name]]."""
    pattern = r"\$\{([A-Za-z_]\w*)(?::\w+)?\}|\$([A-Za-z_]\w*)|\[\[([A-Za-z_]\w*)\]\]"
    return {next(group for group in groups if group) for groups in re.findall(pattern, text)}


def check_names(where, expr, exported, problems):
    try:
        used = metric_names(expr)
    except ValueError as e:
        problems.add(where, str(e))
        return
    for name in sorted(used - exported - PROMETHEUS_SERIES):
        problems.add(where, f"metric {name} is not one pgwarden exports")


# --- The dashboard -------------------------------------------------------------


def all_panels(panels):
    """Every panel, those inside collapsed rows too."""
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels") or [])


def variable_query(variable):
    query = variable.get("query")
    if isinstance(query, dict):
        query = query.get("query", "")
    return query if isinstance(query, str) else ""


def check_variable_query(where, query, exported, problems):
    """A query variable's Grafana query: label_values(SELECTOR, label),
    query_result(EXPR), or a plain PromQL expression."""
    query = query.strip()
    label_values = re.fullmatch(r"label_values\((.*),\s*\w+\s*\)", query, re.S)
    result = re.fullmatch(r"query_result\((.*)\)", query, re.S)
    if label_values:
        check_names(where, label_values.group(1), exported, problems)
    elif result:
        check_names(where, result.group(1), exported, problems)
    elif re.fullmatch(r"label_values\(\s*\w+\s*\)|label_names\(\)", query):
        return
    elif re.match(r"metrics\(", query):
        problems.add(where, "metrics(...) lists names by pattern; name them instead")
    else:
        check_names(where, query, exported, problems)


def uses_prometheus_variable(datasource, prometheus_variables):
    if not isinstance(datasource, dict):
        return False
    uid = str(datasource.get("uid", ""))
    return any(uid in (f"${v}", f"${{{v}}}") for v in prometheus_variables)


def check_dashboard(path, exported, problems):
    """Returns the dashboard's queries as (panel id, refId, expr)."""
    where = str(path)
    try:
        dashboard = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        problems.add(where, f"not valid JSON: {e}")
        return []
    if not isinstance(dashboard, dict):
        problems.add(where, "not a JSON object")
        return []
    if not isinstance(dashboard.get("schemaVersion"), int):
        problems.add(where, "no integer schemaVersion")
    if not dashboard.get("title"):
        problems.add(where, "no title")
    variables = (dashboard.get("templating") or {}).get("list") or []
    defined = {v.get("name") for v in variables}
    prometheus_variables = {
        v.get("name") for v in variables if v.get("type") == "datasource" and v.get("query") == "prometheus"
    }
    prometheus_variables |= {
        i.get("name") for i in dashboard.get("__inputs") or [] if i.get("pluginId") == "prometheus"
    }
    if not prometheus_variables:
        problems.add(where, "no Prometheus data source variable (a `datasource` variable or ${DS_PROMETHEUS})")
    for variable in variables:
        if variable.get("type") != "query":
            continue
        name = f"{where}: variable {variable.get('name')}"
        query = variable_query(variable)
        check_variable_query(name, query, exported, problems)
        for used in sorted(variables_used(query) - defined - GRAFANA_BUILTINS):
            problems.add(name, f"uses ${used}, which is not defined")
        if not uses_prometheus_variable(variable.get("datasource"), prometheus_variables):
            problems.add(name, "its datasource is not the Prometheus data source variable")

    panels = dashboard.get("panels")
    if not isinstance(panels, list) or not panels:
        problems.add(where, "no panels")
        return []
    queries = []
    ids = set()
    placed = []
    for panel in all_panels(panels):
        name = f"{where}: panel {panel.get('id')} {panel.get('title')!r}"
        if panel.get("id") in ids:
            problems.add(name, "its id is not unique")
        ids.add(panel.get("id"))
        grid = panel.get("gridPos")
        keys = ("x", "y", "w", "h")
        if not isinstance(grid, dict) or not all(isinstance(grid.get(k), int) for k in keys):
            problems.add(name, "no gridPos with integer x, y, w, h")
        elif grid["x"] < 0 or grid["y"] < 0 or grid["w"] < 1 or grid["h"] < 1:
            problems.add(name, f"gridPos {grid} is out of the grid")
        elif grid["x"] + grid["w"] > GRID_COLUMNS:
            problems.add(name, f"gridPos {grid} is wider than the grid's {GRID_COLUMNS} columns")
        elif any(panel is top for top in panels):
            for other, other_grid in placed:
                if (grid["x"] < other_grid["x"] + other_grid["w"] and other_grid["x"] < grid["x"] + grid["w"]
                        and grid["y"] < other_grid["y"] + other_grid["h"]
                        and other_grid["y"] < grid["y"] + grid["h"]):
                    problems.add(name, f"overlaps panel {other}")
            placed.append((panel.get("id"), grid))
        if panel.get("type") == "row":
            continue
        targets = panel.get("targets")
        if not isinstance(targets, list) or not targets:
            problems.add(name, "no targets")
            continue
        if not uses_prometheus_variable(panel.get("datasource"), prometheus_variables):
            problems.add(name, "its datasource is not the Prometheus data source variable")
        refs = set()
        for target in targets:
            ref = target.get("refId")
            expr = target.get("expr")
            if ref in refs or not ref:
                problems.add(name, f"refId {ref!r} is missing or repeated")
            refs.add(ref)
            if not isinstance(expr, str) or not expr.strip():
                problems.add(name, f"target {ref} has no expr")
                continue
            check_names(f"{name} target {ref}", expr, exported, problems)
            for used in sorted(variables_used(expr) - defined - GRAFANA_BUILTINS):
                problems.add(f"{name} target {ref}", f"uses ${used}, which is not defined")
            queries.append((panel.get("id"), ref, expr))
    return queries


def write_promql_rules(queries, out):
    """The queries as recording rules, for `promtool check rules`."""

    def sample(expr):
        # A variable in a range or subquery stands for a duration; in a
        # string it stays as written (still valid PromQL).
        return re.sub(r"\[([^\]]*)\]", lambda m: "[" + re.sub(r"\$\{?\w+\}?", "1m", m.group(1)) + "]", expr)

    lines = ["groups:", "  - name: pgwarden-dashboard-queries", "    rules:"]
    for panel_id, ref, expr in queries:
        lines.append(f"      - record: pgwarden_dashboard:panel_{panel_id}_{ref}")
        lines.append(f"        expr: {json.dumps(sample(expr))}")
    Path(out).write_text("\n".join(lines) + "\n", encoding="utf-8")


# --- The rules and their tests (YAML read line by line) -------------------------


def yaml_scalar(lines, index, where):
    """The value of the `key: value` at lines[index], which may be a block
    scalar (| or >) or a quoted or plain one, plain ones continued on more
    indented lines. Returns (value, index of the next line)."""
    line = lines[index]
    key_indent = len(line) - len(line.lstrip(" -"))
    value = line.split(":", 1)[1].strip()
    following = index + 1

    def more_indented(i):
        return i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > key_indent)

    if re.fullmatch(r"[|>][-+]?", value):
        block = []
        while more_indented(following):
            block.append(lines[following].strip())
            following += 1
        return "\n".join(block).strip(), following
    if value.startswith("'"):
        if not re.fullmatch(r"'(?:[^']|'')*'", value):
            raise ValueError(f"{where}: a quoted value over several lines; use a block scalar (|)")
        return value[1:-1].replace("''", "'"), following
    if value.startswith('"'):
        try:
            return json.loads(value), following
        except json.JSONDecodeError:
            raise ValueError(f"{where}: a quoted value this checker cannot read; use a block scalar (|)")
    parts = [value]
    while more_indented(following) and lines[following].strip():
        parts.append(lines[following].strip())
        following += 1
    return " ".join(parts), following


def markdown_anchors(path):
    """The anchors GitHub gives a Markdown file's headings."""
    headings = re.findall(r"(?m)^#+ (.*)$", Path(path).read_text(encoding="utf-8"))
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def check_rules(path, exported, problems):
    """Returns the alert names."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    repo = Path(__file__).resolve().parents[2]
    alerts = []
    expressions = 0
    for index, line in enumerate(lines):
        alert = re.match(r"^\s*-?\s*alert:\s*(\S+)\s*$", line)
        if alert:
            alerts.append(alert.group(1))
        # A runbook into this repository's docs must name an existing heading.
        runbook = re.match(r"^\s*runbook:\s*(docs/[\w./-]+\.md)#(\S+)\s*$", line)
        if runbook and runbook.group(2) not in markdown_anchors(repo / runbook.group(1)):
            problems.add(f"{path}:{index + 1}", f"runbook {runbook.group(1)}#{runbook.group(2)}: no such heading")
        if re.match(r"^\s*-?\s*expr:", line):
            where = f"{path}:{index + 1}"
            try:
                expr, _ = yaml_scalar(lines, index, where)
            except ValueError as e:
                problems.add(where, str(e))
                continue
            expressions += 1
            check_names(where, expr, exported, problems)
    if not expressions:
        problems.add(str(path), "no `expr:` found")
    return alerts


def check_rule_tests(path, alerts, exported, problems):
    text = Path(path).read_text(encoding="utf-8")
    series = 0
    for match in re.finditer(r"\bseries:\s*(\S.*)$", text, re.M):
        where = f"{path}:{text.count(chr(10), 0, match.start()) + 1}"
        quoted = re.match(r"'((?:[^']|'')*)'|\"((?:[^\"\\]|\\.)*)\"", match.group(1))
        if not quoted:
            problems.add(where, "an input series this checker cannot read; quote it")
            continue
        selector = quoted.group(1).replace("''", "'") if quoted.group(1) is not None else quoted.group(2)
        series += 1
        check_names(where, selector, exported, problems)
    if not series:
        problems.add(str(path), "no input series found")
    # One alert_rule_test item per chunk: from a line starting an item with
    # one of its keys to the next such line.
    items = re.split(r"(?m)^(?=\s*- (?:eval_time|alertname|exp_alerts):)", text)[1:]
    firing, silent = set(), set()
    for item in items:
        names = re.findall(r"\balertname:\s*(\S+)", item)
        if len(names) != 1:
            problems.add(str(path), f"an alert_rule_test item names {len(names)} alerts: {item.strip()[:60]!r}")
            continue
        if re.search(r"\bexp_alerts:\s*\[\s*\]", item):
            silent.add(names[0])
        elif re.search(r"\bexp_labels:", item):
            firing.add(names[0])
    for alert in alerts:
        if alert not in firing:
            problems.add(str(path), f"no test expects {alert} to fire")
        if alert not in silent:
            problems.add(str(path), f"no test expects {alert} to stay silent")
    for name in sorted((firing | silent) - set(alerts)):
        problems.add(str(path), f"tests an alert the rules do not define: {name}")
    return series


def main():
    default_source = Path(__file__).resolve().parents[2] / "crates" / "health-api" / "src"
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    names = parser.add_mutually_exclusive_group()
    names.add_argument("--metrics", help="a /metrics scrape or a list of metric names")
    names.add_argument("--source", default=str(default_source), help="the health API's source directory")
    parser.add_argument("--promql-rules", help="write the dashboard's queries here as recording rules")
    parser.add_argument("dashboard")
    parser.add_argument("rules")
    parser.add_argument("rule_tests", nargs="?")
    args = parser.parse_args()

    if args.metrics:
        exported, origin = exported_from_file(args.metrics), args.metrics
    else:
        exported, origin = exported_from_source(args.source), args.source
    problems = Problems()
    queries = check_dashboard(args.dashboard, exported, problems)
    alerts = check_rules(args.rules, exported, problems)
    series = check_rule_tests(args.rule_tests, alerts, exported, problems) if args.rule_tests else 0
    if problems.lines:
        for line in problems.lines:
            print(f"FAILED: {line}", file=sys.stderr)
        print(f"(metric names from {origin}: {', '.join(sorted(exported))})", file=sys.stderr)
        return 1
    if args.promql_rules:
        write_promql_rules(queries, args.promql_rules)
    print(f"ok: {len(exported)} exported metric names (from {origin})")
    print(f"ok: {args.dashboard} ({len(queries)} queries: names, grid, targets, variables)")
    shown = set().union(*(metric_names(expr) for _, _, expr in queries)) if queries else set()
    if exported - shown:
        print(f"note: exported but on no panel: {', '.join(sorted(exported - shown))}")
    print(f"ok: {args.rules} ({len(alerts)} alerts: metric names)")
    if args.rule_tests:
        print(f"ok: {args.rule_tests} ({series} input series; each alert tested firing and silent)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
