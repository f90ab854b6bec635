#!/bin/bash
# kube-ec2 remote step master-kube-controller-manager on master. Safe to run again: files are replaced only
# when their content differs, daemons restart only when an input changed, every wait is bounded.
set -euo pipefail
STEP=master-kube-controller-manager
UNITS=(kube-controller-manager.service)
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

# Files of kube-controller-manager: the same content cloud-init wrote, so a changed template
# reaches a running host.
put_file /etc/systemd/system/kube-controller-manager.service 0600 <<'KUBE_EC2_EOF'
[Unit]
Description=Kubernetes controller manager
Documentation=https://kubernetes.io/docs/reference/command-line-tools-reference/kube-controller-manager/
After=kube-apiserver.service

[Service]
ExecStart=/usr/local/bin/kube-controller-manager \
  --authentication-kubeconfig=/etc/kubernetes/controller-manager.kubeconfig \
  --authorization-kubeconfig=/etc/kubernetes/controller-manager.kubeconfig \
  --bind-address=127.0.0.1 \
  --cluster-name=kube-ec2-dev \
  --kubeconfig=/etc/kubernetes/controller-manager.kubeconfig \
  --leader-elect=true \
  --profiling=false \
  --root-ca-file=/etc/kubernetes/pki/ca.crt \
  --service-account-private-key-file=/etc/kubernetes/pki/service-account.key \
  --service-cluster-ip-range=10.32.0.0/24 \
  --terminated-pod-gc-threshold=1000 \
  --use-service-account-credentials=true
Restart=on-failure
RestartSec=5

[Install]
WantedBy=multi-user.target
KUBE_EC2_EOF
put_file /etc/kubernetes/controller-manager.kubeconfig 0600 <<'KUBE_EC2_EOF'
# controller-manager -> https://127.0.0.1:6443; certificates are read from /etc/kubernetes/pki, delivered over SSH.
apiVersion: v1
kind: Config
clusters:
  - name: kube-ec2-dev
    cluster:
      certificate-authority: /etc/kubernetes/pki/ca.crt
      server: https://127.0.0.1:6443
users:
  - name: controller-manager
    user:
      client-certificate: /etc/kubernetes/pki/controller-manager.crt
      client-key: /etc/kubernetes/pki/controller-manager.key
contexts:
  - name: default
    context:
      cluster: kube-ec2-dev
      user: controller-manager
current-context: default
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
swap_binary /opt/kube-ec2/kubernetes/1.35.1/kube-controller-manager /usr/local/bin/kube-controller-manager

ensure_started kube-controller-manager.service /etc/systemd/system/kube-controller-manager.service /etc/kubernetes/controller-manager.kubeconfig /etc/kubernetes/pki/ca.crt /etc/kubernetes/pki/controller-manager.crt /etc/kubernetes/pki/controller-manager.key /etc/kubernetes/pki/service-account.key /usr/local/bin/kube-controller-manager
# Bound to 127.0.0.1 with an in-memory self-signed serving certificate, hence -k for this local probe.
wait_until 120 "kube-controller-manager healthz" curl -fsSk --max-time 5 https://127.0.0.1:10257/healthz
