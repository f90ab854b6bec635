#!/bin/bash
# kube-ec2 remote step master-flanneld on master. Safe to run again: files are replaced only
# when their content differs, daemons restart only when an input changed, every wait is bounded.
set -euo pipefail
STEP=master-flanneld
UNITS=(flanneld.service)
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

# Files of flanneld: the same content cloud-init wrote, so a changed template
# reaches a running host.
put_file /etc/systemd/system/flanneld.service 0644 <<'KUBE_EC2_EOF'
[Unit]
Description=flannel: VXLAN pod network (config read from etcd /coreos.com/network/config)
Documentation=https://github.com/flannel-io/flannel
After=network-online.target etcd.service
Wants=network-online.target
Before=docker.service cri-docker.service kubelet.service

[Service]
ExecStart=/usr/local/bin/flanneld \
  --etcd-cafile=/etc/kubernetes/pki/etcd-ca.crt \
  --etcd-certfile=/etc/kubernetes/pki/flannel-etcd.crt \
  --etcd-endpoints=https://10.240.0.10:2379 \
  --etcd-keyfile=/etc/kubernetes/pki/flannel-etcd.key \
  --etcd-prefix=/coreos.com/network \
  --iface=10.240.0.10 \
  --ip-masq=true \
  --subnet-file=/run/flannel/subnet.env
Restart=on-failure
RestartSec=5

[Install]
WantedBy=multi-user.target
KUBE_EC2_EOF
# swap_binary STAGED DEST: put in place the daemon binary the host's preparation staged (and
# verified) for this version, when DEST differs; ensure_started then restarts the daemon. The
# staged path names the version, so a new version (kubernetesVersion, versions.yaml) re-runs this step.
swap_binary() {
  local staged=$1 dest=$2
  if [[ ! -f $staged ]]; then
    log "$staged is missing: the cloud-init step did not stage this version"
    return 1
  fi
  cmp -s "$staged" "$dest" && return 0
  # A new file renamed over the old one: a running binary is never written in place.
  install -m 0755 -o root -g root "$staged" "$dest.kube-ec2-new"
  mv -f "$dest.kube-ec2-new" "$dest"
  log "swapped in $dest from $staged"
}
swap_binary /opt/kube-ec2/flannel/0.27.4/flanneld /usr/local/bin/flanneld

ensure_started flanneld.service /etc/systemd/system/flanneld.service /etc/kubernetes/pki/etcd-ca.crt /etc/kubernetes/pki/flannel-etcd.crt /etc/kubernetes/pki/flannel-etcd.key /usr/local/bin/flanneld
wait_until 120 "flannel subnet lease" test -s /run/flannel/subnet.env
wait_until 30 "flannel.1 VXLAN device" ip link show flannel.1
# shellcheck disable=SC1091
source /run/flannel/subnet.env
log "subnet ${FLANNEL_SUBNET:-?} mtu ${FLANNEL_MTU:-?} (pods use 8951: VPC MTU minus VXLAN overhead)"
if [[ ${FLANNEL_MTU:-} != 8951 ]]; then
  log "warning: flannel chose MTU ${FLANNEL_MTU:-?}, expected 8951; this instance type may not use jumbo frames"
fi
