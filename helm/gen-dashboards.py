#!/usr/bin/env python3
"""Generate the Grafana dashboards of the fjord chart (helm/fjord/dashboards/*.json).

The JSON files are committed; this script is their source. Edit it, then run

    python3 helm/gen-dashboards.py           # rewrite the JSON files
    python3 helm/gen-dashboards.py --check   # exit 1 if the files are out of date

Label conventions (from the chart's PodMonitor/ServiceMonitor): broker series carry
job="fjord-broker", namespace, pod and fjord_cluster (the Cluster name); operator series
carry job="fjord-operator", namespace and pod. Partition gauges are reported by every
broker holding a replica, so per-partition values are first reduced with max by
(namespace, fjord_cluster, topic, partition).
"""

import json
import os
import sys

OUT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fjord", "dashboards")

DS = {"type": "prometheus", "uid": "${datasource}"}

# Broker selectors, filled in by the namespace/cluster variables.
SEL = 'namespace=~"$namespace", fjord_cluster=~"$cluster"'
UP = 'up{job="fjord-broker", %s}' % SEL
PART = "namespace, fjord_cluster, topic, partition"
RI = "$__rate_interval"


# ----------------------------------------------------------------------------- model


def target(expr, legend="", ref="A", instant=False, fmt=None):
    t = {"datasource": DS, "expr": expr, "legendFormat": legend, "refId": ref}
    if instant:
        t["instant"] = True
        t["range"] = False
    if fmt:
        t["format"] = fmt
    return t


def targets(*pairs, **kw):
    """targets((expr, legend), ...) with refIds A, B, C..."""
    return [target(e, l, chr(ord("A") + i), **kw) for i, (e, l) in enumerate(pairs)]


def stat(title, expr, unit="short", legend="", thresholds=None, description="", decimals=None,
         graph=True):
    steps = thresholds or [{"color": "green", "value": None}]
    defaults = {
        "unit": unit,
        "color": {"mode": "thresholds"},
        "thresholds": {"mode": "absolute", "steps": steps},
        "mappings": [],
    }
    if decimals is not None:
        defaults["decimals"] = decimals
    return {
        "type": "stat",
        "title": title,
        "description": description,
        "datasource": DS,
        "targets": [target(expr, legend)],
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "value",
            "graphMode": "area" if graph else "none",
            "justifyMode": "auto",
            "orientation": "auto",
            "textMode": "auto",
        },
    }


def timeseries(title, tgts, unit="short", description="", stack=False, min_zero=True):
    custom = {
        "drawStyle": "line",
        "lineWidth": 1,
        "fillOpacity": 10,
        "gradientMode": "none",
        "showPoints": "never",
        "spanNulls": False,
        "axisPlacement": "auto",
        "stacking": {"mode": "normal" if stack else "none", "group": "A"},
    }
    defaults = {"unit": unit, "custom": custom, "color": {"mode": "palette-classic"}}
    if min_zero:
        defaults["min"] = 0
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": DS,
        "targets": tgts,
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {
            "legend": {
                "displayMode": "table",
                "placement": "bottom",
                "showLegend": True,
                "calcs": ["mean", "max", "lastNotNull"],
            },
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
    }


def table(title, tgts, description="", unit="short"):
    return {
        "type": "table",
        "title": title,
        "description": description,
        "datasource": DS,
        "targets": tgts,
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {"showHeader": True, "footer": {"show": False}},
        "transformations": [
            {"id": "merge", "options": {}},
            {"id": "organize", "options": {"excludeByName": {"Time": True}}},
        ],
    }


def row(title):
    return {"type": "row", "title": title, "collapsed": False, "panels": []}


def layout(items):
    """items: row dicts, or lists of (panel, width, height) laid left to right."""
    panels, y, pid = [], 0, 1
    for item in items:
        if isinstance(item, dict):
            item = dict(item, id=pid, gridPos={"h": 1, "w": 24, "x": 0, "y": y})
            panels.append(item)
            pid += 1
            y += 1
            continue
        x, row_h = 0, 0
        for panel, w, h in item:
            if x + w > 24:
                x, y = 0, y + row_h
                row_h = 0
            panels.append(dict(panel, id=pid, gridPos={"h": h, "w": w, "x": x, "y": y}))
            pid += 1
            x += w
            row_h = max(row_h, h)
        y += row_h
    return panels


