#!/usr/bin/env python3
"""Static checks for the fjord chart, called by helm/check.sh.

  check.py dashboards CHART_DIR [PROMTOOL]
      Every dashboards/*.json parses; every panel has targets with a non-empty expr; every
      target and panel uses the ${datasource} variable; every metric name an expression
      uses is a Fjord metric (or up); with PROMTOOL, every expression (Grafana variables
      substituted) and every variable query selector is valid PromQL.
  check.py rules CHART_DIR
      Every metric name in alerts/fjord-rules.yaml is a Fjord metric (needs PyYAML).
  check.py render RENDER_FILE OUT_RULES_FILE [EXPECT...]
      Extracts the PrometheusRule spec of a `helm template` output into OUT_RULES_FILE
      (for promtool check rules) and checks that each EXPECT string occurs in some alert
      expression (needs PyYAML).

Exit status 1 on any failure; problems are printed one per line.
"""

import glob
import json
import os
import re
import subprocess
import sys
import tempfile

BROKER_METRICS = {
    "fjord_bytes_in_total",
    "fjord_bytes_out_total",
    "fjord_messages_in_total",
    "fjord_produce_errors_total",
    "fjord_requests_total",
    "fjord_request_latency_seconds_bucket",
    "fjord_request_latency_seconds_sum",
    "fjord_request_latency_seconds_count",
    "fjord_active_connections",
    "fjord_partitions",
    "fjord_log_size_bytes",
    "fjord_log_end_offset",
    "fjord_log_start_offset",
    "fjord_high_watermark",
    "fjord_log_segments",
    "fjord_partition_under_replicated",
    "fjord_partition_isr_size",
    "fjord_consumer_group_committed_offset",
    "fjord_consumer_group_lag",
    "fjord_consumer_group_lag_sum",
    "fjord_consumer_group_members",
    "fjord_last_stable_offset",
    "fjord_partition_open_transactions",
    "fjord_partition_under_min_isr",
    "fjord_partition_offline",
    "fjord_isr_shrinks_total",
    "fjord_isr_expands_total",
}
OPERATOR_METRICS = {
    "fjord_operator_reconciliations_total",
    "fjord_operator_reconcile_errors_total",
    "fjord_operator_reconcile_duration_seconds_bucket",
    "fjord_operator_reconcile_duration_seconds_sum",
    "fjord_operator_reconcile_duration_seconds_count",
    "fjord_operator_managed_objects",
    "fjord_operator_leader",
}
KNOWN_METRICS = BROKER_METRICS | OPERATOR_METRICS | {"up"}

KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
    "bool", "offset", "inf", "nan", "atan2",
    # Aggregation operators, which may be followed by by/without before their "(".
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
    "bottomk", "topk", "quantile",
}

problems = []


def problem(msg):
    problems.append(msg)
    print("FAIL:", msg)


