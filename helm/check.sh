#!/usr/bin/env bash
# Checks the fjord Helm chart, its dashboards and its alert rules.
#
#   helm/check.sh [RENDER_DIR]
#
# 1. installs helm with helm/install-helm.sh (into ${HELM_INSTALL_DIR:-<repo>/.tools/bin});
# 2. helm lint, and helm template with default values and with ServiceMonitor, alerts
#    and watchNamespaces={a,b}, writing the renders to RENDER_DIR (default: a temp dir);
# 3. promtool check rules + test rules on alerts/, and on the PrometheusRule the chart
#    renders, when promtool is installed (else prints "SKIPPED promtool: not installed");
# 4. python3: every dashboard JSON parses, every panel target has a non-empty expr using
#    known Fjord metrics (valid PromQL when promtool is there), the committed dashboards
#    match helm/gen-dashboards.py;
# 5. e2e/k8s/image.py: the Dockerfile's runtime stage and the registry-free image build
#    (`make image`) describe the same image, and a selftest build from stand-in binaries
#    gives a well-formed, reproducible docker archive (needs kcat on the host).
# Exits non-zero if any check fails; runs all of them first.
set -uo pipefail

HELM_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_DIR="$(cd "$HELM_DIR/.." && pwd)"
CHART="$HELM_DIR/fjord"
export HELM_INSTALL_DIR="${HELM_INSTALL_DIR:-$REPO_DIR/.tools/bin}"

