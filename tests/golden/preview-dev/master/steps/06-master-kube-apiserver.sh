#!/bin/bash
# kube-ec2 remote step master-kube-apiserver on master. Safe to run again: files are replaced only
# when their content differs, daemons restart only when an input changed, every wait is bounded.
set -euo pipefail
STEP=master-kube-apiserver
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

# Files of kube-apiserver: the same content cloud-init wrote, so a changed template
# reaches a running host.
put_file /etc/systemd/system/kube-apiserver.service 0600 <<'KUBE_EC2_EOF'
[Unit]
Description=Kubernetes API server
Documentation=https://kubernetes.io/docs/reference/command-line-tools-reference/kube-apiserver/
After=etcd.service flanneld.service
Requires=etcd.service

[Service]
ExecStart=/usr/local/bin/kube-apiserver \
  --advertise-address=10.240.0.10 \
  --allow-privileged=true \
  --anonymous-auth=false \
  --audit-log-maxage=30 \
  --audit-log-maxbackup=10 \
  --audit-log-maxsize=100 \
  --audit-log-path=/var/log/kubernetes/audit.log \
  --audit-policy-file=/etc/kubernetes/audit-policy.yaml \
  --authorization-mode=Node,RBAC \
  --bind-address=0.0.0.0 \
  --client-ca-file=/etc/kubernetes/pki/ca.crt \
  --enable-admission-plugins=DenyServiceExternalIPs,NodeRestriction \
  --enable-aggregator-routing=true \
  --encryption-provider-config=/etc/kubernetes/pki/encryption-config.yaml \
  --etcd-cafile=/etc/kubernetes/pki/etcd-ca.crt \
  --etcd-certfile=/etc/kubernetes/pki/apiserver-etcd-client.crt \
  --etcd-keyfile=/etc/kubernetes/pki/apiserver-etcd-client.key \
  --etcd-servers=https://127.0.0.1:2379 \
  --kubelet-certificate-authority=/etc/kubernetes/pki/ca.crt \
  --kubelet-client-certificate=/etc/kubernetes/pki/apiserver-kubelet-client.crt \
  --kubelet-client-key=/etc/kubernetes/pki/apiserver-kubelet-client.key \
  --kubelet-preferred-address-types=InternalIP,Hostname \
  --profiling=false \
  --proxy-client-cert-file=/etc/kubernetes/pki/front-proxy-client.crt \
  --proxy-client-key-file=/etc/kubernetes/pki/front-proxy-client.key \
  --requestheader-allowed-names=front-proxy-client \
  --requestheader-client-ca-file=/etc/kubernetes/pki/front-proxy-ca.crt \
  --requestheader-extra-headers-prefix=X-Remote-Extra- \
  --requestheader-group-headers=X-Remote-Group \
  --requestheader-username-headers=X-Remote-User \
  --secure-port=6443 \
  --service-account-extend-token-expiration=false \
  --service-account-issuer=https://kubernetes.default.svc.cluster.local \
  --service-account-key-file=/etc/kubernetes/pki/service-account.pub \
  --service-account-lookup=true \
  --service-account-signing-key-file=/etc/kubernetes/pki/service-account.key \
  --service-cluster-ip-range=10.32.0.0/24 \
  --service-node-port-range=30000-32767 \
  --tls-cert-file=/etc/kubernetes/pki/apiserver.crt \
  --tls-min-version=VersionTLS12 \
  --tls-private-key-file=/etc/kubernetes/pki/apiserver.key
Restart=on-failure
RestartSec=5

[Install]
WantedBy=multi-user.target
KUBE_EC2_EOF
put_file /etc/kubernetes/audit-policy.yaml 0644 <<'KUBE_EC2_EOF'
# Audit policy: metadata for everything, never the bodies of Secrets or ConfigMaps.
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages:
  - RequestReceived
rules:
  - level: None
    nonResourceURLs: ["/healthz*", "/readyz*", "/livez*", "/version"]
  - level: Metadata
    resources:
      - group: ""
        resources: ["secrets", "configmaps", "serviceaccounts/token"]
      - group: authentication.k8s.io
        resources: ["tokenreviews"]
  - level: Request
    verbs: ["create", "update", "patch", "delete", "deletecollection"]
  - level: Metadata
