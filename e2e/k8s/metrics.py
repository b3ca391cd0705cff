#!/usr/bin/env python3
"""Prometheus (Debian's) on the node's host, scraping the Fjord pods through the
chart's own scrape configuration: the PodMonitor and ServiceMonitor that
`helm template` renders, turned into the scrape config the Prometheus Operator
would generate from them (its relabelings, verbatim). Debian builds Prometheus
without Kubernetes discovery, so a discoverer here lists pods and endpoints
with kubectl and writes them, with the `__meta_kubernetes_*` labels
kubernetes_sd would give them, into file_sd files every second. Then every
panel query of the chart's dashboards must return data from those pods.

  metrics.py start DIR          render, write DIR/prometheus.yml, start; prints the address
  metrics.py wait ADDR          until every broker pod and the operator are scraped
  metrics.py panels ADDR        every dashboard panel query returns data
  metrics.py isr-moved ADDR T   the ISR panels saw topic T's smallest ISR drop and recover
  metrics.py never ADDR EXPR S  EXPR was 0 (or absent) at every sample of the last S seconds
  metrics.py stop DIR
  metrics.py discover DIR       (started by `start`) keeps DIR/targets-*.json current
"""
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import yaml

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
KN_DIR = os.environ.get("KN_DIR", "/tmp/kube-node")
# The chart's 30 s interval would make the suite wait minutes for rate()s.
SCRAPE_INTERVAL = "2s"


def sanitize(label):
    return re.sub(r"[^a-zA-Z0-9_]", "_", label)


def sd_config(job_name, role, namespace_selector, directory):
    """A file_sd config whose file the discoverer fills as kubernetes_sd's `role` would."""
    path = os.path.join(directory, "targets-" + sanitize(job_name) + ".json")
    names = [] if namespace_selector.get("any") else namespace_selector.get("matchNames", [])
    with open(os.path.join(directory, "discovery.jsonl"), "a") as f:
        f.write(json.dumps({"file": path, "role": role, "namespaces": names}) + "\n")
    with open(path, "w") as f:
        f.write("[]")
    return {"files": [path], "refresh_interval": "1s"}


def keep_labels(prefix, match_labels):
    """The Prometheus Operator's selector: keep targets whose labels match."""
    return [
        {
            "action": "keep",
            "source_labels": [f"__meta_kubernetes_{prefix}_label_{sanitize(k)}",
                              f"__meta_kubernetes_{prefix}_labelpresent_{sanitize(k)}"],
            "regex": f"({re.escape(v)});true",
        }
        for k, v in sorted(match_labels.items())
    ]


def user_relabelings(endpoint):
    out = []
    for r in endpoint.get("relabelings", []):
        rule = {"action": r.get("action", "replace").lower()}
        if "sourceLabels" in r:
            rule["source_labels"] = r["sourceLabels"]
        for src, dst in [("targetLabel", "target_label"), ("replacement", "replacement"),
                         ("regex", "regex"), ("separator", "separator")]:
            if src in r:
                rule[dst] = r[src]
        out.append(rule)
    return out