def ds_var():
    return {
        "name": "datasource",
        "label": "Data source",
        "type": "datasource",
        "query": "prometheus",
        "current": {},
        "hide": 0,
        "refresh": 1,
        "regex": "",
        "options": [],
        "includeAll": False,
        "multi": False,
    }


def query_var(name, label, query, multi=False, include_all=True):
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DS,
        "query": query,
        "definition": query,
        "refresh": 2,
        "regex": "",
        "sort": 1,
        "hide": 0,
        "includeAll": include_all,
        "allValue": ".*" if include_all else None,
        "multi": multi,
        "current": {},
        "options": [],
    }


def broker_vars(anchor="fjord_partitions"):
    return [
        ds_var(),
        query_var("namespace", "Namespace", "label_values(%s, namespace)" % anchor),
        query_var(
            "cluster",
            "Cluster",
            'label_values(%s{namespace=~"$namespace"}, fjord_cluster)' % anchor,
        ),
    ]


def dashboard(uid, title, description, variables, items):
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["fjord"],
        "editable": True,
        "graphTooltip": 1,
        "id": None,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "timepicker": {},
        "timezone": "",
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "weekStart": "",
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                }
            ]
        },
        "links": [
            {
                "type": "dashboards",
                "title": "Fjord",
                "tags": ["fjord"],
                "asDropdown": True,
                "includeVars": True,
                "keepTime": True,
                "icon": "external link",
                "targetBlank": False,
                "tooltip": "",
                "url": "",
            }
        ],
        "templating": {"list": variables},
        "panels": layout(items),
    }


RED_ABOVE_0 = [{"color": "green", "value": None}, {"color": "red", "value": 1}]
ORANGE_ABOVE_0 = [{"color": "green", "value": None}, {"color": "orange", "value": 1}]
REPLICATION_NOTE = (
    "Needs partition replication metrics; empty until the brokers export them."
)


def count_partitions(metric, sel=SEL):
    return "count(max by (%s) (%s{%s}) > 0) or vector(0)" % (PART, metric, sel)


# ---------------------------------------------------------------------- dashboards


