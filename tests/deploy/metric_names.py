#!/usr/bin/env python3
"""metric_names.py: the metric names that alert rules and Grafana dashboards use.

    metric_names.py used RULES.yml... DASHBOARD.json...
        prints every metric name the PromQL expressions reference, one per line, as
        "NAME<TAB>SOURCE" (recording rules defined in the rule files are resolved, not listed)
    metric_names.py check METRICS.txt RULES.yml... DASHBOARD.json...
        compares those names with a /metrics exposition (# TYPE lines and samples; histogram
        and summary families count with their _bucket/_sum/_count series). Names that other
        exporters provide (EXTERNAL below) are skipped. Lists every missing name and exits 1
        when any is missing.
    metric_names.py promql RULES.yml... DASHBOARD.json...
        writes a Prometheus rule file with every dashboard expression as a recording rule
        (Grafana variables replaced) to stdout, for `promtool check rules` to parse.
"""
import json
import os
import re
import sys

import yaml

# Metrics that come from other exporters, by prefix or whole name.
EXTERNAL_PREFIXES = ("node_", "container_", "probe_", "kube_", "redis_", "mongodb_", "nginx_",
                     "prometheus_", "alertmanager_", "loki_", "promtail_")
EXTERNAL_NAMES = {"up", "ALERTS", "ALERTS_FOR_STATE", "scrape_duration_seconds",
                  "scrape_samples_scraped"}

KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
            "unless", "offset", "atan2", "inf", "nan", "Inf", "NaN"}


def grafana_to_promql(expr):
    expr = expr.replace("$__rate_interval", "5m").replace("$__interval", "1m")
    expr = expr.replace("$__range", "1h")
    return re.sub(r"\$\{?\w+\}?", ".*", expr)


def names_in(expr):
    e = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    e = re.sub(r"\{[^}]*\}", " ", e)
    e = re.sub(r"\[[^\]]*\]", " ", e)
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    out = set()
    for m in re.finditer(r"(?<![\w.:])([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?", e):
        name, call = m.group(1), m.group(2)
        if call or name in KEYWORDS:
            continue
        # numbers with exponents / durations never start with a letter; skip duration units
        if re.fullmatch(r"\d*[smhdwy]", name):
            continue
        out.add(name)
    return out


def load(paths):
    exprs = []  # (source, expr)
    recorded = set()
    for p in paths:
        if p.endswith(".json"):
            dash = json.load(open(p))
            stack = list(dash.get("panels", []))
            while stack:
                panel = stack.pop()
                stack.extend(panel.get("panels", []))
                for t in panel.get("targets", []):
                    if t.get("expr"):
                        exprs.append((f"dashboard panel '{panel.get('title')}'",
                                      grafana_to_promql(t["expr"])))
            for a in dash.get("annotations", {}).get("list", []):
                if a.get("expr"):
                    exprs.append((f"{p}: annotation '{a.get('name')}'",
                                  grafana_to_promql(a["expr"])))
            for v in dash.get("templating", {}).get("list", []):
                q = v.get("query")
                q = q.get("query") if isinstance(q, dict) else q
                m = re.match(r"label_values\((\w+)", q or "")
                if m:
                    exprs.append((f"{p}: variable {v.get('name')}", m.group(1)))
        else:
            doc = yaml.safe_load(open(p))
            for g in doc.get("groups", []):
                for r in g.get("rules", []):
                    if "record" in r:
                        recorded.add(r["record"])
                    what = r.get("alert") or r.get("record")
                    exprs.append((f"{os.path.basename(p)}: {what}", str(r["expr"])))
    return exprs, recorded


def used(paths):
    exprs, recorded = load(paths)
    found = {}
    for src, e in exprs:
        for n in names_in(e):
            if n not in recorded:
                found.setdefault(n, []).append(src)
    return found


def exported(metrics_path):
    names = set()
    for line in open(metrics_path):
        m = re.match(r"# TYPE (\S+) (\S+)", line)
        if m:
            names.add(m.group(1))
            if m.group(2) == "histogram":
                names.update(m.group(1) + s for s in ("_bucket", "_sum", "_count"))
            elif m.group(2) == "summary":
                names.update(m.group(1) + s for s in ("_sum", "_count"))
            continue
        m = re.match(r"([A-Za-z_:][A-Za-z0-9_:]*)[{ ]", line)
        if m and not line.startswith("#"):
            names.add(m.group(1))
    return names


def external(name):
    return name in EXTERNAL_NAMES or name.startswith(EXTERNAL_PREFIXES)


def main(argv):
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    if argv[0] == "used":
        for n, srcs in sorted(used(argv[1:]).items()):
            print(f"{n}\t{srcs[0]}")
        return 0
    if argv[0] == "check":
        have = exported(argv[1])
        found = used(argv[2:])
        missing, ext, ok = [], [], []
        for n in sorted(found):
            (ext if external(n) else ok if n in have else missing).append(n)
        print(f"metric names used by rules and dashboards: {len(found)} "
              f"({len(ok)} exported by authd, {len(ext)} from other exporters, "
              f"{len(missing)} missing)")
        for n in ext:
            print(f"  external (allow-listed): {n}")
        for n in missing:
            srcs = sorted({os.path.basename(x) for x in found[n]})
            print(f"  MISSING from authd /metrics: {n}   (used by {'; '.join(srcs[:4])}"
                  f"{' ...' if len(srcs) > 4 else ''})")
        return 1 if missing else 0
    if argv[0] == "promql":
        exprs, _ = load([p for p in argv[1:]])
        rules = [{"record": f"check:expr_{i}", "expr": e} for i, (src, e) in enumerate(exprs)]
        yaml.safe_dump({"groups": [{"name": "dashboard-expressions", "rules": rules}]},
                       sys.stdout, sort_keys=False, width=1000)
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
