#!/usr/bin/env bash
# A three-node RabbitMQ cluster on this machine, for the failover run (make cluster-failover)
# and for trying cdrflow against a cluster by hand. It never touches the default node (5672).
#
#   deploy/cluster/rabbitmq-cluster.sh start          start c1..c3 and join them into one cluster
#   deploy/cluster/rabbitmq-cluster.sh stop [cN]      stop every node, or one (its data stays)
#   deploy/cluster/rabbitmq-cluster.sh start-node cN  start one stopped node again (it rejoins)
#   deploy/cluster/rabbitmq-cluster.sh status         members, and where each queue's replicas are
#   deploy/cluster/rabbitmq-cluster.sh urls           the CDRFLOW_AMQP_URL that lists every node
#   deploy/cluster/rabbitmq-cluster.sh clean          stop every node and delete its data
#
# Node cN is cdrflow-cN@localhost, AMQP on 127.0.0.1:571N, Erlang distribution on 2571N, data
# and logs under $CLUSTER_DIR/cN (default /tmp/cdrflow-cluster), owned by rabbitmq.
# Run it as root (rabbitmq-server and rabbitmqctl switch to the rabbitmq user, whose Erlang
# cookie every node shares) or as rabbitmq.
set -euo pipefail

BASE=${CLUSTER_DIR:-/tmp/cdrflow-cluster}
NODES=(c1 c2 c3)
SEED=c1

node_name() { echo "cdrflow-$1@localhost"; }
amqp_port() { echo $((5710 + ${1#c})); }
dist_port() { echo $((25710 + ${1#c})); }
ctl() {  # node, rabbitmqctl arguments...
    local node=$1; shift
    rabbitmqctl -q -n "$(node_name "$node")" "$@"
}
running() { ctl "$1" -t 5 ping >/dev/null 2>&1; }
quietly() {  # command...: its chatter only when it fails (joining logs errors that are not)
    local out
    if ! out=$("$@" 2>&1); then echo "$out" >&2; return 1; fi
}

prepare() {
    local node=$1 home="$BASE/$1"
    if [[ ! -f $home/plugins ]]; then
        mkdir -p "$home"
        echo '[].' >"$home/plugins"
        # /etc/rabbitmq/rabbitmq.conf names the default node's listener: each node has its own.
        echo "listeners.tcp.local = 127.0.0.1:$(amqp_port "$node")" >"$home/rabbitmq.conf"
        chown -R rabbitmq:rabbitmq "$BASE"
    fi
}

launch() {
    local node=$1 home="$BASE/$1"
    prepare "$node"
    if running "$node"; then return 0; fi
    env RABBITMQ_NODENAME="$(node_name "$node")" \
        RABBITMQ_NODE_PORT="$(amqp_port "$node")" \
        RABBITMQ_DIST_PORT="$(dist_port "$node")" \
        RABBITMQ_MNESIA_BASE="$home/mnesia" \
        RABBITMQ_LOG_BASE="$home/log" \
        RABBITMQ_ENABLED_PLUGINS_FILE="$home/plugins" \
        RABBITMQ_CONFIG_FILE="$home/rabbitmq.conf" \
        rabbitmq-server -detached
}

await_node() {  # node: await_startup gives up at once on a node not registered yet, so ping first
    local node=$1
    for _ in $(seq 180); do
        if running "$node"; then
            ctl "$node" await_startup --timeout 120
            return 0
        fi
        sleep 0.5
    done
    echo "node $(node_name "$node") did not start: see $BASE/$node/log" >&2
    return 1
}

joined() { ctl "$SEED" cluster_status --formatter json | grep -q "\"$(node_name "$1")\""; }

start() {
    for node in "${NODES[@]}"; do launch "$node"; done
    for node in "${NODES[@]}"; do await_node "$node"; done
    for node in "${NODES[@]}"; do
        [[ $node == "$SEED" ]] && continue
        joined "$node" && continue
        quietly ctl "$node" stop_app
        quietly ctl "$node" reset
        quietly ctl "$node" join_cluster "$(node_name "$SEED")"
        quietly ctl "$node" start_app
    done
    # Quorum queues declared from now on get a replica on each of the three nodes.
    ctl "$SEED" await_online_nodes "${#NODES[@]}" --timeout 120
    echo "cluster up: $(urls)"
}

stop() {  # [node]
    local node
    for node in "${@:-${NODES[@]}}"; do
        if running "$node"; then ctl "$node" stop; fi
    done
}

status() {
    local node
    for node in "${NODES[@]}"; do
        if running "$node"; then
            echo "running: $(ctl "$node" cluster_status | sed -n '/Running Nodes/,/Versions/p' | grep -o '[a-z0-9-]*@localhost' | tr '\n' ' ')"
            ctl "$node" list_queues name type leader members online
            return 0
        fi
    done
    echo "no node of the cluster is running"
    return 1
}

urls() {
    local node list=()
    for node in "${NODES[@]}"; do list+=("amqp://guest:guest@127.0.0.1:$(amqp_port "$node")/"); done
    (IFS=,; echo "${list[*]}")
}

case ${1:-} in
    start) start ;;
    start-node) launch "${2:?which node}" && await_node "$2" ;;
    stop) shift; stop "$@" ;;
    status) status ;;
    urls) urls ;;
    clean) stop; rm -rf "$BASE" ;;
    *) sed -n '2,16p' "$0" >&2; exit 2 ;;
esac
