#!/bin/bash
# prometheus: a real Prometheus (Debian's prometheus package) scrapes a running authd's admin
# listener and evaluates rules: the project's alert rules load and evaluate without errors,
# a recording rule counts exactly the requests this test made, an alert fires while authd is
# up, the blackbox exporter's HTTPS module probes authd successfully, and `up` turns 0 (and
# a down alert fires) once authd stops.
# shellcheck disable=SC2317 # the predicates below run through wait_until
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
itest_init
need_tool prometheus promtool prometheus-blackbox-exporter
need_python

PROM_PORT=$(pick_port)
start_server 30

# Requests only this test makes: GET /.well-known/jwks.json (route "jwks").
jwks_requests=5
for ((i = 0; i < jwks_requests; i++)); do
    expect_eq "$(status_code "$(https_url /.well-known/jwks.json)")" 200 "GET jwks.json"
done

cat >"$T/test-rules.yml" <<RULES
groups:
  - name: itest
    interval: 1s
    rules:
      - record: itest:jwks_requests:sum
        expr: sum by (job) (authd_http_requests_total{route="jwks"})
      - record: itest:ready_workers:sum
        expr: sum by (job) (authd_workers{state="ready"})
      - alert: ItestAuthdUp
        expr: up{job="authd"} == 1
      - alert: ItestAuthdDown
        expr: up{job="authd"} == 0
RULES
# The project's rules, with the recording group's own 30 s interval removed so that every group
# evaluates at this test's 1 s interval.
sed '/^    interval: /d' "$AUTHD_SRCDIR/monitoring/prometheus/rules/auth-service.yml" >"$T/auth-service.yml"
cat >"$T/prometheus.yml" <<CONF
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files:
  - $T/test-rules.yml
  - $T/auth-service.yml
scrape_configs:
  - job_name: authd
    static_configs:
      - targets: ["127.0.0.1:$ADMIN_PORT"]
CONF
promtool check config "$T/prometheus.yml" >"$T/promtool.out" 2>&1 ||
    fail "promtool check config: $(cat "$T/promtool.out")"

bg prometheus --config.file="$T/prometheus.yml" --storage.tsdb.path="$T/prom-data" \
    --web.listen-address="127.0.0.1:$PROM_PORT" --log.level=warn 2>"$T/prometheus.log"