def pod_monitor_jobs(m, directory):
    ns, name = m["metadata"]["namespace"], m["metadata"]["name"]
    for i, ep in enumerate(m["spec"]["podMetricsEndpoints"]):
        relabel = keep_labels("pod", m["spec"]["selector"]["matchLabels"])
        relabel += [
            {"action": "keep", "source_labels": ["__meta_kubernetes_pod_container_port_name"], "regex": ep["port"]},
            {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
            {"source_labels": ["__meta_kubernetes_pod_container_name"], "target_label": "container"},
            {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
            {"target_label": "job", "replacement": f"{ns}/{name}"},
            {"target_label": "endpoint", "replacement": ep["port"]},
        ]
        job = f"podMonitor/{ns}/{name}/{i}"
        yield {
            "job_name": job,
            "metrics_path": ep.get("path", "/metrics"),
            "file_sd_configs": [sd_config(job, "pod", m["spec"].get("namespaceSelector", {}), directory)],
            "relabel_configs": relabel + user_relabelings(ep),
        }


def service_monitor_jobs(m, directory):
    ns, name = m["metadata"]["namespace"], m["metadata"]["name"]
    for i, ep in enumerate(m["spec"]["endpoints"]):
        relabel = keep_labels("service", m["spec"]["selector"]["matchLabels"])
        relabel += [
            {"action": "keep", "source_labels": ["__meta_kubernetes_endpoint_port_name"], "regex": ep["port"]},
            {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
            {"source_labels": ["__meta_kubernetes_service_name"], "target_label": "service"},
            {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
            {"source_labels": ["__meta_kubernetes_service_name"], "target_label": "job"},
            {"target_label": "endpoint", "replacement": ep["port"]},
        ]
        job = f"serviceMonitor/{ns}/{name}/{i}"
        yield {
            "job_name": job,
            "metrics_path": ep.get("path", "/metrics"),
            "file_sd_configs": [sd_config(job, "endpoints", m["spec"].get("namespaceSelector", {}), directory)],
            "relabel_configs": relabel + user_relabelings(ep),
        }


def render_monitors(directory):
    helm = subprocess.run(["bash", "helm/install-helm.sh"], cwd=REPO, check=True,
                          capture_output=True, text=True).stdout.strip()
    rendered = subprocess.run(
        [helm, "template", "fjord", "helm/fjord", "--namespace", "fjord-system",
         "--set", "serviceMonitor.enabled=true"],
        cwd=REPO, check=True, capture_output=True, text=True).stdout
    jobs = []
    for doc in yaml.safe_load_all(rendered):
        if doc and doc.get("kind") == "PodMonitor":
            jobs += pod_monitor_jobs(doc, directory)
        elif doc and doc.get("kind") == "ServiceMonitor":
            jobs += service_monitor_jobs(doc, directory)
    if len(jobs) < 2:
        sys.exit(f"the chart rendered {len(jobs)} monitors, expected a PodMonitor and a ServiceMonitor")
    return jobs


def start(directory):
    os.makedirs(directory, exist_ok=True)
    config = {"global": {"scrape_interval": SCRAPE_INTERVAL, "scrape_timeout": SCRAPE_INTERVAL},
              "scrape_configs": render_monitors(directory)}
    path = os.path.join(directory, "prometheus.yml")
    with open(path, "w") as f:
        yaml.safe_dump(config, f, sort_keys=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(os.path.join(directory, "prometheus.log"), "w")
    proc = subprocess.Popen(
        ["prometheus", f"--config.file={path}", f"--storage.tsdb.path={directory}/data",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    discoverer = subprocess.Popen([sys.executable, __file__, "discover", directory],
                                  stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    with open(os.path.join(directory, "prometheus.pid"), "w") as f:
        f.write(f"{proc.pid} {discoverer.pid}")
    addr = f"127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://{addr}/-/ready", timeout=2)
            print(addr)
            return
        except OSError:
            time.sleep(0.5)
    sys.exit(f"prometheus did not become ready; see {directory}/prometheus.log")


def stop(directory):
    try:
        pids = open(os.path.join(directory, "prometheus.pid")).read().split()
    except OSError:
        return
    for pid in pids:
        try:
            os.killpg(int(pid), 15)
        except (OSError, ValueError):
            pass


def labels_of(prefix, obj):
    out = {}
    for k, v in (obj["metadata"].get("labels") or {}).items():
        out[f"__meta_kubernetes_{prefix}_label_{sanitize(k)}"] = v
        out[f"__meta_kubernetes_{prefix}_labelpresent_{sanitize(k)}"] = "true"
    return out


def pod_targets(pods):
    """kubernetes_sd role pod: one target per declared container port of a pod with an IP."""
    for pod in pods:
        ip = pod.get("status", {}).get("podIP")
        if not ip:
            continue
        ready = any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions", []))
        for c in pod["spec"]["containers"]:
            for port in c.get("ports", []):
                labels = {
                    "__meta_kubernetes_namespace": pod["metadata"]["namespace"],
                    "__meta_kubernetes_pod_name": pod["metadata"]["name"],
                    "__meta_kubernetes_pod_ip": ip,
                    "__meta_kubernetes_pod_ready": str(ready).lower(),
                    "__meta_kubernetes_pod_container_name": c["name"],
                    "__meta_kubernetes_pod_container_port_name": port.get("name", ""),
                    "__meta_kubernetes_pod_container_port_number": str(port["containerPort"]),
                    **labels_of("pod", pod),
                }
                yield {"targets": [f"{ip}:{port['containerPort']}"], "labels": labels}


def endpoint_targets(endpoints, services):
    """kubernetes_sd role endpoints: one target per address and port of a Service's Endpoints."""
    by_name = {(s["metadata"]["namespace"], s["metadata"]["name"]): s for s in services}
    for ep in endpoints:
        ns, name = ep["metadata"]["namespace"], ep["metadata"]["name"]
        service = by_name.get((ns, name))
        if not service:
            continue
        for subset in ep.get("subsets") or []:
            for ready, key in [("true", "addresses"), ("false", "notReadyAddresses")]:
                for addr in subset.get(key) or []:
                    for port in subset.get("ports") or []:
                        labels = {
                            "__meta_kubernetes_namespace": ns,
                            "__meta_kubernetes_service_name": name,
                            "__meta_kubernetes_endpoint_port_name": port.get("name", ""),
                            "__meta_kubernetes_endpoint_ready": ready,
                            "__meta_kubernetes_pod_name": (addr.get("targetRef") or {}).get("name", ""),
                            **labels_of("service", service),
                        }
                        yield {"targets": [f"{addr['ip']}:{port['port']}"], "labels": labels}


def kubectl_items(kind):
    out = subprocess.run(["kubectl", "get", kind, "-A", "-o", "json"], capture_output=True, text=True, timeout=30)
    return json.loads(out.stdout)["items"] if out.returncode == 0 else None


def discover(directory):
    """Rewrites every file_sd file each second until killed (by `stop`)."""
    jobs = [json.loads(line) for line in open(os.path.join(directory, "discovery.jsonl"))]
    while True:
        pods, endpoints, services = kubectl_items("pods"), kubectl_items("endpoints"), kubectl_items("services")
        if pods is not None and endpoints is not None and services is not None:
            for job in jobs:
                def wanted(obj):
                    return not job["namespaces"] or obj["metadata"]["namespace"] in job["namespaces"]
                if job["role"] == "pod":
                    targets = list(pod_targets(filter(wanted, pods)))
                else:
                    targets = list(endpoint_targets(filter(wanted, endpoints), services))
                tmp = job["file"] + ".tmp"
                with open(tmp, "w") as f:
                    json.dump(targets, f)
                os.replace(tmp, job["file"])
        time.sleep(1)


def query(addr, expr):
    url = f"http://{addr}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        return json.load(urllib.request.urlopen(url, timeout=10))["data"]["result"]
    except (OSError, KeyError, ValueError) as e:
        return f"error: {e}"


def wait(addr):
    """Every broker pod and the operator scraped, with enough samples for rate()s."""
    want = ('count(count_over_time(up{job="fjord-broker"}[1m]) >= 10) >= 3 '
            'and on() count(up{job="fjord-operator"} == 1) >= 1')
    deadline = time.time() + 180
    while time.time() < deadline:
        if isinstance(r := query(addr, want), list) and r:
            return
        time.sleep(2)
    targets = json.load(urllib.request.urlopen(f"http://{addr}/api/v1/targets", timeout=10))
    active = [(t["labels"].get("job"), t["scrapeUrl"], t["health"], t.get("lastError"))
              for t in targets["data"]["activeTargets"]]
    sys.exit(f"the pods were not all scraped within 180 s; targets: {active}")


def panel_exprs(panels):
    for p in panels:
        yield from panel_exprs(p.get("panels", []))
        for t in p.get("targets", []):
            if t.get("expr"):
                yield p.get("title", ""), t["expr"]


def panels(addr):
    """Every panel query of every dashboard (variables as match-all) returns data; retried
    for a while, as counters only some traffic moves appear once that traffic ran."""
    directory = os.path.join(REPO, "helm/fjord/dashboards")
    exprs = []
    for name in sorted(os.listdir(directory)):
        board = json.load(open(os.path.join(directory, name)))
        for title, expr in panel_exprs(board.get("panels", [])):
            for var, value in [("$__rate_interval", "30s"), ("$namespace", ".*"), ("$cluster", ".*"),
                               ("$group", ".*"), ("$topic", ".*")]:
                expr = expr.replace(var, value)
            exprs.append((f"{name} / {title}", expr))
    deadline = time.time() + 90
    while True:
        empty = [(t, e, r) for t, e in exprs if not (isinstance(r := query(addr, e), list) and r)]
        if not empty or time.time() > deadline:
            break
        time.sleep(3)
    if empty:
        sys.exit("panels without data from the pods:\n" + "\n".join(f"  {t}: {e} -> {r}" for t, e, r in empty))
    print(f"{len(exprs)} panel queries of {len(os.listdir(directory))} dashboards return data from the pods")


def isr_moved(addr, topic):
    """The 'Smallest ISR by topic' panel's query went below 3 for the topic and is back at 3."""
    expr = f'min by (topic) (fjord_partition_isr_size{{topic="{topic}"}})'
    low = query(addr, f"min_over_time(({expr})[10m:1s])")
    now = query(addr, expr)
    low_v = float(low[0]["value"][1]) if isinstance(low, list) and low else None
    now_v = float(now[0]["value"][1]) if isinstance(now, list) and now else None
    if low_v is None or now_v is None or not low_v < 3 <= now_v:
        sys.exit(f"smallest ISR of {topic}: lowest {low_v}, now {now_v}; expected a drop below 3 and back")
    under = query(addr, f'max_over_time((count(fjord_partition_under_replicated{{topic="{topic}"}} > 0))[10m:1s])')
    if not (isinstance(under, list) and under):
        sys.exit(f"the under-replicated panel never counted a partition of {topic}")
    print(f"ISR panels moved: smallest ISR of {topic} fell to {low_v:g} and is back at {now_v:g}")


def never(addr, expr, seconds):
    """EXPR stayed at 0 (or absent) at every 1 s sample of the last SECONDS."""
    seen = query(addr, f"max_over_time(({expr})[{int(seconds)}s:1s])")
    if not isinstance(seen, list):
        sys.exit(f"{expr}: {seen}")
    worst = max((float(r["value"][1]) for r in seen), default=0.0)
    if worst > 0:
        sys.exit(f"{expr} reached {worst:g} within the last {seconds} s")
    print(f"{expr} stayed 0 over the last {seconds} s")


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    commands = {"start": start, "stop": stop, "wait": wait, "panels": panels, "isr-moved": isr_moved,
                "never": never, "discover": discover}
    commands[cmd](*args)


if __name__ == "__main__":
    main()
