#!/bin/bash
# kube-ec2 remote step master-smoke-test on master. Safe to run again: files are replaced only
# when their content differs, daemons restart only when an input changed, every wait is bounded.
set -euo pipefail
STEP=master-smoke-test
UNITS=(kube-apiserver.service kube-controller-manager.service kube-scheduler.service)
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

# The cluster works when: a Deployment spreads over all 3 minions, a pod reaches a pod on
# every other node over flannel, and the Service answers by ClusterIP and by DNS name.
NS=kube-ec2-smoke
step_debug() {
  kubectl get nodes -o wide || true
  kubectl -n "$NS" get pods,svc,endpointslices -o wide || true
  kubectl -n "$NS" get events --sort-by=.lastTimestamp | tail -n 30 || true
}

kubectl delete namespace "$NS" --ignore-not-found --wait=true --timeout=120s
put_file /etc/kube-ec2/smoke-test.yaml 0644 <<'KUBE_EC2_EOF'
apiVersion: v1
kind: Namespace
metadata:
  name: kube-ec2-smoke
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: echo
  namespace: kube-ec2-smoke
spec:
  replicas: 3
  selector:
    matchLabels:
      app: echo
  template:
    metadata:
      labels:
        app: echo
    spec:
      topologySpreadConstraints:
        - maxSkew: 1
          topologyKey: kubernetes.io/hostname
          whenUnsatisfiable: DoNotSchedule
          labelSelector:
            matchLabels:
              app: echo
      containers:
        - name: echo
          image: registry.k8s.io/e2e-test-images/agnhost:2.53
          args: ["netexec", "--http-port=8080"]
          ports:
            - {containerPort: 8080, name: http}
          readinessProbe:
            httpGet: {path: /healthz, port: 8080}
          securityContext:
            allowPrivilegeEscalation: false
            runAsNonRoot: true
            runAsUser: 65534
---
apiVersion: v1
kind: Service
metadata:
  name: echo
  namespace: kube-ec2-smoke
spec:
  selector:
    app: echo
  ports:
    - {name: http, port: 80, targetPort: 8080}
KUBE_EC2_EOF
kubectl apply -f /etc/kube-ec2/smoke-test.yaml
kubectl -n "$NS" rollout status deployment/echo --timeout=300s

mapfile -t pods < <(kubectl -n "$NS" get pods -l app=echo \
  -o jsonpath='{range .items[*]}{.metadata.name} {.status.podIP} {.spec.nodeName}{"\n"}{end}')
nodes=$(printf '%s\n' "${pods[@]}" | cut -d' ' -f3 | sort -u | wc -l)
if ((nodes != 3)); then
  log "echo pods run on $nodes nodes, expected 3"
  exit 1
fi
log "echo pods spread over $nodes nodes"

read -r client client_ip client_node <<<"${pods[0]}"
probe() { timeout 20 kubectl -n "$NS" exec "$client" -- /agnhost connect --timeout=5s "$1"; }
for entry in "${pods[@]:1}"; do
  read -r _ ip node <<<"$entry"
  wait_until 60 "pod $client_ip on $client_node -> pod $ip on $node (flannel)" probe "$ip:8080"
done
cluster_ip=$(kubectl -n "$NS" get service echo -o jsonpath='{.spec.clusterIP}')
wait_until 60 "Service by ClusterIP $cluster_ip:80" probe "$cluster_ip:80"
wait_until 90 "Service by DNS name echo.$NS.svc.cluster.local" probe "echo.$NS.svc.cluster.local:80"

kubectl delete namespace "$NS" --wait=false
log "smoke test passed"
