#!/bin/bash
# kube-ec2 remote step minion-0-cloud-init on minion-0. Safe to run again: files are replaced only
# when their content differs, daemons restart only when an input changed, every wait is bounded.
set -euo pipefail
STEP=minion-0-cloud-init
UNITS=(cloud-final.service)
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

PREPARE=/usr/local/sbin/kube-ec2-prepare
PREPARE_LOG=/var/log/kube-ec2-prepare.log
step_debug() {
  echo "----- cloud-init status --long -----"
  cloud-init status --long || true
  echo "----- tail $PREPARE_LOG -----"
  tail -n 60 "$PREPARE_LOG" 2>/dev/null || true
}

# cloud-init status --wait exit codes: 0 = done; 2 = done with recoverable errors (a deprecated
# key, a package mirror hiccup); 1 = a module failed, which is what a failed first-boot preparation
# (our runcmd) looks like, and cloud-init never runs it again. Once cloud-init is done, our own
# marker /var/lib/kube-ec2/cloud-init.done decides: when it is missing the preparation runs again below, so fixing the
# cause and running `pulumi up` again recovers the host. Still running, or anything else, fails.
rc=0
timeout 1500 cloud-init status --wait >/dev/null || rc=$?
case $rc in
  0) log "cloud-init finished" ;;
  1) log "cloud-init finished, a module failed:"; cloud-init status --long >&2 || true ;;
  2) log "cloud-init finished with recoverable errors:"; cloud-init status --long >&2 || true ;;
  124) log "cloud-init still running after 1500s"; exit 1 ;;
  *) log "cloud-init failed (exit $rc)"; exit 1 ;;
esac

# The preparation this step carries runs when the first boot's did not finish (no marker), or
# when it changed since (a new kubernetesVersion, say): downloads are verified again. It is
# installed as the host's preparation only after it succeeded, so a failed run is retried by the
# next pulumi up. Bounded; on failure its log is printed (step_debug).
install -d -m 0755 "$STATE"
wanted="$STATE/prepare.next"
cat >"$wanted" <<'KUBE_EC2_EOF'
#!/bin/bash
# Prepare minion-0 (minion of kube-ec2-dev): kernel settings and verified
# binaries. Runs once from cloud-init; the remote steps wait for /var/lib/kube-ec2/cloud-init.done.
set -euo pipefail
exec > >(tee -a /var/log/kube-ec2-prepare.log) 2>&1
echo "$(date -u +%FT%TZ) kube-ec2: preparing minion-0"

modprobe overlay
modprobe br_netfilter
sysctl --system >/dev/null
swapoff -a
sed -i -E '/\sswap\s/s/^([^#])/#\1/' /etc/fstab

CACHE=/var/cache/kube-ec2
mkdir -p "$CACHE"

# fetch NAME VERSION URL SHA256|upstream DIR: put into DIR a copy of the artifact whose bytes were
# just checked against the hash. The cache (one directory per name and version) only saves the
# download: a cached file is installed only after the same check, and a stale or tampered one is
# fetched again. A mismatch after download stops the bootstrap.
fetch() {
  local name=$1 version=$2 url=$3 want=$4 dir=$5 cached copy
  if [[ $want == upstream ]]; then
    want=$(curl -fsSL --retry 5 --retry-all-errors --max-time 60 "$url.sha256" | cut -d' ' -f1)
  fi
  cached="$CACHE/$name/$version/$(basename "$url")"
  copy="$dir/$(basename "$url")"
  mkdir -p "$(dirname "$cached")"
  if ! { [[ -f $cached ]] && echo "$want  $cached" | sha256sum --check --status; }; then
    curl -fsSL --retry 5 --retry-all-errors --connect-timeout 10 --max-time 600 -o "$cached.part" "$url"
    mv "$cached.part" "$cached"
  fi
  cp "$cached" "$copy"
  if ! echo "$want  $copy" | sha256sum --check --status; then
    echo "kube-ec2: SHA-256 MISMATCH for $url: expected $want, got $(sha256sum "$copy" | cut -d' ' -f1)" >&2
    rm -f "$cached" "$copy"
    exit 1
  fi
}

# install_binary NAME VERSION URL SHA256 DEST
install_binary() {
  local tmp
  tmp=$(mktemp -d)
  fetch "$1" "$2" "$3" "$4" "$tmp"
  install -D -m 0755 "$tmp/$(basename "$3")" "$5"
  rm -rf "$tmp"
}

