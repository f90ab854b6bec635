#!/bin/bash
# kube-ec2 remote step minion-0-flanneld on minion-0. Safe to run again: files are replaced only
# when their content differs, daemons restart only when an input changed, every wait is bounded.
set -euo pipefail
STEP=minion-0-flanneld
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
put_file /etc/systemd/system/flanneld.service 0600 <<'KUBE_EC2_EOF'
[Unit]
Description=flannel: VXLAN pod network (config read from etcd /coreos.com/network/config)
Documentation=https://github.com/flannel-io/flannel
After=network-online.target
Wants=network-online.target
Before=docker.service cri-docker.service kubelet.service

[Service]
# flanneld says READY=1 once it holds its lease and wrote the subnet file (flannel 0.27 main.go), and
# exits, with 0, when its lease is lost: active means "this run is ready", and any exit restarts it.
Type=notify
ExecStart=/usr/local/bin/flanneld \
  --etcd-cafile=/etc/kubernetes/pki/etcd-ca.crt \
  --etcd-certfile=/etc/kubernetes/pki/flannel-etcd.crt \
  --etcd-endpoints=https://10.240.0.10:2379 \
  --etcd-keyfile=/etc/kubernetes/pki/flannel-etcd.key \
  --etcd-prefix=/coreos.com/network \
  --iface=10.240.0.11 \
  --ip-masq=true \
  --subnet-file=/run/flannel/subnet.env
Restart=always
RestartSec=5
TimeoutStartSec=120

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
# Ready means this run of flanneld: it is active (it said READY=1: Type=notify), the subnet file was
# written after this run started (a file left by an earlier run survives restarts), and it is still
# the same run a moment later (a crash-looping flanneld is active only between its restarts).
SUBNET_FILE=/run/flannel/subnet.env
flanneld_prop() { systemctl show -P "$1" flanneld.service; }
flanneld_active() { test "$(flanneld_prop ActiveState)" = active; }
subnet_file_fresh() { test -s "$SUBNET_FILE" && test "$(stat -c %Y "$SUBNET_FILE")" -ge "$started"; }
wait_until 150 "flanneld active (READY=1)" flanneld_active
invocation=$(flanneld_prop InvocationID)
started_at=$(flanneld_prop ExecMainStartTimestamp)
if [[ -z $started_at ]]; then
  log "flanneld is active but systemd reports no start time for it"
  exit 1
fi
started=$(date -d "$started_at" +%s)
wait_until 30 "subnet file written by this flanneld run (started $(date -u -d "@$started" +%T))" subnet_file_fresh
sleep 5
if ! flanneld_active || [[ $(flanneld_prop InvocationID) != "$invocation" ]]; then
  log "flanneld did not stay up: it restarted or stopped during the check ($(flanneld_prop NRestarts) restarts so far)"
  exit 1
fi
wait_until 30 "flannel.1 VXLAN device" ip link show flannel.1

# Pods take flannel's MTU (the CNI config sets none: the flannel plugin reads FLANNEL_MTU), so it
# must be the MTU the cluster is planned for: VPC frames of 9001 bytes minus VXLAN's 50.
# shellcheck disable=SC1090
source "$SUBNET_FILE"
device_mtu=$(ip -o link show flannel.1 | grep -o 'mtu [0-9]*' | cut -d' ' -f2)
log "subnet ${FLANNEL_SUBNET:-?}, flannel MTU ${FLANNEL_MTU:-?}, flannel.1 MTU $device_mtu"
if [[ ${FLANNEL_MTU:-} != 8951 || $device_mtu != 8951 ]]; then
  log "MTU mismatch: flannel chose ${FLANNEL_MTU:-none} (flannel.1: $device_mtu), the cluster is planned for 8951; this instance's network does not carry 9001-byte frames"
  exit 1
fi
