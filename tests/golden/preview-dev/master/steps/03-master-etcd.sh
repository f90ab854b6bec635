#!/bin/bash
# kube-ec2 remote step master-etcd on master. Safe to run again: files are replaced only
# when their content differs, daemons restart only when an input changed, every wait is bounded.
set -euo pipefail
STEP=master-etcd
UNITS=(etcd-data.service etcd.service etcd-snapshot.service etcd-snapshot.timer)
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

# Files of etcd, etcd-snapshot: the same content cloud-init wrote, so a changed template
# reaches a running host.
put_file /etc/systemd/system/etcd.service 0600 <<'KUBE_EC2_EOF'
[Unit]
Description=etcd: the cluster's key-value store (every setting is in /etc/etcd/etcd.conf.yml)
Documentation=https://etcd.io/docs/
After=network-online.target etcd-data.service
Wants=network-online.target
# The data lives on its own EBS volume, never on the root volume.
Requires=etcd-data.service
AssertPathIsMountPoint=/var/lib/etcd

[Service]
Type=notify
ExecStart=/usr/local/bin/etcd --config-file=/etc/etcd/etcd.conf.yml
Restart=on-failure
RestartSec=5
LimitNOFILE=65536

[Install]
WantedBy=multi-user.target
KUBE_EC2_EOF
put_file /etc/etcd/etcd.conf.yml 0644 <<'KUBE_EC2_EOF'
# etcd settings (single member on the master). TLS with client-certificate auth on both
# listeners, against etcd's own CA; peers are not reachable from outside (2380 is not opened).
name: master
data-dir: /var/lib/etcd
listen-client-urls: https://10.240.0.10:2379,https://127.0.0.1:2379
advertise-client-urls: https://10.240.0.10:2379
listen-peer-urls: https://10.240.0.10:2380
initial-advertise-peer-urls: https://10.240.0.10:2380
initial-cluster: master=https://10.240.0.10:2380
initial-cluster-state: new
initial-cluster-token: kube-ec2-dev
listen-metrics-urls: http://127.0.0.1:2381
# As kubeadm runs etcd 3.5: check the data against the peers' before serving, and send watchers
# progress notifications every 5 s (the config file takes durations as integer nanoseconds).
experimental-initial-corrupt-check: true
experimental-watch-progress-notify-interval: 5000000000
client-transport-security:
  cert-file: /etc/kubernetes/pki/etcd-server.crt
  key-file: /etc/kubernetes/pki/etcd-server.key
  client-cert-auth: true
  trusted-ca-file: /etc/kubernetes/pki/etcd-ca.crt
  auto-tls: false
peer-transport-security:
  cert-file: /etc/kubernetes/pki/etcd-peer.crt
  key-file: /etc/kubernetes/pki/etcd-peer.key
  client-cert-auth: true
  trusted-ca-file: /etc/kubernetes/pki/etcd-ca.crt
  auto-tls: false
KUBE_EC2_EOF
put_file /etc/systemd/system/etcd-data.service 0644 <<'KUBE_EC2_EOF'
[Unit]
Description=etcd's own EBS volume, formatted once and mounted at /var/lib/etcd
Documentation=file:///usr/local/sbin/kube-ec2-etcd-data
After=local-fs.target
Before=etcd.service

[Service]
Type=oneshot
EnvironmentFile=/etc/kube-ec2/etcd-storage.env
ExecStart=/usr/local/sbin/kube-ec2-etcd-data
RemainAfterExit=yes
TimeoutStartSec=660
KUBE_EC2_EOF
put_file /usr/local/sbin/kube-ec2-etcd-data 0755 <<'KUBE_EC2_EOF'
#!/bin/bash
# Mount etcd's own EBS volume at /var/lib/etcd (run by etcd-data.service before etcd starts).
# The volume is found by its id: on Nitro instances it is an NVMe disk whose serial is the id
# without its dash (/dev/disk/by-id), whatever device name the attachment asked for; on Xen
# instances it appears under the attachment's name. A filesystem is made only on a volume
# that has none, so a replaced master mounts the data the old one left.
set -euo pipefail
: "${ETCD_VOLUME_ID:?ETCD_VOLUME_ID is not set (EnvironmentFile=/etc/kube-ec2/etcd-storage.env)}"
MOUNT=/var/lib/etcd
WAIT_SECONDS=600