# install_archive NAME VERSION URL SHA256 MEMBER=DEST...
install_archive() {
  local url=$3 tmp pair
  tmp=$(mktemp -d)
  fetch "$1" "$2" "$3" "$4" "$tmp"
  shift 4
  tar -xzf "$tmp/$(basename "$url")" -C "$tmp"
  for pair in "$@"; do
    install -D -m 0755 "$tmp/${pair%%=*}" "${pair#*=}"
  done
  rm -rf "$tmp"
}

install_binary kubelet 1.35.1 https://dl.k8s.io/release/v1.35.1/bin/linux/amd64/kubelet e7343310e03ff0d424df4397bdfa4468947d6d1f0f93dac586c1e8d6e4086d5d /opt/kube-ec2/kubernetes/1.35.1/kubelet
install_binary kube-proxy 1.35.1 https://dl.k8s.io/release/v1.35.1/bin/linux/amd64/kube-proxy upstream /opt/kube-ec2/kubernetes/1.35.1/kube-proxy
install_binary flannel 0.27.4 https://github.com/flannel-io/flannel/releases/download/v0.27.4/flanneld-amd64 fc1233aac3ad2707d14c9ae42016b5402753f755f0d07cc5c41dc4190e95d299 /opt/kube-ec2/flannel/0.27.4/flanneld
install_archive flannel_cni 1.7.1-flannel2 https://github.com/flannel-io/cni-plugin/releases/download/v1.7.1-flannel2/cni-plugin-flannel-linux-amd64-v1.7.1-flannel2.tgz upstream flannel-amd64=/opt/cni/bin/flannel
install_archive cri_dockerd 0.3.24 https://github.com/Mirantis/cri-dockerd/releases/download/v0.3.24/cri-dockerd-0.3.24.amd64.tgz dd4b7f514c248a3aaca398f467430a4c58aae9a77ea8b96a2f5b5d6fba0948d1 cri-dockerd/cri-dockerd=/opt/kube-ec2/cri_dockerd/0.3.24/cri-dockerd
install_archive cni_plugins 1.8.0 https://github.com/containernetworking/plugins/releases/download/v1.8.0/cni-plugins-linux-amd64-v1.8.0.tgz ab3bda535f9d90766cccc90d3dddb5482003dd744d7f22bcf98186bf8eea8be6 bridge=/opt/cni/bin/bridge host-local=/opt/cni/bin/host-local loopback=/opt/cni/bin/loopback portmap=/opt/cni/bin/portmap

# The container runtime changes only through the program, node by node: unattended upgrades skip it.
apt-mark hold docker.io containerd runc
install -d -m 0700 /etc/kubernetes/pki /var/lib/etcd
install -d -m 0755 /var/log/kubernetes /etc/kube-ec2 /var/lib/kube-ec2
date -u +%FT%TZ > /var/lib/kube-ec2/cloud-init.done
echo "$(date -u +%FT%TZ) kube-ec2: minion-0 prepared"
KUBE_EC2_EOF
run_prepare() { # WHY
  log "$1: running the preparation again (log: $PREPARE_LOG)"
  if ! timeout 1200 bash "$wanted" >/dev/null; then
    log "the preparation failed or ran past 1200s"
    exit 1
  fi
  install -m 0755 "$wanted" "$PREPARE"
}
if ((rc == 1)) && [[ ! -f $STATE/packages.repaired ]]; then
  # The failed module may have been apt's: run cloud-init's package module again, once.
  log "running cloud-init's package installation again"
  timeout 900 cloud-init single --name package_update_upgrade_install --frequency always >&2
  : >"$STATE/packages.repaired"
fi
if [[ ! -f /var/lib/kube-ec2/cloud-init.done ]]; then
  run_prepare "/var/lib/kube-ec2/cloud-init.done is missing: the first boot's preparation did not finish"
elif ! cmp -s "$wanted" "$PREPARE"; then
  run_prepare "preparation changed since first boot"
fi
if [[ ! -f /var/lib/kube-ec2/cloud-init.done ]]; then
  log "/var/lib/kube-ec2/cloud-init.done is still missing after the preparation ran"
  exit 1
fi
log "host prepared at $(cat /var/lib/kube-ec2/cloud-init.done)"

# Hosts that are already running get the member list as it is now.
put_file /etc/hosts 0644 <<'KUBE_EC2_EOF'
127.0.0.1 localhost
::1 localhost ip6-localhost ip6-loopback
10.240.0.10 master
10.240.0.11 minion-0
10.240.0.12 minion-1
10.240.0.13 minion-2
KUBE_EC2_EOF