KUBE_EC2_EOF
put_file /etc/kubernetes/encryption-config.yaml.tmpl 0600 <<'KUBE_EC2_EOF'
# Secrets at rest: secretbox (XSalsa20-Poly1305; Kubernetes advises against aescbc), 32-byte key.
# The placeholder below is replaced on the host by the
# master-kube-apiserver step with the key master-pki delivered over SSH; the result is /etc/kubernetes/pki/encryption-config.yaml (0600).
apiVersion: apiserver.config.k8s.io/v1
kind: EncryptionConfiguration
resources:
  - resources: ["secrets"]
    providers:
      - secretbox:
          keys:
            - name: key1
              secret: __ENCRYPTION_KEY__
      - identity: {}
KUBE_EC2_EOF
put_file /etc/kubernetes/admin.kubeconfig 0600 <<'KUBE_EC2_EOF'
# admin -> https://127.0.0.1:6443; certificates are read from /etc/kubernetes/pki, delivered over SSH.
apiVersion: v1
kind: Config
clusters:
  - name: kube-ec2-dev
    cluster:
      certificate-authority: /etc/kubernetes/pki/ca.crt
      server: https://127.0.0.1:6443
users:
  - name: admin
    user:
      client-certificate: /etc/kubernetes/pki/admin.crt
      client-key: /etc/kubernetes/pki/admin.key
contexts:
  - name: default
    context:
      cluster: kube-ec2-dev
      user: admin
current-context: default
KUBE_EC2_EOF
put_file /etc/kubernetes/super-admin.kubeconfig 0600 <<'KUBE_EC2_EOF'
# super-admin -> https://127.0.0.1:6443; certificates are read from /etc/kubernetes/pki, delivered over SSH.
apiVersion: v1
kind: Config
clusters:
  - name: kube-ec2-dev
    cluster:
      certificate-authority: /etc/kubernetes/pki/ca.crt
      server: https://127.0.0.1:6443
users:
  - name: super-admin
    user:
      client-certificate: /etc/kubernetes/pki/super-admin.crt
      client-key: /etc/kubernetes/pki/super-admin.key
contexts:
  - name: default
    context:
      cluster: kube-ec2-dev
      user: super-admin
current-context: default
KUBE_EC2_EOF
# Secrets at rest: the encryption config gets its key (delivered by master-pki) on the host only.
awk -v keyfile=/etc/kubernetes/pki/encryption.key 'BEGIN { getline key < keyfile } { gsub("__ENCRYPTION_KEY__", key); print }' \
  /etc/kubernetes/encryption-config.yaml.tmpl | put_file /etc/kubernetes/pki/encryption-config.yaml 0600
install -d -m 0700 /var/log/kubernetes
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
swap_binary /opt/kube-ec2/kubernetes/1.35.1/kube-apiserver /usr/local/bin/kube-apiserver

ensure_started kube-apiserver.service /etc/systemd/system/kube-apiserver.service /etc/kubernetes/audit-policy.yaml /etc/kubernetes/encryption-config.yaml.tmpl /etc/kubernetes/pki/ca.crt /etc/kubernetes/pki/etcd-ca.crt /etc/kubernetes/pki/apiserver.crt /etc/kubernetes/pki/apiserver.key /etc/kubernetes/pki/apiserver-etcd-client.crt /etc/kubernetes/pki/apiserver-etcd-client.key /etc/kubernetes/pki/apiserver-kubelet-client.crt /etc/kubernetes/pki/apiserver-kubelet-client.key /etc/kubernetes/pki/service-account.key /etc/kubernetes/pki/service-account.pub /etc/kubernetes/pki/encryption-config.yaml /etc/kubernetes/pki/front-proxy-ca.crt /etc/kubernetes/pki/front-proxy-client.crt /etc/kubernetes/pki/front-proxy-client.key /usr/local/bin/kube-apiserver
wait_until 180 "kube-apiserver readyz" curl -fsS --max-time 5 --cacert /etc/kubernetes/pki/ca.crt --cert /etc/kubernetes/pki/admin.crt --key /etc/kubernetes/pki/admin.key https://127.0.0.1:6443/readyz