def cluster_overview():
    items = [
        row("Health"),
        [
            (stat("Brokers online", "sum(%s)" % UP,
                  description="Broker pods whose /metrics Prometheus scraped successfully."), 4, 4),
            (stat("Brokers down", "count(%s == 0) or vector(0)" % UP,
                  thresholds=RED_ABOVE_0), 4, 4),
            (stat("Offline partitions", count_partitions("fjord_partition_offline"),
                  thresholds=RED_ABOVE_0, description="Partitions without a leader. " + REPLICATION_NOTE), 4, 4),
            (stat("Under-min-ISR partitions", count_partitions("fjord_partition_under_min_isr"),
                  thresholds=RED_ABOVE_0,
                  description="Partitions with fewer in-sync replicas than min.insync.replicas. "
                  + REPLICATION_NOTE), 4, 4),
            (stat("Under-replicated partitions", count_partitions("fjord_partition_under_replicated"),
                  thresholds=ORANGE_ABOVE_0,
                  description="Partitions with fewer in-sync replicas than replicas."), 4, 4),
            (stat("Active connections", "sum(fjord_active_connections{%s})" % SEL), 4, 4),
        ],
        [
            (stat("Partitions (replicas hosted)", "sum(fjord_partitions{%s})" % SEL,
                  description="Partition replicas hosted, summed over brokers."), 6, 4),
            (stat("Log size", "sum(fjord_log_size_bytes{%s})" % SEL, unit="bytes",
                  description="Bytes on disk, all replicas."), 6, 4),
            (stat("Bytes in", "sum(rate(fjord_bytes_in_total{%s}[%s]))" % (SEL, RI), unit="Bps"), 6, 4),
            (stat("Messages in", "sum(rate(fjord_messages_in_total{%s}[%s]))" % (SEL, RI),
                  unit="short", decimals=1), 6, 4),
        ],
        row("Throughput"),
        [
            (timeseries("Bytes in / out", targets(
                ("sum(rate(fjord_bytes_in_total{%s}[%s]))" % (SEL, RI), "in"),
                ("sum(rate(fjord_bytes_out_total{%s}[%s]))" % (SEL, RI), "out"),
            ), unit="Bps"), 12, 8),
            (timeseries("Messages in", targets(
                ("sum(rate(fjord_messages_in_total{%s}[%s]))" % (SEL, RI), "messages in"),
            ), unit="short",
                description="Messages appended by produce requests per second. Messages out has "
                "no broker metric; see Bytes out and the consumer group dashboards."), 12, 8),
            (timeseries("Bytes in by broker", targets(
                ("sum by (pod) (rate(fjord_bytes_in_total{%s}[%s]))" % (SEL, RI), "{{pod}}"),
            ), unit="Bps"), 8, 8),
            (timeseries("Bytes out by broker", targets(
                ("sum by (pod) (rate(fjord_bytes_out_total{%s}[%s]))" % (SEL, RI), "{{pod}}"),
            ), unit="Bps"), 8, 8),
            (timeseries("Produce errors by error", targets(
                ("sum by (error) (rate(fjord_produce_errors_total{%s}[%s]))" % (SEL, RI), "{{error}}"),
            ), unit="reqps"), 8, 8),
        ],
        row("Requests"),
        [
            (timeseries("Request rate by API", targets(
                ("sum by (api) (rate(fjord_requests_total{%s}[%s]))" % (SEL, RI), "{{api}}"),
            ), unit="reqps"), 12, 8),
            (timeseries("p99 request latency by API", targets(
                ("histogram_quantile(0.99, sum by (api, le) "
                 "(rate(fjord_request_latency_seconds_bucket{%s}[%s])))" % (SEL, RI), "{{api}}"),
            ), unit="s"), 12, 8),
            (timeseries("p50 request latency by API", targets(
                ("histogram_quantile(0.5, sum by (api, le) "
                 "(rate(fjord_request_latency_seconds_bucket{%s}[%s])))" % (SEL, RI), "{{api}}"),
            ), unit="s"), 12, 8),
            (timeseries("Mean request latency by API", targets(
                ("sum by (api) (rate(fjord_request_latency_seconds_sum{%s}[%s])) / "
                 "sum by (api) (rate(fjord_request_latency_seconds_count{%s}[%s]))" % (SEL, RI, SEL, RI),
                 "{{api}}"),
            ), unit="s"), 12, 8),
            (timeseries("Active connections by broker", targets(
                ("sum by (pod) (fjord_active_connections{%s})" % SEL, "{{pod}}"),
            )), 24, 7),
        ],
        row("Partitions and storage"),
        [
            (timeseries("Partitions by broker", targets(
                ("sum by (pod) (fjord_partitions{%s})" % SEL, "{{pod}}"),
            )), 8, 8),
            (timeseries("Log size by broker", targets(
                ("sum by (pod) (fjord_log_size_bytes{%s})" % SEL, "{{pod}}"),
            ), unit="bytes"), 8, 8),
            (timeseries("Log segments by broker", targets(
                ("sum by (pod) (fjord_log_segments{%s})" % SEL, "{{pod}}"),
            )), 8, 8),
        ],
        row("Replication"),
        [
            (timeseries("Partitions not fully replicated", targets(
                (count_partitions("fjord_partition_offline"), "offline"),
                (count_partitions("fjord_partition_under_min_isr"), "under min ISR"),
                (count_partitions("fjord_partition_under_replicated"), "under-replicated"),
            ), description="Offline and under-min-ISR: " + REPLICATION_NOTE), 12, 8),
            (timeseries("ISR shrinks / expands", targets(
                ("sum(rate(fjord_isr_shrinks_total{%s}[%s]))" % (SEL, RI), "shrinks"),
                ("sum(rate(fjord_isr_expands_total{%s}[%s]))" % (SEL, RI), "expands"),
            ), unit="ops", description=REPLICATION_NOTE), 12, 8),
            (timeseries("Smallest ISR by topic", targets(
                ("min by (topic) (fjord_partition_isr_size{%s})" % SEL, "{{topic}}"),
            ), description="Smallest in-sync replica set among the topic's partitions."), 24, 8),
        ],
    ]
    return dashboard(
        "fjord-cluster-overview",
        "Fjord / Cluster overview",
        "Fjord brokers: health, throughput, requests, storage and replication.",
        broker_vars(),
        items,
    )