log() { printf 'etcd-data: %s\n' "$*" >&2; }

if [[ ! $ETCD_VOLUME_ID =~ ^vol-[0-9a-f]+$ ]]; then
  log "ETCD_VOLUME_ID=$ETCD_VOLUME_ID is not a volume id (vol-...)"
  exit 1
fi
candidates=("/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_${ETCD_VOLUME_ID/-/}" /dev/xvdf)

# The attachment is made after the instance starts: wait for the disk, bounded.
device=""
for ((waited = 0; waited <= WAIT_SECONDS; waited += 2)); do
  for candidate in "${candidates[@]}"; do
    if [[ -b $candidate ]]; then
      device=$(readlink -f "$candidate")
      break 2
    fi
  done
  sleep 2
done
if [[ -z $device ]]; then
  log "volume $ETCD_VOLUME_ID did not appear after ${WAIT_SECONDS}s (looked for ${candidates[*]})"
  exit 1
fi

if mountpoint -q "$MOUNT"; then
  # Compare device numbers: what is mounted there against the volume's disk.
  if [[ $(mountpoint -d "$MOUNT") != "$(mountpoint -x "$device")" ]]; then
    log "$MOUNT is already a mount of $(findmnt -n -o SOURCE --mountpoint "$MOUNT"), not of volume $ETCD_VOLUME_ID ($device)"
    exit 1
  fi
  log "$device already mounted at $MOUNT"
  exit 0
fi

# blkid -p exits 2 when it finds no signature at all; any other failure stops here, unformatted.
rc=0
blkid -p "$device" >/dev/null || rc=$?
if ((rc == 2)); then
  log "volume $ETCD_VOLUME_ID ($device) has no filesystem: making one"
  mkfs.ext4 -q -L etcd-data "$device"
elif ((rc != 0)); then
  log "blkid $device failed with exit $rc; not touching it"
  exit 1
fi
install -d -m 0700 "$MOUNT"
mount -o noatime "$device" "$MOUNT"
chmod 0700 "$MOUNT"
log "volume $ETCD_VOLUME_ID ($device) mounted at $MOUNT"
KUBE_EC2_EOF
put_file /etc/systemd/system/etcd-snapshot.timer 0600 <<'KUBE_EC2_EOF'
[Unit]
Description=Snapshot etcd to S3 every hour

[Timer]
OnCalendar=hourly
Persistent=true
RandomizedDelaySec=300

[Install]
WantedBy=timers.target
KUBE_EC2_EOF
put_file /etc/systemd/system/etcd-snapshot.service 0644 <<'KUBE_EC2_EOF'
[Unit]
Description=Snapshot etcd and upload it to the stack's S3 bucket
Documentation=file:///usr/local/sbin/kube-ec2-etcd-snapshot
After=etcd.service
Requisite=etcd.service

