#!/bin/bash
# kube-ec2 remote step minion-0-kubelet on minion-0. Safe to run again: files are replaced only
# when their content differs, daemons restart only when an input changed, every wait is bounded.
set -euo pipefail
STEP=minion-0-kubelet
UNITS=(kubelet.service kube-proxy.service)
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

# Files of kubelet, kube-proxy: the same content cloud-init wrote, so a changed template
# reaches a running host.
put_file /etc/systemd/system/kubelet.service 0600 <<'KUBE_EC2_EOF'
[Unit]
Description=Kubernetes kubelet (settings in /var/lib/kubelet/config.yaml)
Documentation=https://kubernetes.io/docs/reference/command-line-tools-reference/kubelet/
After=cri-docker.service
Requires=cri-docker.service

[Service]
ExecStart=/usr/local/bin/kubelet \
  --config=/var/lib/kubelet/config.yaml \
  --hostname-override=minion-0 \
  --kubeconfig=/etc/kubernetes/kubelet.kubeconfig \
  --node-ip=10.240.0.11
Restart=on-failure
RestartSec=5

[Install]
WantedBy=multi-user.target
KUBE_EC2_EOF
put_file /var/lib/kubelet/config.yaml 0600 <<'KUBE_EC2_EOF'
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: /etc/kubernetes/pki/ca.crt
authorization:
  mode: Webhook
cgroupDriver: systemd
clusterDNS:
  - 10.32.0.10
clusterDomain: cluster.local
containerRuntimeEndpoint: unix:///run/cri-dockerd.sock
eventRecordQPS: 5
failSwapOn: true
makeIPTablesUtilChains: true
readOnlyPort: 0
resolvConf: /run/systemd/resolve/resolv.conf
rotateCertificates: false
serverTLSBootstrap: false
tlsCertFile: /etc/kubernetes/pki/kubelet.crt
tlsMinVersion: VersionTLS12
tlsPrivateKeyFile: /etc/kubernetes/pki/kubelet.key
KUBE_EC2_EOF
put_file /etc/kubernetes/kubelet.kubeconfig 0600 <<'KUBE_EC2_EOF'
# kubelet -> https://10.240.0.10:6443; certificates are read from /etc/kubernetes/pki, delivered over SSH.
apiVersion: v1
kind: Config
clusters:
  - name: kube-ec2-dev
    cluster:
      certificate-authority: /etc/kubernetes/pki/ca.crt
      server: https://10.240.0.10:6443
users:
  - name: kubelet
    user:
      client-certificate: /etc/kubernetes/pki/kubelet.crt
      client-key: /etc/kubernetes/pki/kubelet.key
contexts:
  - name: default
    context:
      cluster: kube-ec2-dev
      user: kubelet
current-context: default
KUBE_EC2_EOF
put_file /etc/systemd/system/kube-proxy.service 0600 <<'KUBE_EC2_EOF'
[Unit]
Description=Kubernetes kube-proxy (settings in /var/lib/kube-proxy/config.yaml)
Documentation=https://kubernetes.io/docs/reference/command-line-tools-reference/kube-proxy/
After=network-online.target flanneld.service
Wants=network-online.target

[Service]
ExecStart=/usr/local/bin/kube-proxy \
  --config=/var/lib/kube-proxy/config.yaml
Restart=on-failure
RestartSec=5

[Install]
WantedBy=multi-user.target
KUBE_EC2_EOF
put_file /var/lib/kube-proxy/config.yaml 0644 <<'KUBE_EC2_EOF'
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: /etc/kubernetes/kube-proxy.kubeconfig
clusterCIDR: 10.200.0.0/16
healthzBindAddress: 127.0.0.1:10256
hostnameOverride: minion-0
metricsBindAddress: 127.0.0.1:10249
mode: iptables
KUBE_EC2_EOF
put_file /etc/kubernetes/kube-proxy.kubeconfig 0600 <<'KUBE_EC2_EOF'
# kube-proxy -> https://10.240.0.10:6443; certificates are read from /etc/kubernetes/pki, delivered over SSH.
apiVersion: v1
kind: Config
clusters:
  - name: kube-ec2-dev
    cluster:
      certificate-authority: /etc/kubernetes/pki/ca.crt
      server: https://10.240.0.10:6443
users:
  - name: kube-proxy
    user:
      client-certificate: /etc/kubernetes/pki/kube-proxy.crt
      client-key: /etc/kubernetes/pki/kube-proxy.key
contexts:
  - name: default
    context:
      cluster: kube-ec2-dev
      user: kube-proxy
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
swap_binary /opt/kube-ec2/kubernetes/1.35.1/kubelet /usr/local/bin/kubelet
swap_binary /opt/kube-ec2/kubernetes/1.35.1/kube-proxy /usr/local/bin/kube-proxy

ensure_started kubelet.service /etc/systemd/system/kubelet.service /var/lib/kubelet/config.yaml /etc/kubernetes/kubelet.kubeconfig /etc/kubernetes/pki/ca.crt /etc/kubernetes/pki/kubelet.crt /etc/kubernetes/pki/kubelet.key /usr/local/bin/kubelet
ensure_started kube-proxy.service /etc/systemd/system/kube-proxy.service /var/lib/kube-proxy/config.yaml /etc/kubernetes/kube-proxy.kubeconfig /etc/kubernetes/pki/ca.crt /etc/kubernetes/pki/kube-proxy.crt /etc/kubernetes/pki/kube-proxy.key /usr/local/bin/kube-proxy
wait_until 120 "kubelet healthz" curl -fsS --max-time 5 http://127.0.0.1:10248/healthz
wait_until 120 "kube-proxy healthz" curl -fsS --max-time 5 http://127.0.0.1:10256/healthz
