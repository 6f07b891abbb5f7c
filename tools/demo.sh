#!/usr/bin/env bash
# make demo: a real dtlsvpn tunnel between two network namespaces, as root.
#
#   [dvdemo-s-PID] 198.18.0.1/24 ══ veth ══ 198.18.0.2/24 [dvdemo-c-PID]
#    dtlsvpn server, dtv-demo 100.64.0.1/24        dtlsvpn client, dtv-demo 100.64.0.2/24
#
# 1. A CA, a server and a client certificate made with `dtlsvpn gencert` (ECDSA P-256).
# 2. Server and client configurations in the format of etc/dtlsvpn/*.conf.
# 3. Both daemons started with `dtlsvpn run`, each reporting READY=1 on a notify socket
#    this script owns (as systemd would see it).
# 4. ping across the tunnel, a 20 MB file copied through it with matching SHA-256, the
#    tunnel MTU found by path MTU discovery, and `dtlsvpn status` on both sides.
# 5. Everything is torn down on exit (trap): daemons stopped by PID, namespaces deleted.
# Exit status is non-zero unless every check passed. KEEP=1 keeps the work directory.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=$ROOT/.venv/bin/python
[[ -x $PY ]] || PY=python3
DTLSVPN=("$PY" -m dtlsvpn)
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
WORK=$(mktemp -d -t dtlsvpn-demo.XXXXXX)
NS_S=dvdemo-s-$$
NS_C=dvdemo-c-$$
PIDS=()
RESULTS=()
FAILED=0

cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    ip netns del "$NS_S" 2>/dev/null || true
    ip netns del "$NS_C" 2>/dev/null || true
    if [[ ${KEEP:-0} == 1 ]]; then echo "work directory kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

say() { printf '\n== %s\n' "$*"; }
record() { # PASS|FAIL TEXT
    RESULTS+=("$1  $2")
    [[ $1 == PASS ]] || FAILED=1
}
show() { sed 's/^/    /' "$@"; }

# poll CMD... until it succeeds or SECONDS pass (first argument).
poll() {
    local deadline=$((SECONDS + $1))
    shift
    until "$@" 2>/dev/null; do
        ((SECONDS < deadline)) || return 1
        sleep 0.1
    done
}

[[ $(id -u) == 0 ]] || { echo "demo: run as root (namespaces, TUN)" >&2; exit 1; }
for tool in ip timeout sha256sum; do
    command -v "$tool" >/dev/null || { echo "demo: $tool is missing; run 'make deps'" >&2; exit 1; }
done
if ! command -v ping >/dev/null; then
    echo "demo: installing iputils-ping"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends iputils-ping \
        >/dev/null 2>&1 || { apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive \
        apt-get install -y --no-install-recommends iputils-ping >/dev/null; } || true
fi
PING=(ping)
command -v ping >/dev/null || PING=("$PY" -m tests.netns.tools ping)

say "credentials: dtlsvpn gencert (ECDSA P-256) in $WORK/pki"
"${DTLSVPN[@]}" gencert ca --name "dtlsvpn demo CA" --out-dir "$WORK/pki" >/dev/null
"${DTLSVPN[@]}" gencert server --name demo-server --ip 198.18.0.1 --ca-dir "$WORK/pki" \
    --out-dir "$WORK/pki" >/dev/null
"${DTLSVPN[@]}" gencert client --name demo-client --ca-dir "$WORK/pki" --out-dir "$WORK/pki" \
    >/dev/null
ls -l "$WORK/pki" | sed 1d | awk '{print "    " $1 "  " $NF}'

cat >"$WORK/server.conf" <<EOF
# demo server (compare etc/dtlsvpn/site-server.conf)
[Interface]
Role = server
ListenAddress = 198.18.0.1:4433
Device = dtv-demo
Address = 100.64.0.1/24
MTU = auto
Certificate = pki/demo-server.crt
PrivateKey = pki/demo-server.key
CA = pki/ca.crt
StatusSocket = $WORK/server.sock
TicketStore = $WORK/server-state