[Service]
Type=oneshot
EnvironmentFile=/etc/kube-ec2/etcd-storage.env
ExecStart=/usr/local/sbin/kube-ec2-etcd-snapshot
TimeoutStartSec=1800
KUBE_EC2_EOF
put_file /usr/local/sbin/kube-ec2-etcd-snapshot 0755 <<'KUBE_EC2_EOF'
#!/bin/bash
# Snapshot etcd, check the snapshot, and upload it to the stack's S3 bucket (run by
# etcd-snapshot.timer). The upload is signed by curl itself (--aws-sigv4) with the master's
# instance-profile credentials from IMDSv2; they go to curl on its standard input, never into argv
# or a log. The role may only put objects under snapshots/ in that bucket.
set -euo pipefail
: "${SNAPSHOT_BUCKET:?SNAPSHOT_BUCKET is not set (EnvironmentFile=/etc/kube-ec2/etcd-storage.env)}"
export PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin
REGION=us-east-1
IMDS=http://169.254.169.254
# The bucket's regional endpoint; S3_ENDPOINT exists for the tests' local fake S3 only.
S3=${S3_ENDPOINT:-https://${SNAPSHOT_BUCKET}.s3.${REGION}.amazonaws.com}
PKI=/etc/kubernetes/pki
STAGE=/var/lib/kube-ec2/etcd-snapshots

log() { printf 'etcd-snapshot: %s\n' "$*" >&2; }

install -d -m 0700 "$STAGE"
name="etcd-$(date -u +%Y%m%dT%H%M%SZ).db"
file="$STAGE/$name"
trap 'rm -f "$file" "$file.part"' EXIT

etcdctl --endpoints=https://127.0.0.1:2379 --cacert="$PKI/etcd-ca.crt" \
  --cert="$PKI/apiserver-etcd-client.crt" --key="$PKI/apiserver-etcd-client.key" \
  --dial-timeout=10s --command-timeout=300s snapshot save "$file" >&2

# A snapshot etcdutl cannot open and read through is never uploaded.
status=$(etcdutl snapshot status "$file" --write-out=json)
summary=$(python3 -c 'import json, sys; s = json.load(sys.stdin); print("revision %d, %d keys" % (s["revision"], s["totalKey"]))' <<<"$status")
sha=$(sha256sum "$file" | cut -d' ' -f1)

# IMDSv2: a session token first, then the instance profile's temporary credentials.
token=$(curl -fsS --max-time 10 -X PUT -H "X-aws-ec2-metadata-token-ttl-seconds: 300" "$IMDS/latest/api/token")
role=$(curl -fsS --max-time 10 -H "X-aws-ec2-metadata-token: $token" "$IMDS/latest/meta-data/iam/security-credentials/")
credentials=$(curl -fsS --max-time 10 -H "X-aws-ec2-metadata-token: $token" \
  "$IMDS/latest/meta-data/iam/security-credentials/${role%%$'\n'*}")
curl_config() {
  python3 -c '
import json, sys
c = json.load(sys.stdin)
print("user = " + json.dumps(c["AccessKeyId"] + ":" + c["SecretAccessKey"]))
print("header = " + json.dumps("x-amz-security-token: " + c["Token"]))
' <<<"$credentials"
}

# x-amz-content-sha256 carries the real hash: S3 refuses a body that does not match it.
curl_config | curl -fsS --max-time 900 --retry 3 --config - \
  --aws-sigv4 "aws:amz:${REGION}:s3" \
  -H "x-amz-content-sha256: $sha" \
  --upload-file "$file" "$S3/snapshots/$name" >&2
log "uploaded $name ($summary, sha256 $sha) to s3://$SNAPSHOT_BUCKET/snapshots/$name"
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
swap_binary /opt/kube-ec2/etcd/3.6.14/etcd /usr/local/bin/etcd

ensure_started etcd.service /etc/systemd/system/etcd.service /etc/etcd/etcd.conf.yml /etc/systemd/system/etcd-data.service /usr/local/sbin/kube-ec2-etcd-data /etc/kubernetes/pki/etcd-ca.crt /etc/kubernetes/pki/etcd-server.crt /etc/kubernetes/pki/etcd-server.key /etc/kubernetes/pki/etcd-peer.crt /etc/kubernetes/pki/etcd-peer.key /usr/local/bin/etcd
ensure_started etcd-snapshot.timer /etc/systemd/system/etcd-snapshot.timer /etc/systemd/system/etcd-snapshot.service /usr/local/sbin/kube-ec2-etcd-snapshot /etc/kubernetes/pki/etcd-ca.crt /etc/kubernetes/pki/apiserver-etcd-client.crt /etc/kubernetes/pki/apiserver-etcd-client.key
wait_until 120 "etcd health" bash -c 'curl -fsS --max-time 5 --cacert /etc/kubernetes/pki/etcd-ca.crt --cert /etc/kubernetes/pki/apiserver-etcd-client.crt --key /etc/kubernetes/pki/apiserver-etcd-client.key https://127.0.0.1:2379/health | grep -q "\"health\":\"true\""'
