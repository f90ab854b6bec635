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

# The cluster works when: one echo pod runs on every Ready, schedulable node, every pod reaches
# every other over flannel and the master reaches every pod, with payloads larger than any frame,
# and every node's pod reaches the Service by ClusterIP and by DNS name. (A cordoned or NotReady
# node is left out, so certificate renewal re-running this test is not failed by it.)
NS=kube-ec2-smoke
SERVICE_URL_DNS=http://echo.$NS.svc.cluster.local:80
PLANNED=(minion-0 minion-1 minion-2)

# Every kubectl call ends by itself: a request timeout, and a client-side bound around waits.
kc() { timeout 60 kubectl --request-timeout=30s "$@"; }
pod_exec() {
  local pod=$1
  shift
  timeout $((SMOKE_PROBE_SECONDS + 20)) kubectl --request-timeout=30s -n "$NS" exec -i "$pod" -- "$@"
}
master_exec() { "$@"; }
node_report() {
  kc get nodes -o wide || true
  kc get nodes -o jsonpath='{range .items[*]}{.metadata.name}{"\n"}{range .status.conditions[*]}{"  "}{.type}={.status} {.reason}: {.message}{"\n"}{end}{end}'
}
step_debug() {
  kc -n "$NS" get pods,svc,endpointslices -o wide || true
  kc -n "$NS" get events --sort-by=.lastTimestamp | tail -n 30 || true
}
# --- The smoke test's decision logic: which probes run, with what payload, and the verdict.
# The same text runs on the master (master-smoke-test) and against real network namespaces in
# tests/test_smoke_netns.py. The caller defines log (lib.sh) and three primitives:
#   pod_exec POD CMD...   run CMD inside POD, standard input passed through, bounded in time
#   master_exec CMD...    run CMD on the master host (flanneld there reaches pods over VXLAN)
#   node_report           print every node's conditions
# and fills SMOKE_PODS with one "pod ip node" line per node under test.
#
# Every probe POSTs SMOKE_PAYLOAD (larger than the VPC's largest frame, 9001 bytes) to agnhost
# netexec's /echo, which returns it: full-size packets cross the path in both directions, so a
# wrong MTU anywhere (a black hole that a TCP handshake never notices) fails the probe.
# (Raw text from here: a bash length expansion would open a Jinja comment.)

SMOKE_PAYLOAD=$(printf 'kube-ec2-smoke-%06d.' {1..560})
SMOKE_ATTEMPTS=${SMOKE_ATTEMPTS:-3}
SMOKE_PROBE_SECONDS=${SMOKE_PROBE_SECONDS:-10}
SMOKE_ALL_PAIRS_MAX=10
# After this many failures the verdict is clear: the remaining probes are skipped (and counted), so
# a network broken everywhere fails in minutes, not after every probe's attempts ran out.
SMOKE_MAX_FAILURES=12
SMOKE_PODS=()
SMOKE_FAILURES=()
SMOKE_SKIPPED=0

# smoke_nodes < "name,unschedulable,ReadyStatus" lines: the Ready, schedulable nodes' names. A
# cordoned or NotReady node gets no probe pod and is not counted (it is logged).
smoke_nodes() {
  local name unschedulable ready
  while IFS=, read -r name unschedulable ready; do
    [[ -n $name ]] || continue
    if [[ $unschedulable == true ]]; then
      log "node $name is cordoned: not probed"
    elif [[ $ready != True ]]; then
      log "node $name is not Ready (${ready:-no Ready condition}): not probed"
    else
      echo "$name"
    fi
  done
}

# smoke_check_placement NODE...: exactly one probe pod on each NODE and none elsewhere.
smoke_check_placement() {
  local -A count=()
  local entry node bad=0
  for entry in "${SMOKE_PODS[@]}"; do
    read -r _ _ node <<<"$entry"
    count[$node]=$((${count[$node]:-0} + 1))
  done
  for node in "$@"; do
    if ((${count[$node]:-0} != 1)); then
      log "node $node runs ${count[$node]:-0} echo pods, expected 1"
      bad=1
    fi
    unset "count[$node]"
  done
  for node in "${!count[@]}"; do
    log "node $node is not a Ready, schedulable node but runs ${count[$node]} echo pods"
    bad=1
  done
  return "$bad"
}

# smoke_pairs N: "from to" pod indexes, each direction: every pair up to SMOKE_ALL_PAIRS_MAX
# nodes; beyond that a ring walked both ways (each node sends to and receives from two others).
smoke_pairs() {
  local n=$1 i j
  if ((n <= SMOKE_ALL_PAIRS_MAX)); then
    for ((i = 0; i < n; i++)); do
      for ((j = 0; j < n; j++)); do
        if ((i != j)); then echo "$i $j"; fi
      done
    done
  elif ((n > 1)); then
    for ((i = 0; i < n; i++)); do
      echo "$i $(((i + 1) % n))"
      echo "$(((i + 1) % n)) $i"
    done
  fi
}

