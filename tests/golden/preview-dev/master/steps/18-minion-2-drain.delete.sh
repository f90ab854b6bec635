#!/bin/bash
# kube-ec2 remote step minion-2-drain on master. Safe to run again: files are replaced only
# when their content differs, daemons restart only when an input changed, every wait is bounded.
set -euo pipefail
STEP=minion-2-drain
UNITS=(kube-apiserver.service)
STATE=/var/lib/kube-ec2
export PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin
export KUBECONFIG=/etc/kubernetes/admin.kubeconfig

log() { printf '%s %s: %s\n' "$(date -u +%H:%M:%S)" "$STEP" "$*" >&2; }

# On any failure: say so and print the journal of every unit this step manages.
on_exit() {
  local rc=$? unit
  ((rc == 0)) && return 0
  log "FAILED (exit $rc)"
  if declare -F step_debug >/dev/null; then step_debug >&2 || true; fi
  for unit in "${UNITS[@]}"; do
    echo "----- journalctl -u $unit -n 80 -----" >&2
    journalctl -u "$unit" -n 80 --no-pager >&2 || true
  done
}
trap on_exit EXIT

# wait_until SECONDS WHAT COMMAND...: retry COMMAND every 2 s until it succeeds or time runs out.
wait_until() {
  local limit=$1 what=$2
  shift 2
  local deadline=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      log "$what: not ready after ${limit}s"
      return 1
    fi
    sleep 2
  done
  log "$what: ok"
}

# put_file PATH MODE < CONTENT: replace PATH only when its content, mode or owner (root) differs.
put_file() {
  local path=$1 mode=$2 tmp
  tmp=$(mktemp)
  cat >"$tmp"
  if [[ -f $path ]] && cmp -s "$tmp" "$path" && [[ $(stat -c %a:%u:%g "$path") == "${mode#0}:0:0" ]]; then
    rm -f "$tmp"
    return 0
  fi
  install -D -m "$mode" -o root -g root "$tmp" "$path"
  rm -f "$tmp"
  log "wrote $path"
}

# ensure_started UNIT INPUT...: enable UNIT and start it; restart it when any INPUT file changed
# since it was last started by this step.
ensure_started() {
  local unit=$1 stamp want
  shift
  stamp="$STATE/$unit.inputs"
  want=$(cat -- "$@" | sha256sum | cut -d' ' -f1)
  systemctl daemon-reload
  systemctl enable --quiet "$unit"
  if [[ -f $stamp && $(cat "$stamp") == "$want" ]] && systemctl is-active --quiet "$unit"; then
    log "$unit: unchanged and running"
    return 0
  fi
  log "$unit: (re)starting"
  systemctl restart "$unit"
  install -d -m 0755 "$STATE"
  echo "$want" >"$stamp"
}

# Runs on the master when minion-2 is removed (minionCount lowered, or pulumi destroy), before
# its instance is deleted. It must never hold a destroy up: every kubectl call has a time limit, a
# node or API already gone is success, and a node that cannot be drained in time is deleted anyway.

# node_state: "present", "absent" (the API says NotFound) or "unreachable" (no answer in time).
node_state() {
  local out
  if out=$(kubectl get node minion-2 -o name --request-timeout=20s 2>&1); then
    echo present
  elif [[ $out == *NotFound* ]]; then
    echo absent
  else
    echo unreachable
  fi
}

if ! wait_until 60 "kube-apiserver" kubectl get --raw /readyz --request-timeout=5s; then
  log "warning: the API does not answer; leaving node minion-2 to go with its instance"
  exit 0
fi
case $(node_state) in
  absent)
    log "node minion-2 is not registered; nothing to drain"
    exit 0
    ;;
  unreachable)
    log "warning: the API stopped answering; leaving node minion-2 to go with its instance"
    exit 0
    ;;
esac
kubectl drain minion-2 --ignore-daemonsets --delete-emptydir-data --force --timeout=180s --request-timeout=20s ||
  log "warning: drain of minion-2 did not finish; deleting the node anyway"
if ! kubectl delete node minion-2 --ignore-not-found --timeout=60s --request-timeout=20s; then
  state=$(node_state)
  if [[ $state == present ]]; then
    log "the API refused to delete node minion-2"
    exit 1
  fi
  log "warning: node minion-2 is $state after a failed delete; nothing left to do"
  exit 0
fi
log "node minion-2 drained and deleted"
