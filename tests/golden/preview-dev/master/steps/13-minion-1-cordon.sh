#!/bin/bash
# kube-ec2 remote step minion-1-cordon on master. Safe to run again: files are replaced only
# when their content differs, daemons restart only when an input changed, every wait is bounded.
set -euo pipefail
STEP=minion-1-cordon
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
# Minion upgrades: at most 1 minion(s) out at once. The slots are Leases in the API
# (kube-system/kube-ec2-upgrade-<i>): creating one is atomic, so of the minions' cordon steps, which
# pulumi runs in parallel, only as many as there are slots hold one; the others wait. A slot is given
# back by the minion's uncordon step. The wait is bounded by progress, not by the number of minions:
# it gives up once every slot has been held for more than 1200s (an upgrade that is stuck;
# its node stays cordoned and keeps the slot until a later pulumi up finishes it).
NODE=minion-1
TARGET=v1.35.1
SLOTS=(kube-ec2-upgrade-0)
K=(kubectl --request-timeout=20s)

# The kubelet version node NODE reports, or nothing when it is not registered.
kubelet_version() {
  "${K[@]}" get node "$NODE" --ignore-not-found -o jsonpath='{.status.nodeInfo.kubeletVersion}'
}

# The slot NODE holds, or nothing.
held_slot() {
  local slot
  for slot in "${SLOTS[@]}"; do
    if [[ $("${K[@]}" -n kube-system get lease "$slot" --ignore-not-found -o jsonpath='{.spec.holderIdentity}') == "$NODE" ]]; then
      echo "$slot"
      return 0
    fi
  done
}

# Take a free slot for NODE (or find the one it holds); fails while every slot is taken.
take_slot() {
  local slot
  [[ -n $(held_slot) ]] && return 0
  for slot in "${SLOTS[@]}"; do
    printf '%s\n' "apiVersion: coordination.k8s.io/v1" "kind: Lease" \
      "metadata: {name: $slot, namespace: kube-system, labels: {app.kubernetes.io/managed-by: kube-ec2}}" \
      "spec: {holderIdentity: $NODE, leaseDurationSeconds: 1200}" |
      "${K[@]}" create -f - >/dev/null 2>&1 && return 0
  done
  return 1
}

# Seconds since the most recent slot was taken (0 when a slot is free again).
youngest_hold() {
  local slot created now age youngest=""
  now=$(date +%s)
  for slot in "${SLOTS[@]}"; do
    created=$("${K[@]}" -n kube-system get lease "$slot" --ignore-not-found -o jsonpath='{.metadata.creationTimestamp}')
    if [[ -z $created ]]; then
      echo 0
      return 0
    fi
    age=$((now - $(date -d "$created" +%s)))
    if [[ -z $youngest ]] || ((age < youngest)); then youngest=$age; fi
  done
  echo "$youngest"
}

# Take a slot, waiting while others hold them all: at most 1200s per node in the cluster
# (counted now, so this script does not change with minionCount), and not at all once every holder
# has held its slot past 1200s.
wait_for_slot() {
  local nodes limit deadline age
  take_slot && { log "node $NODE holds upgrade slot $(held_slot)"; return 0; }
  nodes=$("${K[@]}" get nodes -o name | wc -l)
  limit=$((1200 * (nodes + 1 - 1) / 1))
  deadline=$((SECONDS + limit))
  log "every upgrade slot is taken: waiting for one (at most ${limit}s)"
  until take_slot; do
    age=$(youngest_hold)
    if ((age > 1200)); then
      log "every upgrade slot has been held for more than 1200s: another minion's upgrade looks stuck (leases below); finish it, then run pulumi up again"
      return 1
    fi
    if ((SECONDS >= deadline)); then
      log "no upgrade slot after ${limit}s"
      return 1
    fi
    sleep 5
  done
  log "node $NODE holds upgrade slot $(held_slot)"
}

# Runs on the master before minion-1's kubelet step swaps in Kubernetes 1.35.1, after the
# control plane runs it. A new node (not registered) and a node already at that version pass;
# an older one takes an upgrade slot, is cordoned and drained. A drain that does not finish fails
# this step; the node stays cordoned and keeps its slot, and the next pulumi up goes on from here.
step_debug() {
  "${K[@]}" -n kube-system get leases -l app.kubernetes.io/managed-by=kube-ec2 -o wide || true
  "${K[@]}" get pods -A --field-selector "spec.nodeName=$NODE" -o wide || true
}

running=$(kubelet_version)
if [[ -z $running ]]; then
  log "node $NODE is not registered yet: nothing to drain"
  exit 0
fi
if [[ $running == "$TARGET" ]]; then
  log "node $NODE runs kubelet $running already"
  exit 0
fi
wait_for_slot
"${K[@]}" annotate node "$NODE" --overwrite "kube-ec2/upgrading-to=$TARGET" >/dev/null
"${K[@]}" cordon "$NODE"
kubectl drain "$NODE" --ignore-daemonsets --delete-emptydir-data --timeout=300s
log "node $NODE cordoned and drained: kubelet $running -> $TARGET"
