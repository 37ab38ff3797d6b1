#!/usr/bin/env bash
# Interop suite: real programs around viaduct, every one on a free loopback port.
#
#   curl / python requests -> viaduct -> squid (upstream) -> nginx (HTTPS and HTTP origin)
#
# Needs: curl, squid, nginx, openssl, python3 with requests (.ci/run installs them), and a
# built viaduct (VIADUCT=path, default target/debug/viaduct). Prints one line per check and a
# closing "N passed, N failed" line; exits non-zero when anything failed.
set -uo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
VIADUCT=${VIADUCT:-$root/target/debug/viaduct}
work=$(mktemp -d /tmp/viaduct-interop.XXXXXX)
chmod 755 "$work"
pids=()
passed=0
failed=0

cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null; done
    wait 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_port() {
    for _ in $(seq 1 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "nothing listens on port $1" >&2
    return 1
}

check() { # check NAME COMMAND...
    local name=$1; shift
    if out=$("$@" 2>&1); then
        echo "ok   $name"; passed=$((passed + 1))
    else
        echo "FAIL $name"; echo "$out" | sed 's/^/     /' | tail -30; failed=$((failed + 1))
    fi
}

# --- certificates: a private CA and a server certificate for localhost / 127.0.0.1 ---
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=viaduct interop CA" \
    -keyout "$work/ca.key" -out "$work/ca.pem" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
    -keyout "$work/server.key" -out "$work/server.csr" 2>/dev/null
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' > "$work/san.ext"
openssl x509 -req -in "$work/server.csr" -CA "$work/ca.pem" -CAkey "$work/ca.key" -CAcreateserial \
    -days 2 -extfile "$work/san.ext" -out "$work/server.pem" 2>/dev/null

# --- origin: nginx serving HTTPS and HTTP from one folder ---
mkdir -p "$work/www" "$work/nginx"
echo "hello from nginx" > "$work/www/hello.txt"
head -c $((64 << 20)) /dev/urandom > "$work/www/big.bin"
HTTPS_PORT=$(free_port); HTTP_PORT=$(free_port)
cat > "$work/nginx.conf" <<CONF
daemon off;
worker_processes 1;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log;
events { worker_connections 256; }
http {
    access_log off;
    client_body_temp_path $work/nginx/body;
    proxy_temp_path $work/nginx/proxy;
    fastcgi_temp_path $work/nginx/fastcgi;
    uwsgi_temp_path $work/nginx/uwsgi;
    scgi_temp_path $work/nginx/scgi;
    server {
        listen 127.0.0.1:$HTTPS_PORT ssl;
        listen 127.0.0.1:$HTTP_PORT;
        ssl_certificate $work/server.pem;
        ssl_certificate_key $work/server.key;
        root $work/www;
    }
}
CONF
nginx -c "$work/nginx.conf" -p "$work/nginx" &
pids+=($!)

# --- upstream: squid, allowing loopback clients to CONNECT to any port ---
SQUID_PORT=$(free_port)
mkdir -p "$work/squid"; chmod 777 "$work/squid"
cat > "$work/squid.conf" <<CONF
http_port 127.0.0.1:$SQUID_PORT
acl local src 127.0.0.1/32
http_access allow local
http_access deny all
cache deny all
pid_filename $work/squid/squid.pid
access_log stdio:$work/squid/access.log
cache_log $work/squid/cache.log
coredump_dir $work/squid
shutdown_lifetime 0 seconds
CONF
squid -N -f "$work/squid.conf" &
pids+=($!)

# --- viaduct: one direct, one chained through squid ---
DIRECT_PORT=$(free_port); CHAIN_PORT=$(free_port)
"$VIADUCT" --listen "127.0.0.1:$DIRECT_PORT" > "$work/direct.log" 2>&1 &
pids+=($!)
"$VIADUCT" --listen "127.0.0.1:$CHAIN_PORT" --upstream "http://127.0.0.1:$SQUID_PORT" > "$work/chain.log" 2>&1 &
pids+=($!)

for p in "$HTTPS_PORT" "$HTTP_PORT" "$SQUID_PORT" "$DIRECT_PORT" "$CHAIN_PORT"; do wait_port "$p" || exit 1; done

big_sha=$(sha256sum < "$work/www/big.bin")
curl_via() { curl -fsS --noproxy '' --cacert "$work/ca.pem" -x "http://127.0.0.1:$1" "${@:2}"; }

# The seed scenario: HTTPS through viaduct and an upstream, TLS handshake inside the tunnel.
check "curl https via viaduct -> squid -> nginx" \
    bash -c "[ \"\$(curl -fsS --noproxy '' --cacert $work/ca.pem -x http://127.0.0.1:$CHAIN_PORT https://localhost:$HTTPS_PORT/hello.txt)\" = 'hello from nginx' ]"
check "curl 64 MiB https via viaduct -> squid, byte-identical" \
    bash -c "[ \"\$(curl -fsS --noproxy '' --cacert $work/ca.pem -x http://127.0.0.1:$CHAIN_PORT https://localhost:$HTTPS_PORT/big.bin | sha256sum)\" = '$big_sha' ]"
check "curl http via viaduct -> squid -> nginx (absolute-form through squid)" \
    bash -c "curl -fsS --noproxy '' -x http://127.0.0.1:$CHAIN_PORT -D - http://127.0.0.1:$HTTP_PORT/hello.txt | tee /dev/stderr | grep -qi '^via:.*viaduct'"
check "squid saw the plain request and the CONNECT" \
    bash -c "grep -q 'GET http://127.0.0.1:$HTTP_PORT/hello.txt' $work/squid/access.log && grep -q 'CONNECT localhost:$HTTPS_PORT' $work/squid/access.log"
check "curl https direct through viaduct" \
    bash -c "[ \"\$(curl -fsS --noproxy '' --cacert $work/ca.pem -x http://127.0.0.1:$DIRECT_PORT https://127.0.0.1:$HTTPS_PORT/hello.txt)\" = 'hello from nginx' ]"
check "curl 64 MiB plain http direct, byte-identical" \
    bash -c "[ \"\$(curl -fsS --noproxy '' -x http://127.0.0.1:$DIRECT_PORT http://127.0.0.1:$HTTP_PORT/big.bin | sha256sum)\" = '$big_sha' ]"

CLOSED=$(free_port)
check "curl gets 502 + Proxy-Status for a refused target" \
    bash -c "out=\$(curl -sS --noproxy '' -x http://127.0.0.1:$DIRECT_PORT -D - -o /dev/null http://127.0.0.1:$CLOSED/ 2>&1); echo \"\$out\"; echo \"\$out\" | grep -q '^HTTP/1.1 502' && echo \"\$out\" | grep -qi '^proxy-status: viaduct; error=connection_refused'"
check "curl CONNECT to a refused target fails with 502, not a hang" \
    bash -c "out=\$(curl -sS -v --max-time 20 --noproxy '' -x http://127.0.0.1:$CHAIN_PORT https://127.0.0.1:$CLOSED/ 2>&1); echo \"\$out\" | tail -5; echo \"\$out\" | grep -q 'CONNECT tunnel failed, response 502'"

cat > "$work/requests_check.py" <<PY
import hashlib, sys, requests
proxies = {"http": "http://127.0.0.1:$CHAIN_PORT", "https": "http://127.0.0.1:$CHAIN_PORT"}
s = requests.Session()
s.trust_env = False
r = s.get("https://localhost:$HTTPS_PORT/hello.txt", proxies=proxies, verify="$work/ca.pem", timeout=30)
assert r.status_code == 200 and r.text == "hello from nginx\n", (r.status_code, r.text)
r = s.get("https://localhost:$HTTPS_PORT/big.bin", proxies=proxies, verify="$work/ca.pem", timeout=60)
assert hashlib.sha256(r.content).hexdigest() == "${big_sha%% *}", "big.bin differs"
r = s.get("http://127.0.0.1:$HTTP_PORT/hello.txt", proxies=proxies, timeout=30)
assert r.status_code == 200 and "viaduct" in r.headers.get("via", ""), r.headers
print("requests ok")
PY
check "python requests https + http via viaduct -> squid" python3 "$work/requests_check.py"

# Headless Chromium through viaduct -> squid. Chromium skips proxies for loopback unless told
# (<-loopback>), and trusts our server key by its SPKI pin rather than a system CA store.
if command -v chromium >/dev/null 2>&1; then
    spki=$(openssl x509 -in "$work/server.pem" -pubkey -noout | openssl pkey -pubin -outform der \
        | openssl dgst -sha256 -binary | base64)
    chromium_get() {
        timeout 60 chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
            --disable-background-networking --disable-component-update --disable-sync \
            --user-data-dir="$work/chromium-profile" --proxy-server="http://127.0.0.1:$CHAIN_PORT" \
            --proxy-bypass-list='<-loopback>' --ignore-certificate-errors-spki-list="$spki" \
            --dump-dom "$1" 2>/dev/null
    }
    check "chromium https via viaduct -> squid -> nginx" \
        bash -c "$(declare -f chromium_get); work=$work CHAIN_PORT=$CHAIN_PORT spki=$spki; chromium_get https://localhost:$HTTPS_PORT/hello.txt | grep -q 'hello from nginx'"
    check "chromium plain http via viaduct -> squid -> nginx" \
        bash -c "$(declare -f chromium_get); work=$work CHAIN_PORT=$CHAIN_PORT spki=$spki; chromium_get http://127.0.0.1:$HTTP_PORT/hello.txt | grep -q 'hello from nginx'"
    check "viaduct logged chromium's tunnel" grep -q "CONNECT.*localhost:$HTTPS_PORT" "$work/chain.log"
else
    echo "FAIL chromium is not installed (.ci/run installs it)"; failed=$((failed + 1))
fi

check "no credentials or panics in viaduct logs" \
    bash -c "! grep -Eqi 'panicked|authorization' $work/direct.log $work/chain.log"

echo "interop: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
