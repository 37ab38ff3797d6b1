#!/usr/bin/env bash
# Interop suite: real programs around viaduct, every one on a free loopback port.
#
#   curl / python requests / chromium -> viaduct -> squid -> nginx (HTTPS and HTTP origin)
#   curl / requests -> viaduct -> microsocks (user/pass)   -> nginx
#   curl            -> viaduct -> dante (danted)           -> nginx
#   curl            -> viaduct -> stunnel (TLS) -> squid   -> nginx   (--upstream-ca)
#   curl            -> viaduct -> microsocks -> squid      -> nginx / upload sink (64 MiB each way)
#   curl            -> viaduct -> squid with Basic auth (password with @ : / %)
#   curl / requests / chromium (puppeteer-core) authenticating to viaduct (--auth-file made by
#   htpasswd -B and openssl passwd -6), -> a header-recording origin, -> squid with its own auth
#   a viaduct bound to 0.0.0.0 refusing a name that resolves to 127.0.0.1
#   curl / requests -> viaduct -> squid with Negotiate (Kerberos, MIT KDC) and NTLM (corporate.sh)
#   a corporate PAC evaluated by viaduct and by pacparser, answers compared (pac.sh)
#
# Needs: curl, squid, nginx, microsocks, danted, stunnel4, openssl, htpasswd (apache2-utils),
# krb5-kdc, krb5-admin-server, krb5-user,
# python3 with requests, chromium, node + npm (puppeteer-core is installed into
# target/interop-node) (.ci/run installs them), and a
# built viaduct (VIADUCT=path, default target/debug/viaduct). Prints one line per check and a
# closing "N passed, N failed" line; exits non-zero when anything failed.
set -uo pipefail
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

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
    [ -n "${KEEP_WORK:-}" ] || rm -rf "$work"
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

