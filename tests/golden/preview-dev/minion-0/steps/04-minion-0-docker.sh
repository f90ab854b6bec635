#!/bin/bash
# kube-ec2 remote step minion-0-docker on minion-0. Safe to run again: files are replaced only
# when their content differs, daemons restart only when an input changed, every wait is bounded.
set -euo pipefail
STEP=minion-0-docker
UNITS=(docker.service cri-docker.socket cri-docker.service)
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

# The container runtime is Ubuntu's docker.io, containerd and runc, installed by cloud-init and held
# there (apt-mark) so unattended upgrades never swap it under a running node: it changes only
# through the program. Refuse to start it below the minimums of versions.yaml.
apt-mark hold docker.io containerd runc >/dev/null
runtime_ok=true
# at_least PACKAGE MINIMUM: print the installed version; false when it is missing or older.
at_least() {
  local have
  have=$(dpkg-query -W -f='${Version}' "$1" 2>/dev/null) || have=
  if [[ -z $have ]]; then
    log "runtime: $1 is not installed"
    return 1
  fi
  log "runtime: $1 $have (minimum $2, held)"
  dpkg --compare-versions "$have" ge "$2" || { log "runtime: $1 $have is older than the minimum $2 (versions.yaml runtime.minimum)"; return 1; }
}
at_least docker.io 29.1.3 || runtime_ok=false
at_least containerd 2.2.1 || runtime_ok=false
at_least runc 1.1.12 || runtime_ok=false
if [[ $runtime_ok != true ]]; then
  log "refusing to start an outdated or missing container runtime"
  exit 1
fi
# docker.service (docker.io) has TimeoutStartSec=0: the drop-in below bounds every (re)start.
# Files of docker: the same content cloud-init wrote, so a changed template
# reaches a running host.
put_file /etc/systemd/system/cri-docker.socket 0600 <<'KUBE_EC2_EOF'
[Unit]
Description=CRI socket for cri-dockerd (the kubelet talks to Docker through it)
PartOf=cri-docker.service

[Socket]
ListenStream=/run/cri-dockerd.sock
SocketMode=0660
SocketUser=root
SocketGroup=root

[Install]
WantedBy=sockets.target
KUBE_EC2_EOF
put_file /etc/systemd/system/cri-docker.service 0600 <<'KUBE_EC2_EOF'
[Unit]
Description=cri-dockerd: the CRI shim between the kubelet and Docker
Documentation=https://github.com/Mirantis/cri-dockerd
After=network-online.target docker.service cri-docker.socket flanneld.service
Wants=network-online.target
Requires=docker.service cri-docker.socket
# Upstream's packaging/systemd/cri-docker.service (v0.3.24) from here on, with our flags. The
# streaming server (exec, attach, port-forward) listens on loopback only: the kubelet on this host
# proxies to it, nothing else needs it. One deviation: upstream's TimeoutSec=0 would let a start
# wait for ever; every start here is bounded.
StartLimitBurst=3
StartLimitIntervalSec=60s

[Service]
Type=notify
ExecStart=/usr/local/bin/cri-dockerd \
  --cni-bin-dir=/opt/cni/bin \
  --cni-conf-dir=/etc/cni/net.d \
  --container-runtime-endpoint=fd:// \
  --network-plugin=cni \
  --pod-infra-container-image=registry.k8s.io/pause:3.10.1 \
  --streaming-bind-addr=127.0.0.1:0
ExecReload=/bin/kill -s HUP $MAINPID
TimeoutStartSec=120
Restart=always
RestartSec=2
LimitNOFILE=infinity
LimitNPROC=infinity
LimitCORE=infinity
TasksMax=infinity
Delegate=yes
KillMode=process

[Install]
WantedBy=multi-user.target
KUBE_EC2_EOF
put_file /etc/docker/daemon.json 0644 <<'KUBE_EC2_EOF'
{
  "bip": "172.17.0.1/16",
  "exec-opts": ["native.cgroupdriver=systemd"],
  "iptables": false,
  "ip-masq": false,
  "live-restore": true,
  "log-driver": "json-file",
  "log-opts": {"max-size": "50m", "max-file": "3"},
  "mtu": 8951,
  "storage-driver": "overlay2"
}
KUBE_EC2_EOF
put_file /etc/systemd/system/docker.service.d/10-kube-ec2.conf 0644 <<'KUBE_EC2_EOF'
# kube-ec2: docker.io's unit waits for ever for Docker to start (TimeoutStartSec=0); a start or
# restart that hangs fails after this bound instead, and the docker step prints the journal.
[Service]
TimeoutStartSec=120
KUBE_EC2_EOF
put_file /etc/cni/net.d/10-flannel.conflist 0600 <<'KUBE_EC2_EOF'
{
  "name": "cbr0",
  "cniVersion": "0.3.1",
  "plugins": [
    {
      "type": "flannel",
      "delegate": {
        "hairpinMode": true,
        "isDefaultGateway": true
      }
    },
    {
      "type": "portmap",
      "capabilities": {"portMappings": true}
    }
  ]
}
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
swap_binary /opt/kube-ec2/cri_dockerd/0.3.24/cri-dockerd /usr/local/bin/cri-dockerd

ensure_started docker.service /etc/docker/daemon.json /etc/systemd/system/docker.service.d/10-kube-ec2.conf
ensure_started cri-docker.service /etc/systemd/system/cri-docker.socket /etc/systemd/system/cri-docker.service /etc/docker/daemon.json /etc/systemd/system/docker.service.d/10-kube-ec2.conf /usr/local/bin/cri-dockerd
wait_until 60 "docker" timeout 10 docker info
wait_until 60 "cri-dockerd socket" test -S /run/cri-dockerd.sock
wait_until 60 "cri-dockerd" systemctl is-active --quiet cri-docker.service