# smoke_echo WHAT EXEC... URL: POST the payload to URL/echo through EXEC (pod_exec POD or
# master_exec); pass when exactly the payload comes back. A failure is recorded with what the
# probe itself said (curl's exit code and error, the bytes that came back).
smoke_echo() {
  local what=$1 url=${*: -1} attempt rc out err
  local -a exec=("${@:2:$#-2}")
  if ((${#SMOKE_FAILURES[@]} >= SMOKE_MAX_FAILURES)); then
    SMOKE_SKIPPED=$((SMOKE_SKIPPED + 1))
    return 1
  fi
  err=$(mktemp)
  for ((attempt = 1; attempt <= SMOKE_ATTEMPTS; attempt++)); do
    rc=0
    out=$("${exec[@]}" curl -sS --connect-timeout "$SMOKE_PROBE_SECONDS" --max-time "$SMOKE_PROBE_SECONDS" \
      --data-urlencode msg@- "$url/echo" <<<"$SMOKE_PAYLOAD" 2>"$err") || rc=$?
    if ((rc == 0)) && [[ $out == "$SMOKE_PAYLOAD" ]]; then
      rm -f "$err"
      log "ok: $what (${#SMOKE_PAYLOAD} bytes each way)"
      return 0
    fi
    if ((attempt < SMOKE_ATTEMPTS)); then sleep 2; fi
  done
  SMOKE_FAILURES+=("$what: exit $rc after $SMOKE_ATTEMPTS attempt(s), ${#out} of ${#SMOKE_PAYLOAD} bytes back; probe said: $(tr '\n' ' ' <"$err")${out:0:200}")
  rm -f "$err"
  return 1
}

# smoke_run SERVICE_URL DNS_URL: every probe, then the verdict (0 = the network works).
#   pod -> pod      every pair (or ring) of nodes, each direction, over flannel
#   master -> pod   every pod (the apiserver reaches webhooks and aggregated APIs that way)
#   pod -> Service  from every node's pod, by ClusterIP and by DNS name: each must pass on its own
smoke_run() {
  local service=$1 dns=$2 i j probes=0
  local -a names=() ips=() nodes=()
  SMOKE_FAILURES=()
  SMOKE_SKIPPED=0
  for i in "${!SMOKE_PODS[@]}"; do
    read -r "names[i]" "ips[i]" "nodes[i]" <<<"${SMOKE_PODS[i]}"
  done
  while read -r i j; do
    probes=$((probes + 1))
    smoke_echo "pod -> pod: ${nodes[i]} (${names[i]}) -> ${nodes[j]} (${ips[j]})" \
      pod_exec "${names[i]}" "http://${ips[j]}:8080" || true
  done < <(smoke_pairs "${#names[@]}")
  for i in "${!names[@]}"; do
    probes=$((probes + 3))
    smoke_echo "master -> pod: ${nodes[i]} (${ips[i]})" master_exec "http://${ips[i]}:8080" || true
    smoke_echo "pod -> Service by ClusterIP: from ${nodes[i]} (${names[i]}) to $service" \
      pod_exec "${names[i]}" "$service" || true
    smoke_echo "pod -> Service by DNS name: from ${nodes[i]} (${names[i]}) to $dns" \
      pod_exec "${names[i]}" "$dns" || true
  done
  if ((${#SMOKE_FAILURES[@]} > 0)); then
    log "smoke test FAILED: ${#SMOKE_FAILURES[@]} of $probes probes failed, $SMOKE_SKIPPED not run after that"
    printf 'FAILED %s\n' "${SMOKE_FAILURES[@]}" >&2
    echo "----- node conditions -----" >&2
    node_report >&2 || true
    return 1
  fi
  log "all $probes probes passed over ${#names[@]} nodes"
}


ready_endpoints() { kc -n "$NS" get endpointslices -l kubernetes.io/service-name=echo -o jsonpath='{range .items[*].endpoints[?(@.conditions.ready==true)]}{.addresses[0]}{"\n"}{end}' | grep -c .; }
endpoints_ready() { ready_endpoints | grep -qx "${#nodes[@]}"; }

status=$(kc get nodes -o jsonpath='{range .items[*]}{.metadata.name},{.spec.unschedulable},{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}')
mapfile -t nodes < <(smoke_nodes <<<"$status")
if ((${#nodes[@]} == 0)); then
  log "no Ready, schedulable node to run the smoke test on"
  node_report >&2
  exit 1
fi
log "testing ${#nodes[@]} Ready, schedulable nodes: ${nodes[*]}"
for name in "${PLANNED[@]}"; do
  [[ " ${nodes[*]} " == *" $name "* ]] || log "warning: $name is not tested (cordoned, not Ready or not registered)"
done

timeout 150 kubectl delete namespace "$NS" --ignore-not-found --wait=true --timeout=120s
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
  # replicas: set by the smoke-test step to the number of Ready, schedulable nodes.
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
          # Cordoned (unschedulable taint) and NotReady nodes are no spread domain.
          nodeAffinityPolicy: Honor
          nodeTaintsPolicy: Honor
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

kc apply -f /etc/kube-ec2/smoke-test.yaml
kc -n "$NS" scale deployment/echo --replicas="${#nodes[@]}"
timeout 330 kubectl -n "$NS" rollout status deployment/echo --timeout=300s

pods=$(kc -n "$NS" get pods -l app=echo --field-selector=status.phase=Running \
  -o jsonpath='{range .items[*]}{.metadata.name} {.status.podIP} {.spec.nodeName}{"\n"}{end}')
mapfile -t SMOKE_PODS < <(grep . <<<"$pods")
smoke_check_placement "${nodes[@]}"
log "one echo pod on each of ${#nodes[@]} nodes"
wait_until 60 "Service echo has ${#nodes[@]} ready endpoints" endpoints_ready

cluster_ip=$(kc -n "$NS" get service echo -o jsonpath='{.spec.clusterIP}')
smoke_run "http://$cluster_ip:80" "$SERVICE_URL_DNS"

kc delete namespace "$NS" --wait=false
log "smoke test passed"