def metric_names(expr):
    """Metric names used by a PromQL expression (heuristic, enough for our own exprs)."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    s = re.sub(r"\{[^}]*\}", "", s)  # label matchers
    s = re.sub(r"\[[^\]]*\]", "", s)  # range / subquery durations
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", r"\1", s)
    names = set()
    # An identifier not glued to a number (durations like 5m, literals like 1e3).
    for m in re.finditer(r"(?<![A-Za-z0-9_.:])[A-Za-z_:][A-Za-z0-9_:]*", s):
        name = m.group(0)
        rest = s[m.end():].lstrip()
        if rest.startswith("("):  # a function call
            continue
        if name.lower() in KEYWORDS:
            continue
        names.add(name)
    return names


def substitute_vars(expr):
    expr = expr.replace("$__rate_interval", "5m").replace("${__rate_interval}", "5m")
    return re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", ".*", expr)


def iter_panels(panels):
    for p in panels:
        yield p
        yield from iter_panels(p.get("panels", []))


def check_dashboards(chart, promtool=None):
    files = sorted(glob.glob(os.path.join(chart, "dashboards", "*.json")))
    if not files:
        problem("no dashboards in %s/dashboards" % chart)
    exprs = []  # (where, promql)
    for path in files:
        name = os.path.basename(path)
        try:
            with open(path) as f:
                dash = json.load(f)
        except ValueError as e:
            problem("%s: invalid JSON: %s" % (name, e))
            continue
        for key in ("uid", "title", "panels", "templating"):
            if key not in dash:
                problem("%s: missing %r" % (name, key))
        variables = {v.get("name"): v for v in dash.get("templating", {}).get("list", [])}
        ds = variables.get("datasource")
        if not ds or ds.get("type") != "datasource" or ds.get("query") != "prometheus":
            problem("%s: no datasource variable of type prometheus" % name)
        for vname, var in variables.items():
            if var.get("type") != "query":
                continue
            query = var.get("query")
            if isinstance(query, dict):
                query = query.get("query", "")
            m = re.fullmatch(r"\s*label_values\((.*),\s*([A-Za-z_][A-Za-z0-9_]*)\s*\)\s*", query or "")
            if not m:
                problem("%s: variable %s: query is not label_values(selector, label): %r"
                        % (name, vname, query))
                continue
            exprs.append(("%s variable %s" % (name, vname), m.group(1)))
        ids = set()
        panels = 0
        for panel in iter_panels(dash.get("panels", [])):
            title = panel.get("title", "?")
            where = "%s: panel %r" % (name, title)
            pid = panel.get("id")
            if pid in ids:
                problem("%s: duplicate id %s" % (where, pid))
            ids.add(pid)
            if panel.get("type") == "row":
                continue
            panels += 1
            if panel.get("datasource", {}).get("uid") != "${datasource}":
                problem("%s: datasource is not ${datasource}" % where)
            targets = panel.get("targets") or []
            if not targets:
                problem("%s: no targets" % where)
            for t in targets:
                expr = t.get("expr")
                if not isinstance(expr, str) or not expr.strip():
                    problem("%s: target %s has an empty expr" % (where, t.get("refId")))
                    continue
                if t.get("datasource", {}).get("uid") != "${datasource}":
                    problem("%s: target %s: datasource is not ${datasource}" % (where, t.get("refId")))
                exprs.append(("%s target %s" % (where, t.get("refId")), expr))
        if panels == 0:
            problem("%s: no panels" % name)
        print("dashboard %s: %d panels" % (name, panels))

    for where, expr in exprs:
        unknown = metric_names(expr) - KNOWN_METRICS
        if unknown:
            problem("%s: unknown metric(s) %s in %s" % (where, sorted(unknown), expr))

    if promtool:
        # Validate the PromQL by loading every expression as a recording rule.
        rules = [{"record": "fjord_dashboard_check:expr_%d" % i, "expr": substitute_vars(e)}
                 for i, (_, e) in enumerate(exprs)]
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
            # JSON is YAML: no PyYAML needed.
            json.dump({"groups": [{"name": "dashboard-exprs", "rules": rules}]}, f)
            tmp = f.name
        try:
            out = subprocess.run([promtool, "check", "rules", tmp], capture_output=True, text=True)
            if out.returncode != 0:
                problem("promtool rejects dashboard expressions:\n%s%s" % (out.stdout, out.stderr))
                # Point at the culprits one by one.
                for where, expr in exprs:
                    one = {"groups": [{"name": "x", "rules": [
                        {"record": "fjord_dashboard_check:x", "expr": substitute_vars(expr)}]}]}
                    with open(tmp, "w") as f:
                        json.dump(one, f)
                    r = subprocess.run([promtool, "check", "rules", tmp], capture_output=True, text=True)
                    if r.returncode != 0:
                        problem("%s: invalid PromQL: %s" % (where, expr))
            else:
                print("promtool: %d dashboard expressions are valid PromQL" % len(exprs))
        finally:
            os.unlink(tmp)


def load_yaml_module():
    try:
        import yaml  # noqa: F401
        return yaml
    except ImportError:
        # Under CI=true nothing is skipped: .ci/run installs PyYAML.
        if os.environ.get("CI") in ("true", "1"):
            problem("PyYAML is not installed (CI=true: checks may not be skipped)")
        return None


def check_rules(chart):
    yaml = load_yaml_module()
    if yaml is None:
        print("SKIPPED rules metric names: PyYAML not installed")
        return
    with open(os.path.join(chart, "alerts", "fjord-rules.yaml")) as f:
        doc = yaml.safe_load(f)
    n = 0
    for group in doc.get("groups", []):
        for rule in group.get("rules", []):
            n += 1
            name = rule.get("alert") or rule.get("record")
            unknown = metric_names(str(rule.get("expr", ""))) - KNOWN_METRICS
            if unknown:
                problem("rule %s: unknown metric(s) %s" % (name, sorted(unknown)))
            if "alert" in rule:
                if not rule.get("labels", {}).get("severity"):
                    problem("alert %s: no severity label" % name)
                for a in ("summary", "description"):
                    if not rule.get("annotations", {}).get(a):
                        problem("alert %s: no %s annotation" % (name, a))
    print("rules: checked metric names, severity and annotations of %d rules" % n)


def check_render(render_file, out_rules, expects):
    yaml = load_yaml_module()
    if yaml is None:
        print("SKIPPED render checks: PyYAML not installed")
        return False
    with open(render_file) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    rules = [d for d in docs if d.get("kind") == "PrometheusRule"]
    if len(rules) != 1:
        problem("%s: expected one PrometheusRule, found %d" % (render_file, len(rules)))
        return False
    spec = rules[0]["spec"]
    with open(out_rules, "w") as f:
        yaml.safe_dump(spec, f, sort_keys=False)
    exprs = [r.get("expr", "") for g in spec.get("groups", []) for r in g.get("rules", [])]
    for e in expects:
        if not any(e in x for x in exprs):
            problem("%s: no alert expression contains %r" % (render_file, e))
    print("render %s: PrometheusRule with %d rules -> %s" % (render_file, len(exprs), out_rules))
    return True


def main(argv):
    if len(argv) < 2:
        print(__doc__)
        return 2
    cmd = argv[1]
    if cmd == "dashboards":
        check_dashboards(argv[2], argv[3] if len(argv) > 3 and argv[3] else None)
    elif cmd == "rules":
        check_rules(argv[2])
    elif cmd == "render":
        if not check_render(argv[2], argv[3], argv[4:]) and not problems:
            return 3  # skipped
    else:
        print(__doc__)
        return 2
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
