#!/usr/bin/env bash
# make demo: the project's DTLS 1.2 debug tools against OpenSSL 3, for real, on 127.0.0.1.
#
# 1. A throwaway PKI made with the openssl CLI (ECDSA P-256 CA, server and client).
# 2. `dtlsvpn dtls client` against `openssl s_server -dtls1_2`: two lines up, one line down.
# 3. `openssl s_client -dtls1_2` against `dtlsvpn dtls server --echo --once`.
# 4. The same with mutual authentication (--ca --require-client-cert / s_client -cert).
# Every process runs under `timeout` and is stopped by its PID; the exit status is non-zero
# unless every check passed. DTLSVPN=/path/to/dtlsvpn overrides the program under test,
# KEEP=1 keeps the work directory (PKI and logs).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DTLSVPN=${DTLSVPN:-$ROOT/.venv/bin/dtlsvpn}
PY=$ROOT/.venv/bin/python
[[ -x $PY ]] || PY=python3
WORK=$(mktemp -d -t dtlsvpn-demo.XXXXXX)
PIDS=()
RESULTS=()
FAILED=0

stop_pids() {
    local pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    PIDS=()
}

cleanup() {
    exec 3>&- 4>&-
    stop_pids
    if [[ ${KEEP:-0} == 1 ]]; then echo "work directory kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

say() { printf '\n== %s\n' "$*"; }

# free_port: a UDP port the OS had free on 127.0.0.1 a moment ago.
free_port() {
    "$PY" -c 'import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])'
}

# wait_for FILE TEXT SECONDS [PID]: poll until FILE contains TEXT; give up at the deadline
# or as soon as PID (the process that should write it) has gone.
wait_for() {
    local deadline=$((SECONDS + $3))
    until grep -qF -- "$2" "$1" 2>/dev/null; do
        ((SECONDS < deadline)) || return 1
        if [[ -n ${4:-} ]] && ! kill -0 "$4" 2>/dev/null; then
            grep -qF -- "$2" "$1" 2>/dev/null
            return
        fi
        sleep 0.1
    done
}

# wait_bound PORT SECONDS: poll until a UDP socket is bound to 127.0.0.1:PORT.
wait_bound() {
    local deadline=$((SECONDS + $2))
    until [[ -n $(ss -Hlun "sport = :$1" 2>/dev/null) ]]; do
        ((SECONDS < deadline)) || return 1
        sleep 0.1
    done
}

show() { # LABEL FILE: print a log indented
    echo "  [$1]"
    sed 's/^/    /' "$2" 2>/dev/null | tail -n 25
}

record() { # PASS|FAIL TEXT
    RESULTS+=("$1  $2")
    [[ $1 == PASS ]] || FAILED=1
}

make_pki() {
    cd "$WORK"
    cat >openssl.cnf <<'EOF'
[req]
distinguished_name = dn
prompt = no
x509_extensions = v3_ca
[dn]
O = dtlsvpn demo
CN = dtlsvpn demo CA
[v3_ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
EOF
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out ca.key
    openssl req -x509 -new -config openssl.cnf -key ca.key -sha256 -days 2 -out ca.pem
    leaf server server.test serverAuth "DNS:server.test,IP:127.0.0.1"
    leaf client client.test clientAuth "DNS:client.test"
    openssl verify -CAfile ca.pem server.pem client.pem | sed 's/^/  /'
    cd - >/dev/null
}

leaf() { # NAME CN EKU SAN
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1.key"
    openssl req -new -config openssl.cnf -key "$1.key" -subj "/O=dtlsvpn demo/CN=$2" \
        -out "$1.csr"
    cat >"$1.ext" <<EOF
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = $3
subjectAltName = $4
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
EOF
    openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -sha256 -days 2 \
        -set_serial "0x$(openssl rand -hex 8)" -extfile "$1.ext" -out "$1.pem" 2>/dev/null
}

# Our client -> openssl s_server. Both read stdin from FIFOs held open on fds 3 and 4,
# so the script decides when each side writes and when the client sees EOF.
check_client_vs_openssl() {
    local d=$WORK/c1 port rc server client
    mkdir "$d" && mkfifo "$d/server.in" "$d/client.in"
    port=$(free_port)
    say "dtlsvpn dtls client -> openssl s_server -dtls1_2 on 127.0.0.1:$port"
    timeout 30 openssl s_server -dtls1_2 -accept "127.0.0.1:$port" -naccept 1 \
        -cert "$WORK/server.pem" -key "$WORK/server.key" \
        <"$d/server.in" >"$d/server.out" 2>&1 &
    server=$!
    PIDS+=("$server")
    exec 3<>"$d/server.in"
    wait_bound "$port" 10 || { echo "  s_server did not bind"; return 1; }

    timeout 30 "$DTLSVPN" dtls client "127.0.0.1:$port" --ca "$WORK/ca.pem" --timeout 10 \
        <"$d/client.in" >"$d/client.out" 2>"$d/client.err" 3>&- &
    client=$!
    PIDS+=("$client")
    exec 4<>"$d/client.in"
    wait_for "$d/client.err" "handshake: DTLSv1.2" 15 "$client" \
        || echo "  no handshake line from our client"
    echo "hello from dtlsvpn (line 1)" >&4
    echo "hello from dtlsvpn (line 2)" >&4
    wait_for "$d/server.out" "hello from dtlsvpn (line 2)" 10 "$server" \
        || echo "  s_server did not get both lines"
    echo "hello from openssl s_server" >&3
    wait_for "$d/client.out" "hello from openssl s_server" 10 "$client" \
        || echo "  our client printed no reply"
    exec 4>&-  # EOF: our client sends close_notify and exits
    rc=0
    wait "$client" || rc=$?
    exec 3>&-

    show "dtlsvpn client stderr" "$d/client.err"
    show "dtlsvpn client stdout" "$d/client.out"
    echo "  [openssl s_server received]"
    grep -F "hello from dtlsvpn" "$d/server.out" | sed 's/^/    /' || true
    stop_pids
    [[ $rc == 0 ]] || { echo "  our client exited with $rc"; return 1; }
    grep -q "handshake: DTLSv1.2" "$d/client.err" \
        && grep -qF "hello from dtlsvpn (line 1)" "$d/server.out" \
        && grep -qF "hello from dtlsvpn (line 2)" "$d/server.out" \
        && grep -qF "hello from openssl s_server" "$d/client.out"
}

# openssl s_client -> our server --echo --once; MODE is "server-auth" or "mutual-auth".
check_openssl_vs_server() {
    local mode=$1 d=$WORK/$1 port rc_client rc_server server client
    local server_args=() client_args=()
    if [[ $mode == mutual-auth ]]; then
        server_args=(--ca "$WORK/ca.pem" --require-client-cert)
        client_args=(-cert "$WORK/client.pem" -key "$WORK/client.key")
    fi
    mkdir "$d" && mkfifo "$d/server.in" "$d/client.in"
    port=$(free_port)
    say "openssl s_client -dtls1_2 -> dtlsvpn dtls server --echo --once ($mode) on 127.0.0.1:$port"
    timeout 30 "$DTLSVPN" dtls server --listen "127.0.0.1:$port" \
        --cert "$WORK/server.pem" --key "$WORK/server.key" "${server_args[@]}" --echo --once \
        <"$d/server.in" >"$d/server.out" 2>"$d/server.err" &
    server=$!
    PIDS+=("$server")
    exec 3<>"$d/server.in"
    wait_bound "$port" 10 || echo "  our server did not bind"

    timeout 30 openssl s_client -dtls1_2 -connect "127.0.0.1:$port" -CAfile "$WORK/ca.pem" \
        -verify_return_error -verify_ip 127.0.0.1 "${client_args[@]}" \
        <"$d/client.in" >"$d/client.out" 2>&1 3>&- &
    client=$!
    PIDS+=("$client")
    exec 4<>"$d/client.in"
    wait_for "$d/client.out" "New, TLSv1.2" 15 "$client" || echo "  s_client: no handshake"
    echo "hello from openssl s_client" >&4
    wait_for "$d/client.out" "hello from openssl s_client" 10 "$client" \
        || echo "  s_client got no echo"
    exec 4>&-  # EOF: s_client sends close_notify and exits
    rc_client=0 rc_server=0
    wait "$client" || rc_client=$?
    wait "$server" || rc_server=$?  # --once: exits after that association closed
    exec 3>&-

    echo "  [openssl s_client]"
    grep -E "^New,|^ +(Protocol|Verify return code)|hello from" "$d/client.out" \
        | sed -E 's/^ */    /' || true
    show "dtlsvpn server stderr" "$d/server.err"
    show "dtlsvpn server stdout" "$d/server.out"
    stop_pids
    [[ $rc_server == 0 ]] || { echo "  our server exited with $rc_server"; return 1; }
    [[ $rc_client == 0 ]] || { echo "  s_client exited with $rc_client"; return 1; }
    grep -qF "New, TLSv1.2" "$d/client.out" \
        && grep -qF "Verify return code: 0 (ok)" "$d/client.out" \
        && grep -qF "hello from openssl s_client" "$d/client.out"
}

for tool in openssl timeout ss; do
    command -v "$tool" >/dev/null || { echo "demo: $tool is missing; run 'make deps'" >&2; exit 1; }
done
if [[ ! -x $DTLSVPN ]]; then
    echo "demo: $DTLSVPN not found; run 'make venv' first" >&2
    exit 1
fi

say "throwaway PKI (openssl, ECDSA P-256) in $WORK"
make_pki >"$WORK/pki.log" 2>&1 || { cat "$WORK/pki.log"; exit 1; }
grep -F ": OK" "$WORK/pki.log" || true

if check_client_vs_openssl; then r=PASS; else r=FAIL; fi
record "$r" "dtlsvpn dtls client -> openssl s_server"
if check_openssl_vs_server server-auth; then r=PASS; else r=FAIL; fi
record "$r" "openssl s_client -> dtlsvpn dtls server --echo --once"
if check_openssl_vs_server mutual-auth; then r=PASS; else r=FAIL; fi
record "$r" "openssl s_client -cert -> dtlsvpn dtls server --echo --once --require-client-cert"

say "summary"
printf '  %s\n' "${RESULTS[@]}"
if ((FAILED)); then
    echo "demo: FAIL"
    exit 1
fi
echo "demo: PASS"
