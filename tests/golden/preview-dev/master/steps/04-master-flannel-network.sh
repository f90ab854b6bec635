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
# certificate CNs): each host's flanneld is its own user (flannel-<host>) with role `flanneld`,
# which may read the config and read-write only the subnet leases (the range flanneld lists and
# watches: prefix /coreos.com/network/subnets); `kube-apiserver` holds the root role; `root` exists
# because etcd requires it before auth can be enabled. Every command below is safe to repeat;
# after `auth enable` the apiserver identity does the work.
export ETCDCTL_API=3
ETCD=(etcdctl --endpoints=https://127.0.0.1:2379 --cacert=/etc/kubernetes/pki/etcd-ca.crt --command-timeout=10s)
ADMIN=("${ETCD[@]}" --cert=/etc/kubernetes/pki/apiserver-etcd-client.crt --key=/etc/kubernetes/pki/apiserver-etcd-client.key)
FLANNEL_TLS=(--cacert /etc/kubernetes/pki/etcd-ca.crt --cert /etc/kubernetes/pki/flannel-etcd.crt --key /etc/kubernetes/pki/flannel-etcd.key)
FLANNEL=("${ETCD[@]}" --cert=/etc/kubernetes/pki/flannel-etcd.crt --key=/etc/kubernetes/pki/flannel-etcd.key)
FLANNEL_USERS=(flannel-master flannel-minion-0 flannel-minion-1 flannel-minion-2)

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
"${ADMIN[@]}" role get flanneld >/dev/null 2>&1 || "${ADMIN[@]}" role add flanneld >/dev/null
"${ADMIN[@]}" role grant-permission flanneld read /coreos.com/network/config >/dev/null
"${ADMIN[@]}" role grant-permission flanneld --prefix=true readwrite /coreos.com/network/subnets >/dev/null
"${ADMIN[@]}" role get root >/dev/null 2>&1 || "${ADMIN[@]}" role add root >/dev/null
ensure_user root root
ensure_user kube-apiserver root
ensure_user flannel-master flanneld
ensure_user flannel-minion-0 flanneld
ensure_user flannel-minion-1 flanneld
ensure_user flannel-minion-2 flanneld
# A repeat is a no-op on etcd 3.4 and later; errors show (`auth status` is 3.5+, so no fallback).
"${ADMIN[@]}" auth enable >/dev/null
log "etcd auth enabled; flanneld may read /coreos.com/network/config and write /coreos.com/network/subnets"

# Identities no host presents any more: a removed minion's, and the one all hosts used to share
# (user `flannel`, role `flannel` with read-write on the whole prefix).
for user in $("${ADMIN[@]}" user list); do
  if [[ ($user == flannel || $user == flannel-*) && " ${FLANNEL_USERS[*]} " != *" $user "* ]]; then
    "${ADMIN[@]}" user delete "$user" >/dev/null
    log "removed etcd user $user"
  fi
done
if "${ADMIN[@]}" role get flannel >/dev/null 2>&1; then "${ADMIN[@]}" role delete flannel >/dev/null; fi

"${ADMIN[@]}" put /coreos.com/network/config "$(cat /etc/kube-ec2/flannel-net-conf.json)" >/dev/null
log "wrote /coreos.com/network/config"

# Prove the fence with this host's flannel credential: it reads the config, may not rewrite it,
# and is refused what an attacker would try. The requests are gRPC (etcdctl cannot express most
# of them); a refusal is gRPC status 7 or a watch cancelled with "permission denied".
"${FLANNEL[@]}" get /coreos.com/network/config --print-value-only | grep -q vxlan
if "${FLANNEL[@]}" put /coreos.com/network/config '{}' >/dev/null 2>&1; then
  "${ADMIN[@]}" put /coreos.com/network/config "$(cat /etc/kube-ec2/flannel-net-conf.json)" >/dev/null
  log "fence broken: flannel's identity may rewrite /coreos.com/network/config (config restored)"
  exit 1
fi
PROBE_DIR=$(mktemp -d)
BROKEN=()
refused() { # NAME WHAT ADVISORY METHOD FRAME-BASE64 SECONDS
  local rc=0 status answer=0
  base64 -d <<<"$5" | curl -sS --http2 --max-time "$6" "${FLANNEL_TLS[@]}" -H 'content-type: application/grpc' \
    -H 'te: trailers' --data-binary @- -D "$PROBE_DIR/head" -o "$PROBE_DIR/body" \
    "https://127.0.0.1:2379/$4" 2>"$PROBE_DIR/err" || rc=$?
  status=$(tr -d '\r' <"$PROBE_DIR/head" | sed -n 's/^grpc-status: *//Ip' | tail -n 1)
  if [[ $status != 7 ]] && ! grep -aq 'permission denied' "$PROBE_DIR/body"; then
    log "fence broken: flannel's identity was not refused $2${3:+ ($3)}: grpc-status '$status', $(wc -c <"$PROBE_DIR/body") bytes back, curl exit $rc $(head -c 200 "$PROBE_DIR/err")"
    BROKEN+=("$1")
    answer=1
  fi
  rm -f "$PROBE_DIR/head" "$PROBE_DIR/body" "$PROBE_DIR/err"  # a broken fence's answer may hold /registry data
  return "$answer"
}
refused get 'a plain get of /registry/' '' etcdserverpb.KV/Range AAAAABgKCi9yZWdpc3RyeS8SCi9yZWdpc3RyeTA= 10 || true
refused nested-txn 'a get of /registry/ inside a nested transaction' GHSA-rfx7-8w68-q57q etcdserverpb.KV/Txn AAAAACASHiIcEhoKGAoKL3JlZ2lzdHJ5LxIKL3JlZ2lzdHJ5MA== 10 || true
refused prev-kv 'a put with prev_kv under /registry/ in a transaction' GHSA-x35m-3gp4-4fh5 etcdserverpb.KV/Txn AAAAACkSJxIlCh4vcmVnaXN0cnkva3ViZS1lYzItZmVuY2UtcHJvYmUSAXggAQ== 10 || true
refused watch-from-key 'a watch from /coreos.com/network/config to the end of the keyspace' GHSA-xg4h-6gfc-h4m8 etcdserverpb.Watch/Watch AAAAACEKHwoaL2NvcmVvcy5jb20vbmV0d29yay9jb25maWcSAQA= 2 || true
refused alarm 'raising a NOSPACE alarm (stops every write)' GHSA-q8m4-xhhv-38mg etcdserverpb.Maintenance/Alarm AAAAAAYIARABGAE= 10 || true
rmdir "$PROBE_DIR"
# The alarm probe raises NOSPACE for member id 1 (no real member has it): clear it where it went through.
if "${ADMIN[@]}" alarm list | grep -q 'memberID:1 alarm:NOSPACE'; then
  "${ADMIN[@]}" alarm disarm >/dev/null
  log "cleared the NOSPACE alarm the probe raised"
fi
if [[ -n "${BROKEN[*]}" ]]; then
  server=$(curl -sS --max-time 5 --cacert /etc/kubernetes/pki/etcd-ca.crt --cert /etc/kubernetes/pki/apiserver-etcd-client.crt \
    --key /etc/kubernetes/pki/apiserver-etcd-client.key https://127.0.0.1:2379/version || true)
  log "etcd RBAC does not hold on this etcd ($server): ${BROKEN[*]} went through; move to a release past these advisories"
  exit 1
fi
log "etcd RBAC checked: flannel reads /coreos.com/network/config, cannot rewrite it, and is refused get, nested-txn, prev-kv, watch-from-key, alarm"