def topics():
    tsel = SEL + ', topic=~"$topic"'
    leo = "max by (%s) (fjord_log_end_offset{%s})" % (PART, tsel)
    lso = "max by (%s) (fjord_log_start_offset{%s})" % (PART, tsel)
    hw = "max by (%s) (fjord_high_watermark{%s})" % (PART, tsel)
    variables = broker_vars("fjord_log_end_offset") + [
        query_var(
            "topic",
            "Topic",
            'label_values(fjord_log_end_offset{%s}, topic)' % SEL,
            multi=True,
        )
    ]
    items = [
        row("Overview"),
        [
            (stat("Topics", "count(count by (topic) (fjord_log_end_offset{%s}))" % tsel, graph=False), 6, 4),
            (stat("Partitions", "count(%s)" % leo, graph=False), 6, 4),
            (stat("Size (all replicas)", "sum(fjord_log_size_bytes{%s})" % tsel, unit="bytes"), 6, 4),
            (stat("Retained messages", "sum(%s - %s)" % (leo, lso),
                  description="Log end offset minus log start offset, summed over partitions "
                  "(an upper bound for compacted topics)."), 6, 4),
        ],
        row("Throughput"),
        [
            (timeseries("Bytes in by topic", targets(
                ("sum by (topic) (rate(fjord_bytes_in_total{%s}[%s]))" % (tsel, RI), "{{topic}}"),
            ), unit="Bps"), 12, 8),
            (timeseries("Bytes out by topic", targets(
                ("sum by (topic) (rate(fjord_bytes_out_total{%s}[%s]))" % (tsel, RI), "{{topic}}"),
            ), unit="Bps"), 12, 8),
            (timeseries("Messages in by topic", targets(
                ("sum by (topic) (rate(fjord_messages_in_total{%s}[%s]))" % (tsel, RI), "{{topic}}"),
            ), unit="short"), 12, 8),
            (timeseries("Produce errors by topic", targets(
                ("sum by (topic, error) (rate(fjord_produce_errors_total{%s}[%s]))" % (tsel, RI),
                 "{{topic}} {{error}}"),
            ), unit="reqps"), 12, 8),
        ],
        row("Offsets and storage"),
        [
            (timeseries("Log end offset growth by topic", targets(
                ("sum by (topic) (max by (%s) (deriv(fjord_log_end_offset{%s}[5m])))" % (PART, tsel),
                 "{{topic}}"),
            ), unit="short", description="Offsets appended per second (deriv of the log end "
               "offset over 5m, once per partition)."), 12, 8),
            (timeseries("Log end offset by partition", targets(
                ("max by (topic, partition) (fjord_log_end_offset{%s})" % tsel, "{{topic}}/{{partition}}"),
            ), min_zero=False), 12, 8),
            (timeseries("Size by topic (all replicas)", targets(
                ("sum by (topic) (fjord_log_size_bytes{%s})" % tsel, "{{topic}}"),
            ), unit="bytes"), 12, 8),
            (timeseries("Retained messages by topic", targets(
                ("sum by (topic) (%s - %s)" % (leo, lso), "{{topic}}"),
            )), 12, 8),
            (timeseries("Log segments by topic", targets(
                ("sum by (topic) (fjord_log_segments{%s})" % tsel, "{{topic}}"),
            )), 12, 8),
            (timeseries("Unreplicated messages by topic", targets(
                ("sum by (topic) (%s - %s)" % (leo, hw), "{{topic}}"),
            ), description="Log end offset minus high watermark: messages not yet replicated to "
               "all in-sync replicas (not yet visible to consumers)."), 12, 8),
            (timeseries("Open transactions and messages held from read_committed by topic", targets(
                ("sum by (topic) (max by (%s) (fjord_partition_open_transactions{%s}))" % (PART, tsel),
                 "{{topic}} open transactions"),
                ("sum by (topic) (%s - max by (%s) (fjord_last_stable_offset{%s}))" % (hw, PART, tsel),
                 "{{topic}} above the LSO"),
            ), description="Transactions open in the topic's partitions, and high watermark minus "
               "last stable offset: messages read_committed consumers wait for (an open "
               "transaction's records and everything after them)."), 12, 8),
        ],
        row("Partitions"),
        [
            (table("Partitions", targets(
                (leo, ""),
                (lso, ""),
                (hw, ""),
                ("min by (%s) (fjord_partition_isr_size{%s})" % (PART, tsel), ""),
                ("max by (%s) (fjord_partition_under_replicated{%s})" % (PART, tsel), ""),
                ("sum by (%s) (fjord_log_size_bytes{%s})" % (PART, tsel), ""),
                instant=True, fmt="table",
            ), description="Per partition: A log end offset, B log start offset, C high watermark, "
               "D ISR size, E under-replicated, F size in bytes (all replicas)."), 24, 10),
        ],
    ]
    return dashboard(
        "fjord-topics",
        "Fjord / Topics",
        "Per-topic throughput, offsets and storage of Fjord clusters.",
        variables,
        items,
    )


