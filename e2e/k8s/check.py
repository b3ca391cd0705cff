#!/usr/bin/env python3
"""Checks of the real-node suite over `kubectl get -o json` output and client
output on stdin; exit 0 when the check holds, 1 (with the reason) when not."""
import json
import sys


def topic_in_sync(obj, partitions, rf):
    """Ready, the partition count, and every partition led with rf replicas all in sync."""
    status = obj.get("status") or {}
    ready = [c for c in status.get("conditions", []) if c["type"] == "Ready"]
    if not ready or ready[0]["status"] != "True":
        return f"not Ready: {ready}"
    parts = status.get("partitions", [])
    if len(parts) != partitions:
        return f"{len(parts)} partitions in status, not {partitions}"
    for p in parts:
        if p["leader"] < 0 or len(p.get("replicas", [])) != rf or sorted(p.get("isr", [])) != sorted(p["replicas"]):
            return f"partition {p['partition']}: leader {p['leader']} replicas {p.get('replicas')} isr {p.get('isr')}"
        if len(set(p["replicas"])) != rf:
            return f"partition {p['partition']}: replicas {p['replicas']} not on {rf} brokers"
    return None


def topic_offsets_sum(obj, total):
    """Every partition's offsets known (from its leader) and the end offsets summing to total."""
    parts = (obj.get("status") or {}).get("partitions", [])
    missing = [p["partition"] for p in parts if p["logEndOffset"] < 0 or p.get("highWatermark", -1) < 0]
    if missing:
        return f"partitions {missing} have no offsets in status"
    ends = sum(p["logEndOffset"] for p in parts)
    return None if ends == total else f"end offsets sum to {ends}, not {total}"


def group_state(obj, ready, lag):
    status = obj.get("status") or {}
    conds = {c["type"]: c for c in status.get("conditions", [])}
    got = conds.get("Ready", {}).get("status")
    if got != ready:
        return f"Ready={got}, not {ready}: {list(conds.values())}"
    if lag != "" and status.get("totalLag") != int(lag):
        return f"totalLag {status.get('totalLag')}, not {lag}"
    return None


def records(lines, n):
    """`%p %o %s` lines: values 1..n each exactly once, offsets and values rising per partition."""
    seen = set()
    last = {}
    for line in lines:
        parts = line.split()
        if len(parts) != 3:
            continue
        p, o, v = int(parts[0]), int(parts[1]), int(parts[2])
        if v in seen:
            return f"value {v} read twice"
        seen.add(v)
        lo, lv = last.get(p, (-1, 0))
        if o <= lo or v <= lv:
            return f"partition {p}: offset {o} value {v} after offset {lo} value {lv}"
        last[p] = (o, v)
    missing = n - len(seen & set(range(1, n + 1)))
    return None if missing == 0 and len(seen) == n else f"{len(seen)} values read, {missing} of 1..{n} missing"


def main():
    what, args = sys.argv[1], sys.argv[2:]
    if what == "records":
        problem = records(sys.stdin, int(args[0]))
    else:
        obj = json.load(sys.stdin)
        if what == "topic-in-sync":
            problem = topic_in_sync(obj, int(args[0]), int(args[1]))
        elif what == "topic-offsets-sum":
            problem = topic_offsets_sum(obj, int(args[0]))
        elif what == "group-state":
            problem = group_state(obj, args[0], args[1] if len(args) > 1 else "")
        else:
            sys.exit(f"unknown check {what}")
    if problem:
        print(problem, file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