if [[ $# -ge 1 && -n "$1" ]]; then
  OUT="$1"
  mkdir -p "$OUT"
else
  OUT="$(mktemp -d "${TMPDIR:-/tmp}/fjord-helm-check.XXXXXX")"
fi
OUT="$(cd "$OUT" && pwd)"

# Keep helm's caches and config out of $HOME and away from any real kube context.
export HELM_CACHE_HOME="$OUT/.helm/cache" HELM_CONFIG_HOME="$OUT/.helm/config" \
  HELM_DATA_HOME="$OUT/.helm/data" KUBECONFIG=/dev/null

passed=0
failed=0
skipped=0
failures=()

step() { echo; echo "=== $*"; }
ok() { echo "ok: $*"; passed=$((passed + 1)); }
ko() { echo "FAILED: $*"; failed=$((failed + 1)); failures+=("$*"); }
# Under CI=true a skip is a failure: .ci/run installs every tool these checks need.
skip() {
  if [[ "${CI:-}" == "true" || "${CI:-}" == "1" ]]; then ko "$* (skipped under CI=true)"; return; fi
  echo "SKIPPED $*"; skipped=$((skipped + 1))
}

# run NAME CMD...: runs CMD, records the result under NAME.
run() {
  local name="$1"
  shift
  if "$@"; then ok "$name"; else ko "$name"; fi
}

# --------------------------------------------------------------------------- helm
step "install helm"
HELM=""
if HELM="$(bash "$HELM_DIR/install-helm.sh")" && [[ -x "$HELM" ]]; then
  ok "install helm ($HELM)"
else
  ko "install helm"
  HELM=""
fi

ALT_VALUES=(--set serviceMonitor.enabled=true --set alerts.enabled=true --set 'watchNamespaces={a,b}')

if [[ -n "$HELM" ]]; then
  step "helm lint"
  run "helm lint (defaults)" "$HELM" lint "$CHART"
  run "helm lint (monitoring, watchNamespaces)" "$HELM" lint "$CHART" "${ALT_VALUES[@]}"

  step "helm template"
  render() { # render NAME ARGS...
    local name="$1"
    shift
    if "$HELM" template test "$CHART" --namespace fjord "$@" >"$OUT/$name.yaml" 2>"$OUT/$name.err"; then
      if [[ -s "$OUT/$name.err" ]]; then
        cat "$OUT/$name.err"
        ko "helm template $name: wrote to stderr"
      else
        ok "helm template $name -> $OUT/$name.yaml ($(grep -c '^kind:' "$OUT/$name.yaml") objects)"
      fi
    else
      cat "$OUT/$name.err"
      ko "helm template $name"
    fi
  }
  render default
  render monitoring "${ALT_VALUES[@]}"
  # Alert parameters from values must reach the rendered expressions.
  render alert-params --set alerts.enabled=true \
    --set alerts.rules.FjordConsumerLagGrowing.threshold=5000 \
    --set alerts.rules.FjordConsumerLagGrowing.window=30m \
    --set alerts.rules.FjordOperatorReconcileErrors.window=15m \
    --set alerts.rules.FjordUnderReplicatedPartitions.enabled=false

  # A template that must fail: several replicas without leader election.
  if "$HELM" template test "$CHART" --namespace fjord --set leaderElection.enabled=false >/dev/null 2>&1; then
    ko "helm template refuses replicas=2 without leader election"
  else
    ok "helm template refuses replicas=2 without leader election"
  fi

  step "rendered objects"
  expect() { # expect FILE DESCRIPTION PATTERN: PATTERN (grep -E) must occur in FILE
    if grep -Eq -- "$3" "$OUT/$1.yaml"; then ok "$1: $2"; else ko "$1: $2 (no match for $3)"; fi
  }
  expect_not() {
    if grep -Eq -- "$3" "$OUT/$1.yaml"; then ko "$1: $2 (unexpected $3)"; else ok "$1: $2"; fi
  }
  if [[ -s "$OUT/default.yaml" ]]; then
    expect default "operator Deployment" '^kind: Deployment$'
    expect default "ClusterRole when watching all namespaces" '^kind: ClusterRole$'
    expect default "nodes ClusterRole for rack maps" '^  name: [a-z-]*-operator-nodes$'
    expect default "lease Role for leader election" 'resources: \["leases"\]'
    expect default "one ConfigMap per dashboard" 'fjord-cluster-overview\.json'
    expect default "runs fjord-operator" '/usr/local/bin/fjord-operator'
    expect_not default "no monitoring.coreos.com objects by default" 'monitoring\.coreos\.com'
  fi
  if [[ -s "$OUT/monitoring.yaml" ]]; then
    expect monitoring "ServiceMonitor" '^kind: ServiceMonitor$'
    expect monitoring "PodMonitor" '^kind: PodMonitor$'
    expect monitoring "PrometheusRule" '^kind: PrometheusRule$'
    expect monitoring "Role in namespace a" '^  namespace: a$'
    expect monitoring "Role in namespace b" '^  namespace: b$'
    expect monitoring "FJORD_WATCH_NAMESPACES=a,b" 'value: "a,b"'
    expect_not monitoring "no ClusterRole when namespaces are listed" '^kind: ClusterRole'
  fi
fi

# ----------------------------------------------------------------------- promtool
step "promtool"
PROMTOOL="$(command -v promtool || true)"
if [[ -z "$PROMTOOL" ]]; then
  skip "promtool: not installed"
else
  run "promtool check rules alerts/fjord-rules.yaml" "$PROMTOOL" check rules "$CHART/alerts/fjord-rules.yaml"
  # promtool resolves rule_files relative to the test file.
  run "promtool test rules alerts/fjord-rules.test.yaml" "$PROMTOOL" test rules "$CHART/alerts/fjord-rules.test.yaml"
  for name in monitoring alert-params; do
    [[ -s "$OUT/$name.yaml" ]] || continue
    case "$name" in
      monitoring) expects=("> 1000" "[10m]" "[5m]") ;;
      alert-params) expects=("> 5000" "deriv(fjord_consumer_group_lag_sum[30m])" "rate(fjord_operator_reconcile_errors_total[15m])") ;;
    esac
    python3 "$HELM_DIR/check.py" render "$OUT/$name.yaml" "$OUT/$name.rules.yaml" "${expects[@]}"
    rc=$?
    if [[ $rc -eq 3 ]]; then
      skip "PrometheusRule of $name: PyYAML not installed"
    elif [[ $rc -ne 0 ]]; then
      ko "PrometheusRule of $name"
    else
      run "promtool check rules on the PrometheusRule of $name" "$PROMTOOL" check rules "$OUT/$name.rules.yaml"
    fi
  done
  if [[ -s "$OUT/alert-params.rules.yaml" ]]; then
    if grep -q FjordUnderReplicatedPartitions "$OUT/alert-params.rules.yaml"; then
      ko "alerts.rules.<name>.enabled=false drops the alert"
    else
      ok "alerts.rules.<name>.enabled=false drops the alert"
    fi
  fi
fi

# ---------------------------------------------------------------------- dashboards
step "dashboards"
run "dashboards parse, every panel target has a known, non-empty expr" \
  python3 "$HELM_DIR/check.py" dashboards "$CHART" "$PROMTOOL"
run "alert rules use known metrics, have severity, summary, description" \
  python3 "$HELM_DIR/check.py" rules "$CHART"
run "dashboards match helm/gen-dashboards.py" python3 "$HELM_DIR/gen-dashboards.py" --check

# --------------------------------------------------------------------------- image
step "image (e2e/k8s/image.py)"
run "Dockerfile and e2e/k8s/image.py describe the same image" \
  python3 "$REPO_DIR/e2e/k8s/image.py" check
# The image takes kcat from the host, so the selftest build needs it installed.
if command -v kcat >/dev/null; then
  run "image.py selftest: docker archive from stand-in binaries" \
    python3 "$REPO_DIR/e2e/k8s/image.py" selftest
else
  skip "image.py selftest: kcat not installed (apt-get install kcat)"
fi

step "summary"
echo "renders in $OUT"
for f in "${failures[@]+"${failures[@]}"}"; do echo "  failed: $f"; done
echo "helm: $passed passed, $failed failed, $skipped skipped"
[[ $failed -eq 0 ]]