def consumer_groups():
    gsel = SEL + ', group=~"$group"'
    psel = gsel + ', topic=~"$topic"'
    gkey = "namespace, fjord_cluster, group"
    lag_sum = "max by (%s) (fjord_consumer_group_lag_sum{%s})" % (gkey, gsel)
    variables = broker_vars("fjord_consumer_group_lag_sum") + [
        query_var("group", "Group",
                  'label_values(fjord_consumer_group_lag_sum{%s}, group)' % SEL, multi=True),
        query_var("topic", "Topic",
                  'label_values(fjord_consumer_group_lag{%s}, topic)' % gsel, multi=True),
    ]
    items = [
        row("Overview"),
        [
            (stat("Groups", "count(%s)" % lag_sum, graph=False), 6, 4),
            (stat("Total lag", "sum(%s)" % lag_sum), 6, 4),
            (stat("Members", "sum(max by (%s, state) (fjord_consumer_group_members{%s}))" % (gkey, gsel),
                  graph=False), 6, 4),
            (stat("Groups with growing lag",
                  "count(max by (%s) (deriv(fjord_consumer_group_lag_sum{%s}[5m])) > 0) or vector(0)"
                  % (gkey, gsel), thresholds=ORANGE_ABOVE_0, graph=False), 6, 4),
        ],
        row("Lag"),
        [
            (timeseries("Total lag by group", targets(
                ("max by (group) (fjord_consumer_group_lag_sum{%s})" % gsel, "{{group}}"),
            ), description="Messages between each partition's high watermark and the group's "
               "committed offset, summed over the group's partitions."), 12, 8),
            (timeseries("Lag growth by group", targets(
                ("max by (group) (deriv(fjord_consumer_group_lag_sum{%s}[5m]))" % gsel, "{{group}}"),
            ), unit="short", min_zero=False,
               description="Messages per second the lag grows (deriv over 5m); above 0 means the "
               "group consumes slower than producers write."), 12, 8),
            (timeseries("Lag change over 5m by group", targets(
                ("max by (group) (delta(fjord_consumer_group_lag_sum{%s}[5m]))" % gsel, "{{group}}"),
            ), min_zero=False), 12, 8),
            (timeseries("Lag by partition", targets(
                ("max by (group, topic, partition) (fjord_consumer_group_lag{%s})" % psel,
                 "{{group}} {{topic}}/{{partition}}"),
            )), 12, 8),
        ],
        row("Offsets and members"),
        [
            (timeseries("Commit rate by group", targets(
                ("sum by (group) (max by (%s, topic, partition) "
                 "(deriv(fjord_consumer_group_committed_offset{%s}[5m])))" % (gkey, psel), "{{group}}"),
            ), unit="short", description="Offsets committed per second (deriv of committed offsets "
               "over 5m), i.e. the group's consumption rate."), 12, 8),
            (timeseries("Members by group and state", targets(
                ("max by (group, state) (fjord_consumer_group_members{%s})" % gsel, "{{group}} {{state}}"),
            )), 12, 8),
            (table("Partitions", targets(
                ("max by (%s, topic, partition) (fjord_consumer_group_committed_offset{%s})" % (gkey, psel), ""),
                ("max by (%s, topic, partition) (fjord_consumer_group_lag{%s})" % (gkey, psel), ""),
                instant=True, fmt="table",
            ), description="Per group and partition: A committed offset, B lag."), 24, 10),
        ],
    ]
    return dashboard(
        "fjord-consumer-groups",
        "Fjord / Consumer groups",
        "Lag, lag growth, commits and members of Fjord consumer groups.",
        variables,
        items,
    )