[Peer]
Name = demo-client
CommonName = demo-client
AllowedIPs = 100.64.0.2/32
EOF
cat >"$WORK/client.conf" <<EOF
# demo client (compare etc/dtlsvpn/roaming-client.conf)
[Interface]
Role = client
Device = dtv-demo
Address = 100.64.0.2/24
MTU = auto
Certificate = pki/demo-client.crt
PrivateKey = pki/demo-client.key
CA = pki/ca.crt
StatusSocket = $WORK/client.sock
TicketStore = $WORK/client-state

[Peer]
Name = demo-server
Endpoint = 198.18.0.1:4433
AllowedIPs = 100.64.0.0/24
EOF
for side in server client; do
    "${DTLSVPN[@]}" check-config "$WORK/$side.conf" | sed 's/^/    /'
done

say "namespaces $NS_S and $NS_C joined by a veth pair"
ip netns add "$NS_S"
ip netns add "$NS_C"
ip link add dvdemo-s$$ netns "$NS_S" type veth peer name dvdemo-c$$ netns "$NS_C"
ip -n "$NS_S" addr add 198.18.0.1/24 dev dvdemo-s$$
ip -n "$NS_C" addr add 198.18.0.2/24 dev dvdemo-c$$
for ns in "$NS_S" "$NS_C"; do
    ip -n "$ns" link set lo up
done
ip -n "$NS_S" link set dvdemo-s$$ up
ip -n "$NS_C" link set dvdemo-c$$ up
echo "    $NS_S: 198.18.0.1/24   $NS_C: 198.18.0.2/24"

# start_daemon SIDE NS: run `dtlsvpn run` in NS and wait for READY=1 on our notify socket.
start_daemon() {
    local side=$1 ns=$2 notify=$WORK/$1.notify waiter
    local want=ready
    [[ $side == client ]] && want=connected
    "$PY" - "$notify" 20 "$want" >"$WORK/$side.ready" <<'EOF' &
import socket, sys, time
sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
sock.bind(sys.argv[1])
deadline = time.monotonic() + float(sys.argv[2])
want_connected, ready = sys.argv[3:] == ["connected"], False
while (left := deadline - time.monotonic()) > 0:
    sock.settimeout(left)
    try:
        lines = sock.recv(4096).decode().splitlines()
    except TimeoutError:
        break
    ready = ready or "READY=1" in lines
    # A client is READY once configured and dialling; the demo also waits for its STATUS=
    # to say the tunnel is up ("...; connected to NAME at ADDR").
    if ready and (not want_connected or any("; connected to " in x for x in lines)):
        print(" ".join(lines))
        sys.exit(0)
sys.exit(1)
EOF
    waiter=$!
    poll 10 test -S "$notify" || { echo "    notify socket missing"; return 1; }
    NOTIFY_SOCKET=$notify timeout 600 ip netns exec "$ns" "${DTLSVPN[@]}" run "$WORK/$side.conf" \
        >"$WORK/$side.log" 2>&1 &
    PIDS+=($!)
    if wait "$waiter"; then
        echo "    $side: $(cat "$WORK/$side.ready")"
    else
        echo "    $side: no READY=1"
        show "$WORK/$side.log"
        return 1
    fi
}

say "dtlsvpn run: server in $NS_S, client in $NS_C"
if start_daemon server "$NS_S" && start_daemon client "$NS_C"; then r=PASS; else r=FAIL; fi
record "$r" "both daemons READY=1, the client connected"
[[ $r == PASS ]] || { printf '  %s\n' "${RESULTS[@]}"; echo "demo: FAIL"; exit 1; }