PROM_PID=$BG_PID
prom_ready() {
    [[ "$(curl -s --noproxy '*' --max-time 2 -o /dev/null -w '%{http_code}' \
        "http://127.0.0.1:$PROM_PORT/-/ready")" == 200 ]]
}
wait_until 30 prom_ready || fail "prometheus did not become ready on port $PROM_PORT"
note "prometheus $(prometheus --version 2>&1 | head -n 1 | awk '{ print $3 }') pid $PROM_PID on :$PROM_PORT"

# query EXPR: the value of the first sample of an instant query ("none" when empty).
query() {
    curl -s --noproxy '*' --max-time 5 --get --data-urlencode "query=$1" \
        "http://127.0.0.1:$PROM_PORT/api/v1/query" |
        json "d['data']['result'][0]['value'][1] if d['status'] == 'success' and d['data']['result'] else 'none'"
}
query_is() { # EXPR VALUE
    [[ "$(query "$1")" == "$2" ]]
}
# alert_state NAME: state of the alert in /api/v1/alerts ("none" when absent).
alert_state() {
    curl -s --noproxy '*' --max-time 5 "http://127.0.0.1:$PROM_PORT/api/v1/alerts" |
        json "next((a['state'] for a in d['data']['alerts'] if a['labels']['alertname'] == '$1'), 'none')"
}
alert_is() { # NAME STATE
    [[ "$(alert_state "$1")" == "$2" ]]
}

wait_until 20 query_is 'up{job="authd"}' 1 ||
    fail "up{job=\"authd\"} is $(query 'up{job="authd"}'), not 1: $(tail -n 5 "$T/prometheus.log")"
note "scraped: up{job=\"authd\"} = 1"

wait_until 20 query_is 'itest:jwks_requests:sum' "$jwks_requests" ||
    fail "recording rule itest:jwks_requests:sum = $(query 'itest:jwks_requests:sum'), expected $jwks_requests"
note "recording rule itest:jwks_requests:sum = $jwks_requests (the requests this test made)"
wait_until 10 query_is 'itest:ready_workers:sum' "$WORKERS" ||
    fail "itest:ready_workers:sum = $(query 'itest:ready_workers:sum'), expected $WORKERS"
wait_until 10 alert_is ItestAuthdUp firing || fail "alert ItestAuthdUp is $(alert_state ItestAuthdUp)"

# The project's rules: every group loaded and evaluated without an error against real data.
rules_health() {
    curl -s --noproxy '*' --max-time 5 "http://127.0.0.1:$PROM_PORT/api/v1/rules" | "$PY" -c '
import json, sys
d = json.load(sys.stdin)
groups = d["data"]["groups"]
rules = [r for g in groups for r in g["rules"]]
bad = [(r["name"], r.get("lastError")) for r in rules if r.get("health") != "ok"]
names = {g["name"] for g in groups}
if bad or "authd.availability" not in names:
    print("rules not healthy: %s; groups %s" % (bad, sorted(names)))
    sys.exit(1)
print("%d rules in %d groups, all evaluated" % (len(rules), len(groups)))'
}
wait_until 10 rules_health >/dev/null || fail "$(rules_health)"
note "$(rules_health)"
expect_eq "$(alert_state AuthdInstanceDown)" none "AuthdInstanceDown while authd is up"
expect_eq "$(alert_state AuthdWorkerCrashLoop)" none "AuthdWorkerCrashLoop while authd is up"

# The blackbox exporter's https_healthz module (monitoring/blackbox/config.yml) against authd's
# public listener: HTTPS GET /healthz, body check, certificate verified (the test's certificate
# stands in for the CA file), expiry exported.
BB_PORT=$(pick_port)
sed "s#/etc/blackbox/ca.pem#$CERT#" "$AUTHD_SRCDIR/monitoring/blackbox/config.yml" >"$T/blackbox.yml"
bg prometheus-blackbox-exporter --config.file="$T/blackbox.yml" \
    --web.listen-address="127.0.0.1:$BB_PORT" --log.level=warn 2>"$T/blackbox.log"
bb_ready() {
    [[ "$(curl -s --noproxy '*' --max-time 2 -o /dev/null -w '%{http_code}' \
        "http://127.0.0.1:$BB_PORT/-/healthy")" == 200 ]]
}
wait_until 20 bb_ready || fail "blackbox exporter did not start: $(tail -n 5 "$T/blackbox.log")"
probe=$(curl -s --noproxy '*' --max-time 10 --get --data-urlencode "target=$(https_url /healthz)" \
    --data-urlencode module=https_healthz "http://127.0.0.1:$BB_PORT/probe")
expect_contains "$probe" $'\nprobe_success 1' "blackbox https_healthz probe of authd"
expiry=$(awk '$1 == "probe_ssl_earliest_cert_expiry" { printf "%d", $2 }' <<<"$probe")
(( ${expiry:-0} > $(date +%s) )) || fail "probe_ssl_earliest_cert_expiry missing or past: '$expiry'"
note "blackbox https_healthz: probe_success 1, certificate expires $(date -u -d "@$expiry" +%FT%TZ)"

# authd stops: the next scrapes fail, up turns 0 and the down alert fires.
server_kill
wait_until 20 query_is 'up{job="authd"}' 0 || fail "up{job=\"authd\"} did not turn 0 after authd stopped"
wait_until 10 alert_is ItestAuthdDown firing || fail "alert ItestAuthdDown is $(alert_state ItestAuthdDown)"
note "after stop: up{job=\"authd\"} = 0, ItestAuthdDown firing"

pass