def operator():
    osel = 'namespace=~"$namespace"'
    variables = [
        ds_var(),
        query_var("namespace", "Namespace", "label_values(fjord_operator_leader, namespace)"),
    ]
    items = [
        row("Overview"),
        [
            (stat("Leader elected", "max(fjord_operator_leader{%s})" % osel,
                  thresholds=[{"color": "red", "value": None}, {"color": "green", "value": 1}],
                  graph=False, description="1 when one operator replica holds the lease."), 4, 4),
            (stat("Replicas reporting", "count(fjord_operator_leader{%s})" % osel, graph=False), 4, 4),
            (stat("Leader changes (1h)", "sum(changes(fjord_operator_leader{%s}[1h]))" % osel,
                  graph=False), 4, 4),
            (stat("Reconciles", "sum(rate(fjord_operator_reconciliations_total{%s}[%s]))" % (osel, RI),
                  unit="ops"), 4, 4),
            (stat("Reconcile errors", "sum(rate(fjord_operator_reconcile_errors_total{%s}[%s]))" % (osel, RI),
                  unit="ops", thresholds=[{"color": "green", "value": None},
                                          {"color": "red", "value": 0.001}]), 4, 4),
            (stat("Managed objects", "sum(max by (kind) (fjord_operator_managed_objects{%s}))" % osel,
                  graph=False), 4, 4),
        ],
        row("Reconciliation"),
        [
            (timeseries("Reconcile rate by controller", targets(
                ("sum by (controller) (rate(fjord_operator_reconciliations_total{%s}[%s]))" % (osel, RI),
                 "{{controller}}"),
            ), unit="ops"), 12, 8),
            (timeseries("Reconcile error rate by controller", targets(
                ("sum by (controller) (rate(fjord_operator_reconcile_errors_total{%s}[%s]))" % (osel, RI),
                 "{{controller}}"),
            ), unit="ops"), 12, 8),
            (timeseries("p99 reconcile duration by controller", targets(
                ("histogram_quantile(0.99, sum by (controller, le) "
                 "(rate(fjord_operator_reconcile_duration_seconds_bucket{%s}[%s])))" % (osel, RI),
                 "{{controller}}"),
            ), unit="s"), 12, 8),
            (timeseries("Reconcile error ratio by controller", targets(
                ("sum by (controller) (rate(fjord_operator_reconcile_errors_total{%s}[%s])) / "
                 "sum by (controller) (rate(fjord_operator_reconciliations_total{%s}[%s]))"
                 % (osel, RI, osel, RI), "{{controller}}"),
            ), unit="percentunit"), 12, 8),
        ],
        row("Objects and leadership"),
        [
            (timeseries("Managed objects by kind", targets(
                ("max by (kind) (fjord_operator_managed_objects{%s})" % osel, "{{kind}}"),
            )), 12, 8),
            (timeseries("Leader by pod", targets(
                ("max by (pod) (fjord_operator_leader{%s})" % osel, "{{pod}}"),
            ), description="1 on the replica that holds the lease."), 12, 8),
        ],
    ]
    return dashboard(
        "fjord-operator",
        "Fjord / Operator",
        "Fjord operator: reconciliations, errors, durations, managed objects and leadership.",
        variables,
        items,
    )


DASHBOARDS = {
    "cluster-overview.json": cluster_overview,
    "topics.json": topics,
    "consumer-groups.json": consumer_groups,
    "operator.json": operator,
}


def render(fn):
    return json.dumps(fn(), indent=2, sort_keys=False) + "\n"


def main():
    check = "--check" in sys.argv[1:]
    stale = []
    for name, fn in DASHBOARDS.items():
        path = os.path.join(OUT_DIR, name)
        text = render(fn)
        if check:
            try:
                with open(path) as f:
                    current = f.read()
            except FileNotFoundError:
                current = None
            if current != text:
                stale.append(path)
        else:
            os.makedirs(OUT_DIR, exist_ok=True)
            with open(path, "w") as f:
                f.write(text)
            print("wrote", path)
    if stale:
        for path in stale:
            print("out of date (run python3 helm/gen-dashboards.py):", path, file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