say "ping 100.64.0.1 from the client, 100.64.0.2 from the server (through the tunnel)"
if ip netns exec "$NS_C" "${PING[@]}" -c 3 100.64.0.1 | show \
    && ip netns exec "$NS_S" "${PING[@]}" -c 3 100.64.0.2 | show; then r=PASS; else r=FAIL; fi
record "$r" "ping across the tunnel"

say "a 20 MB file copied client -> server over TCP through the tunnel"
head -c $((20 * 1024 * 1024)) /dev/urandom >"$WORK/blob"
want=$(sha256sum "$WORK/blob" | cut -d' ' -f1)
ip netns exec "$NS_S" timeout 60 "$PY" -m tests.netns.tools recv 100.64.0.1 5001 \
    >"$WORK/recv.out" 2>&1 &
recv_pid=$!
PIDS+=("$recv_pid")
poll 10 grep -q listening "$WORK/recv.out" || echo "    receiver did not start"
ip netns exec "$NS_C" timeout 60 "$PY" -m tests.netns.tools send 100.64.0.1 5001 "$WORK/blob" \
    || echo "    sender failed"
wait "$recv_pid" || true
got=$(sed -n 's/.*sha256=\([0-9a-f]*\).*/\1/p' "$WORK/recv.out")
echo "    sent     sha256 $want"
echo "    received sha256 ${got:-none}  ($(grep -o 'bytes=[0-9]*' "$WORK/recv.out" || true)," \
    "$(grep -o 'mbit_s=[0-9]*' "$WORK/recv.out" | sed 's/mbit_s=//') Mbit/s)"
if [[ -n $got && $got == "$want" ]]; then r=PASS; else r=FAIL; fi
record "$r" "20 MB copy with matching SHA-256"

say "tunnel MTU (path MTU discovery over a 1500-byte veth)"
mtu_settled() {
    "${DTLSVPN[@]}" status --json --socket "$WORK/client.sock" \
        | "$PY" -c 'import json,sys; sys.exit(json.load(sys.stdin)["tunnels"][0]["interface"]["mtu_policy"] != "pmtu")'
}
poll 15 mtu_settled || echo "    (no PMTU result yet; showing the current MTU)"
for ns in "$NS_S" "$NS_C"; do
    echo "    $ns: $(ip -n "$ns" -o link show dev dtv-demo | grep -o 'mtu [0-9]*')"
done
mtu=$(ip -n "$NS_C" -o link show dev dtv-demo | grep -o 'mtu [0-9]*' | cut -d' ' -f2)
if ip netns exec "$NS_C" "${PING[@]}" -c 1 -M do -s $((mtu - 28)) 100.64.0.1 | show; then
    r=PASS
else
    r=FAIL
fi
record "$r" "a full-size ($mtu bytes) inner packet with DF set crosses"

say "dtlsvpn status (client, then server)"
"${DTLSVPN[@]}" status --socket "$WORK/client.sock" | show
echo
"${DTLSVPN[@]}" status --socket "$WORK/server.sock" | show
# (read it whole: `| grep -q` under pipefail fails when grep stops reading early)
server_status=$("${DTLSVPN[@]}" status --json --socket "$WORK/server.sock" || true)
if [[ $server_status == *'"state": "established"'* ]]; then
    r=PASS
else
    r=FAIL
fi
record "$r" "status shows the peer established"

say "stopping the daemons (SIGTERM) and checking that nothing is left"
for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
PIDS=()
left=$(ip -n "$NS_S" -o link; ip -n "$NS_C" -o link; ip -n "$NS_S" route; ip -n "$NS_C" route)
if grep -q dtv-demo <<<"$left" || [[ -e $WORK/server.sock || -e $WORK/client.sock ]]; then
    r=FAIL
else
    r=PASS
fi
record "$r" "no interface, route or status socket left after SIGTERM"

say "summary"
printf '  %s\n' "${RESULTS[@]}"
if ((FAILED)); then
    echo "demo: FAIL"
    exit 1
fi
echo "demo: PASS"
