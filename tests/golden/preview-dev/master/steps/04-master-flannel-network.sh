#!/bin/bash
# kube-ec2 remote step master-flannel-network on master. Safe to run again: files are replaced only
# when their content differs, daemons restart only when an input changed, every wait is bounded.
set -euo pipefail
STEP=master-flannel-network
UNITS=(etcd.service)
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

# flannel's network config lives in etcd at /coreos.com/network/config. etcd RBAC (users are
# certificate CNs): `flannel` may read and write only /coreos.com/network/, `kube-apiserver`
# holds the root role; `root` exists because etcd requires it before auth can be enabled.
# Every command below is safe to repeat; after `auth enable` the apiserver identity does the work.
export ETCDCTL_API=3
ETCD=(etcdctl --endpoints=https://127.0.0.1:2379 --cacert=/etc/kubernetes/pki/etcd-ca.crt --command-timeout=10s)
ADMIN=("${ETCD[@]}" --cert=/etc/kubernetes/pki/apiserver-etcd-client.crt --key=/etc/kubernetes/pki/apiserver-etcd-client.key)
FLANNEL=("${ETCD[@]}" --cert=/etc/kubernetes/pki/flannel-etcd.crt --key=/etc/kubernetes/pki/flannel-etcd.key)

put_file /etc/kube-ec2/flannel-net-conf.json 0644 <<'KUBE_EC2_EOF'
{
  "Network": "10.200.0.0/16",
  "SubnetLen": 24,
  "Backend": {
    "Type": "vxlan",
    "VNI": 1,
    "Port": 8472
  }
}
KUBE_EC2_EOF

ensure_user() { # USER [ROLE]
  "${ADMIN[@]}" user get "$1" >/dev/null 2>&1 || "${ADMIN[@]}" user add "$1" --no-password >/dev/null
  if [[ -n ${2:-} ]]; then "${ADMIN[@]}" user grant-role "$1" "$2" >/dev/null; fi
}
"${ADMIN[@]}" role get flannel >/dev/null 2>&1 || "${ADMIN[@]}" role add flannel >/dev/null
"${ADMIN[@]}" role grant-permission flannel --prefix=true readwrite /coreos.com/network/ >/dev/null
"${ADMIN[@]}" role get root >/dev/null 2>&1 || "${ADMIN[@]}" role add root >/dev/null
ensure_user root root
ensure_user kube-apiserver root
ensure_user flannel flannel
# A repeat is a no-op on etcd 3.4 and 3.5; errors show (`auth status` is 3.5-only, so no fallback).
"${ADMIN[@]}" auth enable >/dev/null
log "etcd auth enabled; flannel limited to /coreos.com/network/"

"${ADMIN[@]}" put /coreos.com/network/config "$(cat /etc/kube-ec2/flannel-net-conf.json)" >/dev/null
log "wrote /coreos.com/network/config"

# Prove the fence: flannel's identity reads its prefix and is refused everywhere else.
"${FLANNEL[@]}" get /coreos.com/network/config --print-value-only | grep -q vxlan
if "${FLANNEL[@]}" get /registry --prefix --keys-only >/dev/null 2>&1; then
  log "flannel's etcd identity can read /registry: RBAC is not in force"
  exit 1
fi
log "etcd RBAC checked: flannel reads /coreos.com/network/config and is refused /registry"