eventually() { # eventually COMMAND...: for log lines written when a connection closes
    for _ in $(seq 1 50); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
    "$@"
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
HTTPS_PORT=$(free_port); HTTP_PORT=$(free_port); PEER_PORT=$(free_port)
cat > "$work/nginx.conf" <<CONF
daemon off;
worker_processes 1;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log;
events { worker_connections 256; }
http {
    access_log off;
    log_format peer '\$remote_addr';
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
    # Logs who connected: the source addresses viaduct binds.
    server {
        listen 127.0.0.1:$PEER_PORT;
        access_log $work/nginx/peers.log peer;
        root $work/www;
    }
}
CONF
nginx -c "$work/nginx.conf" -p "$work/nginx" &
pids+=($!)

# start_squid NAME PORT: a squid on PORT whose access rules (and auth) come on stdin; its
# state and logs under $work/NAME (access.log there is what checks read).
start_squid() {
    local name=$1 port=$2
    mkdir -p "$work/$name"; chmod 777 "$work/$name"
    {
        echo "http_port 127.0.0.1:$port"
        cat
        cat <<CONF
http_access deny all
cache deny all
pid_filename $work/$name/squid.pid
access_log stdio:$work/$name/access.log
cache_log $work/$name/cache.log
coredump_dir $work/$name
shutdown_lifetime 0 seconds
CONF
    } > "$work/$name.conf"
    squid -N -f "$work/$name.conf" &
    pids+=($!)
}

# --- upstream: squid, allowing loopback clients to CONNECT to any port ---
SQUID_PORT=$(free_port)
start_squid squid "$SQUID_PORT" <<CONF
acl local src 127.0.0.1/32
http_access allow local
CONF

# --- a second squid that wants Basic auth; the password has @ : / % in it ---
AUTH_SQUID_PORT=$(free_port)
AUTH_USER=ci-user
AUTH_PASS='p@ss:w/rd%1'
AUTH_PASS_ENC='p%40ss%3Aw%2Frd%251'
mkdir -p "$work/squid-auth"
printf '%s:%s\n' "$AUTH_USER" "$(openssl passwd -1 "$AUTH_PASS")" > "$work/squid-auth/passwd"
chmod 644 "$work/squid-auth/passwd"
start_squid squid-auth "$AUTH_SQUID_PORT" <<CONF
auth_param basic program /usr/lib/squid/basic_ncsa_auth $work/squid-auth/passwd
auth_param basic realm viaduct-interop
acl authed proxy_auth REQUIRED
http_access allow authed
CONF

# --- SOCKS5 upstreams: microsocks with user/pass, dante without auth ---
MS_PORT=$(free_port)
microsocks -i 127.0.0.1 -p "$MS_PORT" -u sockuser -P 'sock:pass' > "$work/microsocks.log" 2>&1 &
pids+=($!)
DANTE_PORT=$(free_port)
cat > "$work/danted.conf" <<CONF
logoutput: $work/danted.log
internal: 127.0.0.1 port = $DANTE_PORT
external: 127.0.0.1
clientmethod: none
socksmethod: none
user.privileged: root
user.unprivileged: nobody
client pass { from: 127.0.0.0/8 to: 0.0.0.0/0 }
socks pass {
    from: 127.0.0.0/8 to: 127.0.0.0/8
    command: connect
    log: connect
}
socks block { from: 0.0.0.0/0 to: 0.0.0.0/0 }
CONF
danted -f "$work/danted.conf" -p "$work/danted.pid" &
pids+=($!)

# --- stunnel: TLS in front of squid, with the server certificate of our private CA ---
STUNNEL_PORT=$(free_port)
cat > "$work/stunnel.conf" <<CONF
foreground = yes
pid =
output = $work/stunnel.log
[squid-tls]
accept = 127.0.0.1:$STUNNEL_PORT
connect = 127.0.0.1:$SQUID_PORT
cert = $work/server.pem
key = $work/server.key
CONF
stunnel4 "$work/stunnel.conf" > "$work/stunnel.out" 2>&1 &
pids+=($!)
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=some other CA" \
    -keyout "$work/other-ca.key" -out "$work/other-ca.pem" 2>/dev/null

# --- an HTTPS upload sink (python): answers a PUT with the SHA-256 of what it received ---
SINK_PORT=$(free_port)
cat > "$work/sink.py" <<PY
import hashlib, http.server, ssl
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_PUT(self):
        left, h = int(self.headers["Content-Length"]), hashlib.sha256()
        while left:
            chunk = self.rfile.read(min(left, 1 << 20)); left -= len(chunk); h.update(chunk)
        body = h.hexdigest().encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
s = http.server.ThreadingHTTPServer(("127.0.0.1", $SINK_PORT), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); ctx.load_cert_chain("$work/server.pem", "$work/server.key")
s.socket = ctx.wrap_socket(s.socket, server_side=True)
s.serve_forever()
PY
python3 "$work/sink.py" &
pids+=($!)

# --- a plain HTTP origin that answers with the request head it received ---
HEADERS_PORT=$(free_port)
cat > "$work/headers.py" <<PY
import http.server
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = str(self.headers).encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", $HEADERS_PORT), H).serve_forever()
PY
python3 "$work/headers.py" &
pids+=($!)

# --- viaduct's own users: one bcrypt line from htpasswd -B, one SHA-512-crypt from openssl ---
V_USER=alice
V_PASS='open sesame:1'
htpasswd -cbB "$work/users.htpasswd" "$V_USER" "$V_PASS" 2>/dev/null
printf 'bob:%s\n' "$(openssl passwd -6 'b0b-pw')" >> "$work/users.htpasswd"

# --- viaduct instances, one per upstream setup ---
start_viaduct() { # start_viaduct NAME ARGS...
    local name=$1; shift
    local port; port=$(free_port)
    "$VIADUCT" --listen "127.0.0.1:$port" "$@" > "$work/$name.log" 2>&1 &
    pids+=($!)
    eval "V_${name^^}=$port"
}
start_viaduct direct
# Source addresses from a prefix (all of 127.0.0.0/8 is local), sticky per session.
start_viaduct bound --bind 127.0.0.0/24
start_viaduct chain --upstream "http://127.0.0.1:$SQUID_PORT"
start_viaduct socks --upstream "socks5h://sockuser:sock%3Apass@127.0.0.1:$MS_PORT"
start_viaduct dante --upstream "socks5://127.0.0.1:$DANTE_PORT"
start_viaduct tls --upstream "https://127.0.0.1:$STUNNEL_PORT" --upstream-ca "$work/ca.pem"
start_viaduct badca --upstream "https://127.0.0.1:$STUNNEL_PORT" --upstream-ca "$work/other-ca.pem"
start_viaduct twohop --upstream "socks5h://sockuser:sock%3Apass@127.0.0.1:$MS_PORT,http://127.0.0.1:$SQUID_PORT"
start_viaduct auth --upstream "http://$AUTH_USER:$AUTH_PASS_ENC@127.0.0.1:$AUTH_SQUID_PORT"
start_viaduct badauth --upstream "http://$AUTH_USER:wrong@127.0.0.1:$AUTH_SQUID_PORT"
start_viaduct authed --auth-file "$work/users.htpasswd"
start_viaduct authsquid --auth-file "$work/users.htpasswd" \
    --upstream "http://$AUTH_USER:$AUTH_PASS_ENC@127.0.0.1:$AUTH_SQUID_PORT"
# Observability: a pool of squid and microsocks, the admin listener, JSON access records.
V_OBS=$(free_port); ADMIN_PORT=$(free_port)
cat > "$work/obs.toml" <<CONF
listen = ["127.0.0.1:$V_OBS"]
admin = "127.0.0.1:$ADMIN_PORT"
access_log = "json"
access_log_file = "$work/obs-access.json"
bypass = "*.bypassed.test"
[upstreams]
squid = "http://127.0.0.1:$SQUID_PORT"
microsocks = "socks5h://sockuser:sock%3Apass@127.0.0.1:$MS_PORT"
[pools.mixed]
members = ["squid", "microsocks"]
strategy = "round-robin"
[[rules]]
match = { domains = ["*.internal.test"] }
via = "direct"
[default]
via = "mixed"
CONF
"$VIADUCT" --config "$work/obs.toml" > "$work/obs.log" 2>&1 &
pids+=($!)
# Behind haproxy (send-proxy-v2): two viaducts with the same sticky pool, each trusting the
# PROXY header from loopback; clients come from 127.0.0.2/127.0.0.3, haproxy from 127.0.0.1.
cat > "$work/lb.toml" <<CONF
proxy_protocol = true
proxy_protocol_from = ["127.0.0.1/32"]
access_log = "json"
[limits]
max_connections_per_ip = 2
[upstreams]
squid = "http://127.0.0.1:$SQUID_PORT"
microsocks = "socks5h://sockuser:sock%3Apass@127.0.0.1:$MS_PORT"
[pools.sticky]
members = ["squid", "microsocks"]
strategy = "sticky"
[default]
via = "sticky"
CONF
V_LB1=$(free_port); V_LB2=$(free_port); LB_PORT=$(free_port)
"$VIADUCT" --config "$work/lb.toml" --listen "127.0.0.1:$V_LB1" --access-log-file "$work/lb1.json" > "$work/lb1.log" 2>&1 &
pids+=($!)
"$VIADUCT" --config "$work/lb.toml" --listen "127.0.0.1:$V_LB2" --access-log-file "$work/lb2.json" > "$work/lb2.log" 2>&1 &
pids+=($!)
cat > "$work/haproxy.cfg" <<CONF
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend proxies
    bind 127.0.0.1:$LB_PORT
    default_backend viaducts
backend viaducts
    balance roundrobin
    server v1 127.0.0.1:$V_LB1 send-proxy-v2 source 127.0.0.1
    server v2 127.0.0.1:$V_LB2 send-proxy-v2 source 127.0.0.1
CONF
haproxy -db -f "$work/haproxy.cfg" > "$work/haproxy.log" 2>&1 &
pids+=($!)
# An HTTPS proxy: TLS between the client and viaduct (HTTP/1.1 inside), chained to squid.
V_TLSL=$(free_port)
"$VIADUCT" --listen "https://127.0.0.1:$V_TLSL" --tls-cert "$work/server.pem" --tls-key "$work/server.key" \
    --upstream "http://127.0.0.1:$SQUID_PORT" > "$work/tlsl.log" 2>&1 &
pids+=($!)
# Bound to every address: internal destinations are denied by default.
V_WIDE=$(free_port)
"$VIADUCT" --listen "0.0.0.0:$V_WIDE" --auth-file "$work/users.htpasswd" > "$work/wide.log" 2>&1 &
pids+=($!)

for p in "$HTTPS_PORT" "$HTTP_PORT" "$SQUID_PORT" "$AUTH_SQUID_PORT" "$MS_PORT" "$DANTE_PORT" \
    "$STUNNEL_PORT" "$SINK_PORT" "$V_DIRECT" "$V_CHAIN" "$V_SOCKS" "$DANTE_PORT" "$V_TLS" \
    "$V_BADCA" "$V_TWOHOP" "$V_AUTH" "$V_BADAUTH" "$HEADERS_PORT" "$V_AUTHED" "$V_AUTHSQUID" \
    "$V_WIDE" "$V_OBS" "$ADMIN_PORT" "$V_LB1" "$V_LB2" "$LB_PORT" "$V_TLSL" "$PEER_PORT" "$V_BOUND"; do
    wait_port "$p" || exit 1
done

big_sha=$(sha256sum < "$work/www/big.bin")
curl_via() { curl -fsS --noproxy '' --cacert "$work/ca.pem" -x "http://127.0.0.1:$1" "${@:2}"; }

# The seed scenario: HTTPS through viaduct and an upstream, TLS handshake inside the tunnel.
check "curl https via viaduct -> squid -> nginx" \
    bash -c "[ \"\$(curl -fsS --noproxy '' --cacert $work/ca.pem -x http://127.0.0.1:$V_CHAIN https://localhost:$HTTPS_PORT/hello.txt)\" = 'hello from nginx' ]"
check "curl 64 MiB https via viaduct -> squid, byte-identical" \
    bash -c "[ \"\$(curl -fsS --noproxy '' --cacert $work/ca.pem -x http://127.0.0.1:$V_CHAIN https://localhost:$HTTPS_PORT/big.bin | sha256sum)\" = '$big_sha' ]"
check "curl http via viaduct -> squid -> nginx (absolute-form through squid)" \
    bash -c "curl -fsS --noproxy '' -x http://127.0.0.1:$V_CHAIN -D - http://127.0.0.1:$HTTP_PORT/hello.txt | tee /dev/stderr | grep -qi '^via:.*viaduct'"
check "squid saw the plain request and the CONNECT" eventually \
    bash -c "grep -q 'GET http://127.0.0.1:$HTTP_PORT/hello.txt' $work/squid/access.log && grep -q 'CONNECT localhost:$HTTPS_PORT' $work/squid/access.log"
check "curl https direct through viaduct" \
    bash -c "[ \"\$(curl -fsS --noproxy '' --cacert $work/ca.pem -x http://127.0.0.1:$V_DIRECT https://127.0.0.1:$HTTPS_PORT/hello.txt)\" = 'hello from nginx' ]"
check "curl 64 MiB plain http direct, byte-identical" \
    bash -c "[ \"\$(curl -fsS --noproxy '' -x http://127.0.0.1:$V_DIRECT http://127.0.0.1:$HTTP_PORT/big.bin | sha256sum)\" = '$big_sha' ]"

CLOSED=$(free_port)
check "curl gets 502 + Proxy-Status for a refused target" \
    bash -c "out=\$(curl -sS --noproxy '' -x http://127.0.0.1:$V_DIRECT -D - -o /dev/null http://127.0.0.1:$CLOSED/ 2>&1); echo \"\$out\"; echo \"\$out\" | grep -q '^HTTP/1.1 502' && echo \"\$out\" | grep -qi '^proxy-status: viaduct; error=connection_refused'"
check "curl CONNECT to a refused target fails with 502, not a hang" \
    bash -c "out=\$(curl -sS -v --max-time 20 --noproxy '' -x http://127.0.0.1:$V_CHAIN https://127.0.0.1:$CLOSED/ 2>&1); echo \"\$out\" | tail -5; echo \"\$out\" | grep -q 'CONNECT tunnel failed, response 502'"

hello_via() { # hello_via PORT URL: the body fetched through viaduct on PORT is nginx's hello
    [ "$(curl -fsS --noproxy '' --cacert "$work/ca.pem" -x "http://127.0.0.1:$1" "$2")" = 'hello from nginx' ]
}
status_via() { # status_via PORT URL ERROR_TYPE: a CONNECT through viaduct fails with 502 + that type
    out=$(curl -sS -v --max-time 20 --noproxy '' --cacert "$work/ca.pem" -x "http://127.0.0.1:$1" "$2" 2>&1)
    echo "$out" | grep -E '^< (HTTP|proxy-status)' || true
    echo "$out" | grep -q '^< HTTP/1.1 502' && echo "$out" | grep -qi "^< proxy-status: viaduct; error=$3"
}
export -f hello_via status_via
export work

check "curl https via viaduct -> microsocks (user/pass, socks5h) -> nginx" hello_via "$V_SOCKS" "https://localhost:$HTTPS_PORT/hello.txt"
check "curl http via viaduct -> microsocks (origin-form in a tunnel)" hello_via "$V_SOCKS" "http://127.0.0.1:$HTTP_PORT/hello.txt"
check "curl https via viaduct -> dante (socks5) -> nginx" hello_via "$V_DANTE" "https://127.0.0.1:$HTTPS_PORT/hello.txt"
check "dante logged the connection" eventually grep -q "pass.*127.0.0.1.$HTTPS_PORT" "$work/danted.log"
check "curl https via viaduct -> stunnel (TLS, --upstream-ca) -> squid -> nginx" hello_via "$V_TLS" "https://localhost:$HTTPS_PORT/hello.txt"
check "curl http via viaduct -> stunnel -> squid (absolute-form inside TLS)" hello_via "$V_TLS" "http://127.0.0.1:$HTTP_PORT/hello.txt"
check "wrong CA for the TLS upstream: 502 tls_certificate_error" status_via "$V_BADCA" "https://localhost:$HTTPS_PORT/hello.txt" tls_certificate_error
check "curl https via viaduct -> squid with Basic auth (password with @ : / %)" hello_via "$V_AUTH" "https://localhost:$HTTPS_PORT/hello.txt"
check "curl http via viaduct -> squid with Basic auth" hello_via "$V_AUTH" "http://127.0.0.1:$HTTP_PORT/hello.txt"
check "wrong password at squid: 502 http_request_denied, received-status=407" \
    bash -c "status_via $V_BADAUTH https://localhost:$HTTPS_PORT/hello.txt 'http_request_denied; received-status=407'"
check "two hops: viaduct -> microsocks -> squid -> nginx, 64 MiB down byte-identical" \
    bash -c "[ \"\$(curl -fsS --noproxy '' --cacert $work/ca.pem -x http://127.0.0.1:$V_TWOHOP https://localhost:$HTTPS_PORT/big.bin | sha256sum)\" = '$big_sha' ]"
check "two hops: 64 MiB up byte-identical" \
    bash -c "[ \"\$(curl -fsS --noproxy '' --cacert $work/ca.pem -x http://127.0.0.1:$V_TWOHOP -T $work/www/big.bin https://localhost:$SINK_PORT/up)\" = '${big_sha%% *}' ]"
check "squid behind microsocks saw the CONNECT" eventually grep -q "CONNECT localhost:$SINK_PORT" "$work/squid/access.log"

cat > "$work/requests_check.py" <<PY
import hashlib, sys, requests
proxies = {"http": "http://127.0.0.1:$V_CHAIN", "https": "http://127.0.0.1:$V_CHAIN"}
s = requests.Session()
s.trust_env = False
r = s.get("https://localhost:$HTTPS_PORT/hello.txt", proxies=proxies, verify="$work/ca.pem", timeout=30)
assert r.status_code == 200 and r.text == "hello from nginx\n", (r.status_code, r.text)
r = s.get("https://localhost:$HTTPS_PORT/big.bin", proxies=proxies, verify="$work/ca.pem", timeout=60)
assert hashlib.sha256(r.content).hexdigest() == "${big_sha%% *}", "big.bin differs"
r = s.get("http://127.0.0.1:$HTTP_PORT/hello.txt", proxies=proxies, timeout=30)
assert r.status_code == 200 and "viaduct" in r.headers.get("via", ""), r.headers
socks = {"http": "http://127.0.0.1:$V_SOCKS", "https": "http://127.0.0.1:$V_SOCKS"}
r = s.get("https://localhost:$HTTPS_PORT/hello.txt", proxies=socks, verify="$work/ca.pem", timeout=30)
assert r.status_code == 200 and r.text == "hello from nginx\n", (r.status_code, r.text)
print("requests ok")
PY
check "python requests via viaduct -> squid, and -> microsocks" python3 "$work/requests_check.py"

# --- viaduct's own authentication ---
code_via() { # code_via PORT PROXY_USER URL: the status curl sees (CONNECT's or the response's)
    local user_args=()
    [ -n "$2" ] && user_args=(--proxy-user "$2")
    curl -sS --noproxy '' --cacert "$work/ca.pem" -x "http://127.0.0.1:$1" "${user_args[@]}" \
        -o /dev/null -w '%{http_connect} %{http_code}\n' "$3" 2>/dev/null
}
export -f code_via
export V_USER V_PASS
check "curl --proxy-user (htpasswd -B): https tunnel" \
    bash -c "[ \"\$(curl -fsS --noproxy '' --cacert $work/ca.pem -x http://127.0.0.1:$V_AUTHED --proxy-user \"\$V_USER:\$V_PASS\" https://localhost:$HTTPS_PORT/hello.txt)\" = 'hello from nginx' ]"
check "curl --proxy-user (openssl passwd -6): plain http" \
    bash -c "[ \"\$(curl -fsS --noproxy '' -x http://127.0.0.1:$V_AUTHED --proxy-user bob:b0b-pw http://127.0.0.1:$HTTP_PORT/hello.txt)\" = 'hello from nginx' ]"
check "curl: wrong password 407 (tunnel and plain), missing 407 with a Basic challenge" \
    bash -c "set -e; [ \"\$(code_via $V_AUTHED 'alice:nope' https://localhost:$HTTPS_PORT/hello.txt)\" = '407 000' ]
             [ \"\$(code_via $V_AUTHED 'alice:nope' http://127.0.0.1:$HTTP_PORT/hello.txt)\" = '000 407' ]
             [ \"\$(code_via $V_AUTHED '' https://localhost:$HTTPS_PORT/hello.txt)\" = '407 000' ]
             curl -sS --noproxy '' -x http://127.0.0.1:$V_AUTHED -D - -o /dev/null http://127.0.0.1:$HTTP_PORT/ \
               | grep -qi '^proxy-authenticate: Basic realm=\"viaduct\"'"
check "the origin never sees Proxy-Authorization" \
    bash -c "out=\$(curl -fsS --noproxy '' -x http://127.0.0.1:$V_AUTHED --proxy-user bob:b0b-pw -H 'X-Probe: 1' http://127.0.0.1:$HEADERS_PORT/); echo \"\$out\"; echo \"\$out\" | grep -qi '^x-probe: 1' && ! echo \"\$out\" | grep -qi 'proxy-authorization'"
check "client authenticates to viaduct, viaduct to squid with its own credentials" \
    bash -c "[ \"\$(curl -fsS --noproxy '' --cacert $work/ca.pem -x http://127.0.0.1:$V_AUTHSQUID --proxy-user bob:b0b-pw https://localhost:$HTTPS_PORT/hello.txt)\" = 'hello from nginx' ] && [ \"\$(curl -fsS --noproxy '' -x http://127.0.0.1:$V_AUTHSQUID --proxy-user bob:b0b-pw http://127.0.0.1:$HTTP_PORT/hello.txt)\" = 'hello from nginx' ]"
cat > "$work/requests_auth.py" <<PY
import sys, urllib.parse, requests
user = urllib.parse.quote("$V_USER", safe=""); pw = urllib.parse.quote("$V_PASS", safe="")
right = "http://%s:%s@127.0.0.1:$V_AUTHED" % (user, pw)
s = requests.Session()
s.trust_env = False
r = s.get("https://localhost:$HTTPS_PORT/hello.txt", proxies={"https": right}, verify="$work/ca.pem", timeout=30)
assert r.status_code == 200 and r.text == "hello from nginx\n", (r.status_code, r.text)
r = s.get("http://127.0.0.1:$HTTP_PORT/hello.txt", proxies={"http": right}, timeout=30)
assert r.status_code == 200, r.status_code
wrong = "http://%s:nope@127.0.0.1:$V_AUTHED" % user
r = s.get("http://127.0.0.1:$HTTP_PORT/hello.txt", proxies={"http": wrong}, timeout=30)
assert r.status_code == 407 and "proxy-status" in r.headers, (r.status_code, r.headers)
try:
    s.get("https://localhost:$HTTPS_PORT/hello.txt", proxies={"https": wrong}, verify="$work/ca.pem", timeout=30)
    sys.exit("a tunnel with a wrong password was opened")
except requests.exceptions.ProxyError as e:
    assert "407" in str(e), e
print("requests auth ok")
PY
check "python requests with user:pass@ in the proxy URL (right and wrong)" python3 "$work/requests_auth.py"
check "bound to 0.0.0.0: a name resolving to 127.0.0.1 is refused (403 destination_ip_prohibited)" \
    bash -c "out=\$(curl -sS --noproxy '' -x http://127.0.0.1:$V_WIDE --proxy-user bob:b0b-pw -D - -o /dev/null http://localhost:$HTTP_PORT/hello.txt); echo \"\$out\"; echo \"\$out\" | grep -q '^HTTP/1.1 403' && echo \"\$out\" | grep -qi '^proxy-status: viaduct; error=destination_ip_prohibited'
             [ \"\$(code_via $V_WIDE bob:b0b-pw https://localhost:$HTTPS_PORT/hello.txt)\" = '403 000' ]"

# --- SOCKS on the same port as HTTP ---
check "curl --socks5-hostname to viaduct's port -> nginx (https)" \
    bash -c "[ \"\$(curl -fsS --noproxy '' --cacert $work/ca.pem --socks5-hostname 127.0.0.1:$V_DIRECT https://localhost:$HTTPS_PORT/hello.txt)\" = 'hello from nginx' ]"
check "curl --socks4a and --socks5 (local DNS) -> nginx" \
    bash -c "[ \"\$(curl -fsS --noproxy '' --socks4a 127.0.0.1:$V_DIRECT http://localhost:$HTTP_PORT/hello.txt)\" = 'hello from nginx' ] && [ \"\$(curl -fsS --noproxy '' --socks5 127.0.0.1:$V_DIRECT http://127.0.0.1:$HTTP_PORT/hello.txt)\" = 'hello from nginx' ]"
check "curl --socks5 with --proxy-user against --auth-file (right, wrong)" \
    bash -c "[ \"\$(curl -fsS --noproxy '' --socks5-hostname 127.0.0.1:$V_AUTHED --proxy-user bob:b0b-pw http://127.0.0.1:$HTTP_PORT/hello.txt)\" = 'hello from nginx' ] && ! curl -fsS --noproxy '' --socks5-hostname 127.0.0.1:$V_AUTHED --proxy-user bob:wrong http://127.0.0.1:$HTTP_PORT/hello.txt"
check "a SOCKS client through viaduct chained to squid (squid logs the CONNECT)" \
    bash -c "[ \"\$(curl -fsS --noproxy '' --cacert $work/ca.pem --socks5-hostname 127.0.0.1:$V_CHAIN https://localhost:$HTTPS_PORT/hello.txt?via=socks)\" = 'hello from nginx' ] && for _ in \$(seq 1 50); do grep -q 'CONNECT localhost:$HTTPS_PORT' $work/squid/access.log && exit 0; sleep 0.1; done; exit 1"
cat > "$work/requests_socks.py" <<PY
import requests
s = requests.Session()
s.trust_env = False
p = {"http": "socks5h://bob:b0b-pw@127.0.0.1:$V_AUTHED", "https": "socks5h://bob:b0b-pw@127.0.0.1:$V_AUTHED"}
r = s.get("https://localhost:$HTTPS_PORT/hello.txt", proxies=p, verify="$work/ca.pem", timeout=30)
assert r.status_code == 200 and r.text == "hello from nginx\n", (r.status_code, r.text)
print("requests socks5h ok")
PY
check "python requests with socks5h://user:pass@ (PySocks)" python3 "$work/requests_socks.py"
cat > "$work/udp_check.py" <<PY
# PySocks UDP ASSOCIATE through viaduct's port to a UDP echo server.
import socket, threading, socks
echo = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); echo.bind(("127.0.0.1", 0))
def serve():
    while True:
        data, peer = echo.recvfrom(2048); echo.sendto(data, peer)
threading.Thread(target=serve, daemon=True).start()
s = socks.socksocket(socket.AF_INET, socket.SOCK_DGRAM)
s.set_proxy(socks.SOCKS5, "127.0.0.1", $V_DIRECT)
s.settimeout(10)
s.sendto(b"datagram through viaduct", echo.getsockname())
data, _ = s.recvfrom(2048)
assert data == b"datagram through viaduct", data
print("udp ok")
PY
check "PySocks UDP ASSOCIATE through viaduct to a UDP echo server" python3 "$work/udp_check.py"

# --- HTTPS proxy ---
check "curl --proxy https://localhost (--proxy-cacert) -> squid -> nginx, https and http" \
    bash -c "[ \"\$(curl -fsS --noproxy '' --proxy https://localhost:$V_TLSL --proxy-cacert $work/ca.pem --cacert $work/ca.pem https://localhost:$HTTPS_PORT/hello.txt)\" = 'hello from nginx' ] && [ \"\$(curl -fsS --noproxy '' --proxy https://localhost:$V_TLSL --proxy-cacert $work/ca.pem http://127.0.0.1:$HTTP_PORT/hello.txt)\" = 'hello from nginx' ]"
check "curl --proxy https:// without trusting viaduct's certificate fails (no silent plaintext)" \
    bash -c "! curl -sS --noproxy '' --proxy https://localhost:$V_TLSL http://127.0.0.1:$HTTP_PORT/hello.txt"

# --- behind haproxy ---
check "haproxy -> viaduct x2 (PROXY v2): logs name the real client, one session sticks to one member" \
    bash -c "for i in 1 2 3 4; do curl -fsS -o /dev/null --noproxy '' --interface 127.0.0.2 --cacert $work/ca.pem \
               -x http://127.0.0.1:$LB_PORT --proxy-user team-session-42:x https://localhost:$HTTPS_PORT/hello.txt || exit 1; done
             for _ in \$(seq 1 50); do [ \$(cat $work/lb1.json $work/lb2.json 2>/dev/null | wc -l) -ge 4 ] && break; sleep 0.1; done
             cat $work/lb1.json $work/lb2.json
             [ -s $work/lb1.json ] && [ -s $work/lb2.json ] || { echo 'both instances should have carried requests'; exit 1; }
             ! grep -v '\"client\":\"127.0.0.2:' $work/lb1.json $work/lb2.json | grep -q .
             [ \$(cat $work/lb1.json $work/lb2.json | grep -o '\"member\":\"[a-z]*\"' | sort -u | wc -l) -eq 1 ]"
cat > "$work/per_ip.py" <<PY
# Per-IP limits apply to the client the PROXY header names: 127.0.0.2 holds a tunnel on each
# instance (limit 2 per IP, per instance), more from it are refused somewhere, 127.0.0.3 is not.
import socket, sys
def tunnel(src):
    s = socket.create_connection(("127.0.0.1", $LB_PORT), source_address=(src, 0), timeout=10)
    s.sendall(b"CONNECT 127.0.0.1:$HTTP_PORT HTTP/1.1\r\nHost: x\r\n\r\n")
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(1)
        if not chunk:
            break
        head += chunk
    return s, int(head.split(b" ")[1]) if head else 0
held = [tunnel("127.0.0.2") for _ in range(4)]
codes = [c for _, c in held]
assert codes == [200, 200, 200, 200], codes
extra = [tunnel("127.0.0.2")[1] for _ in range(2)]
assert 503 in extra, extra
other = tunnel("127.0.0.3")[1]
assert other == 200, other
print("per-ip ok", codes, extra, other)
PY
check "per-IP limits count the client named by the PROXY header, not haproxy" python3 "$work/per_ip.py"

# --- observability ---
for _ in 1 2 3 4 5; do curl -fsS -o /dev/null --noproxy '' -x "http://127.0.0.1:$V_OBS" "http://127.0.0.1:$HTTP_PORT/hello.txt"; done
for _ in 1 2 3; do curl -fsS -o /dev/null --noproxy '' --cacert "$work/ca.pem" -x "http://127.0.0.1:$V_OBS" "https://localhost:$HTTPS_PORT/hello.txt"; done
check "promtool check metrics passes on /metrics" \
    bash -c "curl -fsS http://127.0.0.1:$ADMIN_PORT/metrics | promtool check metrics"
PROM_PORT=$(free_port)
cat > "$work/prometheus.yml" <<CONF
global: { scrape_interval: 1s }
scrape_configs:
  - job_name: viaduct
    static_configs: [ { targets: ["127.0.0.1:$ADMIN_PORT"] } ]
CONF
prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/prom-data" \
    --web.listen-address="127.0.0.1:$PROM_PORT" > "$work/prometheus.out" 2>&1 &
pids+=($!)
prom_count() { # the plain-HTTP 2xx count Prometheus scraped from viaduct
    curl -fsS "http://127.0.0.1:$PROM_PORT/api/v1/query" \
        --data-urlencode 'query=sum(viaduct_requests_total{protocol="http",class="2xx"})' \
        | python3 -c 'import json,sys; r=json.load(sys.stdin)["data"]["result"]; print(int(float(r[0]["value"][1])) if r else -1)'
}
export -f prom_count
export PROM_PORT
check "prometheus scrapes viaduct: its query API returns the 5 requests curl made" \
    bash -c 'for _ in $(seq 1 60); do [ "$(prom_count 2>/dev/null)" = 5 ] && exit 0; sleep 0.5; done; echo "prometheus says: $(prom_count)"; exit 1'
check "JSON access log: one record per request, route and member named" \
    eventually bash -c "[ \$(wc -l < $work/obs-access.json) -ge 8 ] && grep -q '\"route\":\"mixed\"' $work/obs-access.json && grep -q '\"member\":\"microsocks\"' $work/obs-access.json"
cat > "$work/pac_check.js" <<'JS'
// Evaluates viaduct's /proxy.pac with the standard PAC helpers, as a browser would.
const vm = require('vm');
const [pac, bypassed, direct, proxied, expect] = process.argv.slice(2);
const ip2n = (ip) => ip.split('.').reduce((a, b) => a * 256 + Number(b), 0);
const ctx = {
  dnsDomainIs: (h, d) => h.length >= d.length && h.substring(h.length - d.length) === d,
  shExpMatch: (s, p) => new RegExp('^' + p.replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*').replace(/\?/g, '.') + '$').test(s),
  isInNet: (h, net, mask) => /^\d+\.\d+\.\d+\.\d+$/.test(h) && ((ip2n(h) & ip2n(mask)) >>> 0) === ((ip2n(net) & ip2n(mask)) >>> 0),
  isPlainHostName: (h) => h.indexOf('.') < 0,
  dnsResolve: () => null, myIpAddress: () => '127.0.0.1',
};
vm.createContext(ctx);
vm.runInContext(pac, ctx);
const ask = (url) => ctx.FindProxyForURL(url, new URL(url).hostname);
const got = [ask(bypassed), ask(direct), ask(proxied)];
const want = ['DIRECT', 'DIRECT', expect];
if (JSON.stringify(got) !== JSON.stringify(want)) { console.error('got', got, 'want', want); process.exit(1); }
console.log('pac ok', got);
JS
check "node evaluates /proxy.pac: bypassed and direct-rule URLs DIRECT, others to the proxy" \
    bash -c "node $work/pac_check.js \"\$(curl -fsS http://127.0.0.1:$ADMIN_PORT/proxy.pac)\" http://www.bypassed.test/ https://db.internal.test/ https://www.example.com/ 'PROXY 127.0.0.1:$V_OBS'"
check "/readyz and /status.json see both pool members healthy" \
    bash -c "curl -fsS http://127.0.0.1:$ADMIN_PORT/readyz && curl -fsS http://127.0.0.1:$ADMIN_PORT/status.json | python3 -c 'import json,sys; s=json.load(sys.stdin); m=s[\"pools\"][0][\"members\"]; assert [x[\"name\"] for x in m]==[\"squid\",\"microsocks\"] and all(x[\"up\"] for x in m), m'"
CLOSED2=$(free_port)
check "viaduct probe: a two-hop chain whose second hop refuses names hop 1's answer" \
    bash -c "out=\$($VIADUCT probe https://localhost:$HTTPS_PORT/hello.txt --upstream http://127.0.0.1:$SQUID_PORT,http://127.0.0.1:$CLOSED2 --cacert $work/ca.pem); rc=\$?; echo \"\$out\"; [ \$rc -ne 0 ] && echo \"\$out\" | grep -q 'hop 1 (http proxy 127.0.0.1:$SQUID_PORT): connect to 127.0.0.1:$CLOSED2' && echo \"\$out\" | grep -q '^FAILED  502 error=destination_unavailable'"
check "viaduct probe through squid to nginx over TLS: steps, certificate, 200, exit 0" \
    bash -c "out=\$($VIADUCT probe https://localhost:$HTTPS_PORT/hello.txt --upstream http://127.0.0.1:$SQUID_PORT --cacert $work/ca.pem); rc=\$?; echo \"\$out\"; [ \$rc -eq 0 ] && echo \"\$out\" | grep -q 'subject CN=localhost' && echo \"\$out\" | grep -q '200 OK'"

# Headless Chromium through viaduct -> squid. Chromium skips proxies for loopback unless told
# (<-loopback>), and trusts our server key by its SPKI pin rather than a system CA store.
if command -v chromium >/dev/null 2>&1; then
    spki=$(openssl x509 -in "$work/server.pem" -pubkey -noout | openssl pkey -pubin -outform der \
        | openssl dgst -sha256 -binary | base64)
    chromium_get() {
        timeout 60 chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
            --disable-background-networking --disable-component-update --disable-sync \
            --user-data-dir="$work/chromium-profile" --proxy-server="http://127.0.0.1:$V_CHAIN" \
            --proxy-bypass-list='<-loopback>' --ignore-certificate-errors-spki-list="$spki" \
            --dump-dom "$1" 2>/dev/null
    }
    export -f chromium_get
    export spki V_CHAIN
    check "chromium https via viaduct -> squid -> nginx" \
        bash -c "chromium_get https://localhost:$HTTPS_PORT/hello.txt | grep -q 'hello from nginx'"
    check "chromium plain http via viaduct -> squid -> nginx" \
        bash -c "chromium_get http://127.0.0.1:$HTTP_PORT/hello.txt | grep -q 'hello from nginx'"
    check "viaduct logged chromium's tunnel" eventually grep -q "CONNECT.*localhost:$HTTPS_PORT" "$work/chain.log"
    check "chromium with --proxy-server=https:// (viaduct's TLS listener) -> squid -> nginx" \
        bash -c "timeout 60 chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
                   --user-data-dir=$work/chromium-https --proxy-server=https://localhost:$V_TLSL \
                   --proxy-bypass-list='<-loopback>' --ignore-certificate-errors-spki-list=$spki \
                   --log-net-log=$work/chromium-https-netlog.json \
                   --dump-dom https://localhost:$HTTPS_PORT/hello.txt 2>/dev/null | grep -q 'hello from nginx'"
    # nginx here offers only http/1.1, so an h2 in the net log is the proxy connection's.
    check "chromium's net log: it spoke HTTP/2 to viaduct's TLS listener" \
        grep -q '"negotiated_protocol":"h2"' "$work/chromium-https-netlog.json"
    check "chromium with --proxy-server=socks5:// (viaduct's port) -> squid -> nginx over HTTPS" \
        bash -c "timeout 60 chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
                   --user-data-dir=$work/chromium-socks --proxy-server=socks5://127.0.0.1:$V_CHAIN \
                   --proxy-bypass-list='<-loopback>' --ignore-certificate-errors-spki-list=$spki \
                   --dump-dom https://localhost:$HTTPS_PORT/hello.txt 2>/dev/null | grep -q 'hello from nginx' \
                 && grep -q 'method=\"socks5\"' $work/chain.log"
    # puppeteer-core (npm; 22.x runs on Debian's Node 18 too) drives the same Chromium and
    # answers viaduct's 407 challenge.
    node_dir="$root/target/interop-node"
    if [ ! -d "$node_dir/node_modules/puppeteer-core" ]; then
        mkdir -p "$node_dir"
        npm install --prefix "$node_dir" --no-audit --no-fund --silent puppeteer-core@22 >/dev/null 2>&1
    fi
    check "chromium (puppeteer-core page.authenticate) through viaduct with --auth-file" \
        env NODE_PATH="$node_dir/node_modules" node "$root/tests/interop/chromium_auth.cjs" \
        "$(command -v chromium)" "http://127.0.0.1:$V_AUTHED" "$spki" "$V_USER" "$V_PASS" \
        "https://localhost:$HTTPS_PORT/hello.txt" "http://127.0.0.1:$HTTP_PORT/hello.txt"
    mkdir -p "$root/target/interop-artifacts"
    check "chromium renders /status: pool and member names in the DOM; screenshot kept" \
        bash -c "timeout 60 chromium --headless --no-sandbox --disable-gpu --no-first-run --user-data-dir=$work/chromium-status \
                   --dump-dom http://127.0.0.1:$ADMIN_PORT/status 2>/dev/null | grep -q 'pool mixed' \
                 && timeout 60 chromium --headless --no-sandbox --disable-gpu --no-first-run --user-data-dir=$work/chromium-status \
                   --window-size=1200,900 --screenshot=$root/target/interop-artifacts/status.png http://127.0.0.1:$ADMIN_PORT/status >/dev/null 2>&1 \
                 && [ -s $root/target/interop-artifacts/status.png ]"
    check "viaduct logged the authenticated user for chromium's tunnel" \
        eventually grep -q 'tunnel closed method="CONNECT" user="alice"' "$work/authed.log"
else
    echo "FAIL chromium is not installed (.ci/run installs it)"; failed=$((failed + 1))
fi

# Egress: nginx's log shows the address viaduct bound for each session.
bound_peers() { # bound_peers SESSION...: one GET per session through the bound viaduct
    : > "$work/nginx/peers.log"
    for s in "$@"; do
        curl -fsS -o /dev/null --noproxy '' -x "http://127.0.0.1:$V_BOUND" --proxy-user "u-session-$s:x" \
            "http://127.0.0.1:$PEER_PORT/hello.txt" || return 1
    done
    sleep 0.5
}
check "nginx sees one source address for one session (viaduct --bind 127.0.0.0/24)" \
    bash -c "$(declare -f bound_peers); work=$work V_BOUND=$V_BOUND PEER_PORT=$PEER_PORT; \
             bound_peers 7 7 7 7 && [ \$(sort -u $work/nginx/peers.log | wc -l) = 1 ] \
             && grep -q '^127\.0\.0\.' $work/nginx/peers.log"
check "nginx sees different sessions spread over the prefix" \
    bash -c "$(declare -f bound_peers); work=$work V_BOUND=$V_BOUND PEER_PORT=$PEER_PORT; \
             bound_peers 1 2 3 4 5 6 7 8 && [ \$(sort -u $work/nginx/peers.log | wc -l) -ge 4 ]"

# Corporate upstreams: Kerberos and NTLM to squid, an MIT KDC on loopback.
source "$root/tests/interop/corporate.sh"
# PAC: viaduct's engine beside pacparser.
source "$root/tests/interop/pac.sh"

check "no credentials or panics in viaduct logs" \
    bash -c "! grep -Eqi 'panicked|authorization|sock:pass|sock%3Apass|p@ss|p%40ss|wrong|sesame|b0b-pw|nope' $work/*.log --include='[a-z]*.log' --exclude='squid*' --exclude='danted.log' --exclude='stunnel.log' --exclude='microsocks.log'"

echo "interop: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
