#!/bin/bash
# metrics_crosscheck: a running authd's /metrics passes `promtool check metrics`, and every
# authd metric name that an alert rule (monitoring/prometheus/rules/) or a Grafana panel
# (monitoring/grafana/dashboards/) uses is exported. Names of other exporters (node_*,
# container_*, probe_*, kube_*, redis_*, mongodb_*, up, ...) are allow-listed in
# tests/deploy/metric_names.py. Fails listing every missing name. Also runs the container
# image's health check (docker/healthcheck) against the admin listener.
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
itest_init
need_tool promtool
need_python
"$PY" -c 'import yaml' 2>/dev/null || skip "python3 cannot import yaml (python3-yaml)"

rules=("$AUTHD_SRCDIR"/monitoring/prometheus/rules/*.yml)
dashboards=("$AUTHD_SRCDIR"/monitoring/grafana/dashboards/*.json)

start_server 30

# Some traffic, so that labelled series exist besides the # TYPE lines.
for p in /healthz /.well-known/jwks.json /nope; do
    status_code "$(https_url "$p")" >/dev/null
done
"${CURL[@]}" "$(admin_url /metrics)" >"$T/metrics.out" || fail "GET /metrics failed"
[[ -s "$T/metrics.out" ]] || fail "empty /metrics"

# promtool reads the exposition on stdin; it prints lint problems and exits non-zero on them.
if ! lint=$(promtool check metrics <"$T/metrics.out" 2>&1); then
    fail "promtool check metrics rejected /metrics: $lint"
fi
[[ -z "$lint" ]] || fail "promtool check metrics reported: $lint"
note "promtool check metrics: clean ($(grep -c '^# TYPE' "$T/metrics.out") metric families)"

if ! out=$("$PY" "$AUTHD_SRCDIR/tests/deploy/metric_names.py" check "$T/metrics.out" \
    "${rules[@]}" "${dashboards[@]}" 2>&1); then
    printf '%s\n' "$out" >&2
    fail "rules or dashboards use authd metric names that authd does not export (listed above)"
fi
printf '%s\n' "$out" | head -n 1 | sed 's/^/    /'

# The container image's HEALTHCHECK command, against this server's admin port.
AUTHD_ADMIN_PORT=$ADMIN_PORT bash "$AUTHD_SRCDIR/docker/healthcheck" ||
    fail "docker/healthcheck failed against a healthy authd"
if AUTHD_ADMIN_PORT=$ALT_PORT bash "$AUTHD_SRCDIR/docker/healthcheck" 2>/dev/null; then
    fail "docker/healthcheck succeeded on a port where nothing listens"
fi

pass
