# Sourced by run.sh: a corporate proxy on loopback (squid offering Negotiate and NTLM) and an MIT
# KDC, with viaduct as the developer's local proxy in front. Uses run.sh's helpers
# (free_port, wait_port, check, eventually, pids, work) and its nginx origin.
#
#   curl -> viaduct (Kerberos ticket, no credentials)     -> squid (negotiate_kerberos_auth) -> nginx
#   curl -> viaduct (CORP\bob:pw in the URL, no ticket)   -> squid (ntlm_fake_auth)          -> nginx
#   curl -> viaduct (neither)                              -> 502 naming the missing ticket
#   kinit after viaduct started: the next request uses the new ticket, no restart
#   curl -> viaduct (CORP\carol) -> ntlm_upstream.py (pyspnego checks the NTLMv2 response)
#   pip, git -> viaduct (NTLM) -> squid -> nginx (a wheel index, a dumb-HTTP repository)

krb=$work/krb; mkdir -p "$krb"; chmod 755 "$krb"
KDC_PORT=$(free_port)
cat > "$krb/krb5.conf" <<CONF
[libdefaults]
    default_realm = TEST.LOCAL
    rdns = false
    dns_canonicalize_hostname = false
    dns_lookup_kdc = false
    dns_lookup_realm = false
    udp_preference_limit = 1
[realms]
    TEST.LOCAL = {
        kdc = 127.0.0.1:$KDC_PORT
    }
[domain_realm]
    localhost = TEST.LOCAL
CONF
cat > "$krb/kdc.conf" <<CONF
[kdcdefaults]
    kdc_listen = 127.0.0.1:$KDC_PORT
    kdc_tcp_listen = 127.0.0.1:$KDC_PORT
[realms]
    TEST.LOCAL = {
        database_name = $krb/principal
        key_stash_file = $krb/stash
        acl_file = $krb/kadm5.acl
    }
CONF
: > "$krb/kadm5.acl"
export KRB5_CONFIG=$krb/krb5.conf KRB5_KDC_PROFILE=$krb/kdc.conf
kdb5_util create -s -P kdc-master-pw -r TEST.LOCAL >/dev/null 2>&1
kadmin.local -q "addprinc -pw alice-pw alice@TEST.LOCAL" >/dev/null 2>&1
kadmin.local -q "addprinc -randkey HTTP/localhost@TEST.LOCAL" >/dev/null 2>&1
kadmin.local -q "ktadd -k $krb/http.keytab HTTP/localhost@TEST.LOCAL" >/dev/null 2>&1
chmod 644 "$krb/http.keytab"
krb5kdc -n -P "$krb/kdc.pid" >"$krb/kdc.log" 2>&1 &
pids+=($!)
wait_port "$KDC_PORT"
echo alice-pw | KRB5CCNAME=FILE:$krb/cc_alice kinit alice@TEST.LOCAL >/dev/null

# The corporate proxy: Negotiate (Kerberos, or NTLM inside it) and NTLM, nothing else.
CORP_PORT=$(free_port)
start_squid squid-corp "$CORP_PORT" <<CONF
auth_param negotiate program /usr/lib/squid/negotiate_wrapper_auth --ntlm /usr/lib/squid/ntlm_fake_auth --kerberos /usr/lib/squid/negotiate_kerberos_auth -k $krb/http.keytab -s HTTP/localhost@TEST.LOCAL
auth_param negotiate children 2
auth_param ntlm program /usr/lib/squid/ntlm_fake_auth
auth_param ntlm children 2
acl authed proxy_auth REQUIRED
http_access allow authed
CONF
wait_port "$CORP_PORT"

corp_viaduct() { # corp_viaduct VAR NAME CCACHE UPSTREAM [ARGS...]: a local proxy for the corporate one,
    # its port in VAR (no command substitution: the process must stay in this shell's pids).
    local var=$1 name=$2 cc=$3 up=$4; shift 4
    local port; port=$(free_port)
    KRB5CCNAME=$cc VIADUCT_UPSTREAM=$up "$VIADUCT" --listen "127.0.0.1:$port" "$@" \
        >"$work/$name.log" 2>&1 &
    pids+=($!)
    wait_port "$port"
    printf -v "$var" '%s' "$port"
}
corp_viaduct V_KRB corp-krb "FILE:$krb/cc_alice" "http://localhost:$CORP_PORT"
corp_viaduct V_NTLM corp-ntlm "FILE:$krb/cc_none" "http://CORP%5Cbob:bob-corp-pw@localhost:$CORP_PORT"
corp_viaduct V_NONE corp-none "FILE:$krb/cc_none" "http://localhost:$CORP_PORT"
corp_viaduct V_LATE corp-late "FILE:$krb/cc_late" "http://localhost:$CORP_PORT"
corp_viaduct V_PINNED corp-pinned "FILE:$krb/cc_alice" "http://CORP%5Cbob:bob-corp-pw@localhost:$CORP_PORT" --upstream-auth ntlm

corp_get() { # corp_get PORT URL: the body through viaduct on PORT
    curl -fsS --noproxy '' --max-time 20 --cacert "$work/ca.pem" -x "http://127.0.0.1:$1" "$2"
}
check "squid (corporate) wants Negotiate or NTLM (curl straight to it gets 407)" \
    bash -c "curl -s -o /dev/null -w '%{http_code}' --noproxy '' -x http://127.0.0.1:$CORP_PORT http://127.0.0.1:$HTTP_PORT/hello.txt | grep -qx 407"
check "kerberos: CONNECT through viaduct (ticket, no credentials) -> squid -> nginx" \
    bash -c "corp_get() { $(declare -f corp_get | tail -n +2); }; work=$work; corp_get $V_KRB https://localhost:$HTTPS_PORT/hello.txt | grep -q 'hello from nginx'"
check "kerberos: plain GET through viaduct -> squid -> nginx" \
    bash -c "work=$work; $(declare -f corp_get); corp_get $V_KRB http://127.0.0.1:$HTTP_PORT/hello.txt | grep -q 'hello from nginx'"
check "kerberos: squid logged alice@TEST.LOCAL" \
    eventually grep -q 'alice@TEST.LOCAL' "$work/squid-corp/access.log"
check "ntlm: CONNECT and plain GET through viaduct (CORP\\bob, no ticket) -> squid -> nginx" \
    bash -c "work=$work; $(declare -f corp_get); corp_get $V_NTLM https://localhost:$HTTPS_PORT/hello.txt | grep -q 'hello from nginx' && corp_get $V_NTLM http://127.0.0.1:$HTTP_PORT/hello.txt | grep -q 'hello from nginx'"
check "ntlm: squid logged bob" \
    eventually grep -qi 'bob' "$work/squid-corp/access.log"
check "ntlm pinned (--upstream-auth ntlm) with a ticket present: NTLM is used" \
    bash -c "work=$work; $(declare -f corp_get); corp_get $V_PINNED https://localhost:$HTTPS_PORT/hello.txt | grep -q 'hello from nginx'"
check "ntlm: 10 keep-alive GETs through viaduct ride authenticated connections (at most 2 new 407s at squid)" \
    bash -c "log=$work/squid-corp/access.log; ok() { grep -c '/200 .* GET http://127.0.0.1:$HTTP_PORT/hello.txt' \$log; }; \
             before=\$(grep -c 'TCP_DENIED/407' \$log); served=\$(ok); \
             n=\$(curl -fsS --noproxy '' -x http://127.0.0.1:$V_NTLM $(for i in 1 2 3 4 5 6 7 8 9 10; do printf 'http://127.0.0.1:%s/hello.txt ' "$HTTP_PORT"; done) | grep -c 'hello from nginx'); \
             for i in \$(seq 1 50); do [ \$(ok) -ge \$((served + 10)) ] && break; sleep 0.1; done; \
             [ \$(ok) -ge \$((served + 10)) ] || { echo 'squid never logged the 10 requests'; exit 1; }; \
             after=\$(grep -c 'TCP_DENIED/407' \$log); \
             echo \"bodies \$n, new 407s \$((after - before))\"; [ \$n = 10 ] && [ \$((after - before)) -le 2 ]"
check "no ticket, no credentials: 502 with Proxy-Status naming the missing ticket" \
    bash -c "curl -s -D - -o /dev/null --noproxy '' -x http://127.0.0.1:$V_NONE http://127.0.0.1:$HTTP_PORT/hello.txt | tr -d '\\r' | \
             grep -q '^proxy-status: viaduct; error=http_request_denied; received-status=407; details=\"http proxy localhost:$CORP_PORT offers Negotiate, but there is no Kerberos ticket (run kinit) and no credentials to fall back to NTLM\"'"
check "a ticket obtained after viaduct started is used without a restart" \
    bash -c "code=\$(curl -s -o /dev/null -w '%{http_code}' --noproxy '' -x http://127.0.0.1:$V_LATE http://127.0.0.1:$HTTP_PORT/hello.txt); [ \"\$code\" = 502 ] || exit 1; \
             echo alice-pw | KRB5CCNAME=FILE:$krb/cc_late kinit alice@TEST.LOCAL >/dev/null && \
             curl -fsS --noproxy '' -x http://127.0.0.1:$V_LATE http://127.0.0.1:$HTTP_PORT/hello.txt | grep -q 'hello from nginx'"
check "python requests through viaduct (NTLM) -> squid" \
    python3 -c "import requests,sys; p={'http':'http://127.0.0.1:$V_NTLM','https':'http://127.0.0.1:$V_NTLM'}; \
        r=requests.get('https://localhost:$HTTPS_PORT/hello.txt', proxies=p, verify='$work/ca.pem', timeout=20); \
        sys.exit(0 if r.status_code == 200 and 'hello from nginx' in r.text else 1)"
# A real NTLMv2 acceptor (pyspnego) that checks the password, and real clients (pip, git).
NTLM_REAL_PORT=$(free_port)
printf 'CORP:carol:carol-ntlm-pw\n' > "$work/ntlm-users"
NTLM_USER_FILE=$work/ntlm-users python3 "$root/tests/interop/ntlm_upstream.py" "$NTLM_REAL_PORT" \
    >"$work/ntlm-real.out" 2>&1 &
pids+=($!)
wait_port "$NTLM_REAL_PORT"
corp_viaduct V_REAL corp-real "FILE:$krb/cc_none" "http://CORP%5Ccarol:carol-ntlm-pw@127.0.0.1:$NTLM_REAL_PORT"
corp_viaduct V_REAL_BAD corp-real-bad "FILE:$krb/cc_none" "http://CORP%5Ccarol:not-her-pw@127.0.0.1:$NTLM_REAL_PORT"
check "ntlm (pyspnego acceptor checks the NTLMv2 response): CONNECT and plain GET" \
    bash -c "work=$work; $(declare -f corp_get); corp_get $V_REAL https://localhost:$HTTPS_PORT/hello.txt | grep -q 'hello from nginx' && corp_get $V_REAL http://127.0.0.1:$HTTP_PORT/hello.txt | grep -q 'hello from nginx'"
check "ntlm (pyspnego): the acceptor verified CORP\\carol" \
    eventually grep -q 'verified: CORP\\carol' "$work/ntlm-real.out"
check "ntlm (pyspnego): a wrong password is refused by the acceptor and named in Proxy-Status" \
    bash -c "curl -s -D - -o /dev/null --noproxy '' -x http://127.0.0.1:$V_REAL_BAD http://127.0.0.1:$HTTP_PORT/hello.txt | tr -d '\\r' | \
             grep -q 'rejected NTLM credentials for CORP\\\\\\\\carol' && grep -q '^refused' $work/ntlm-real.out"

# NTLM over TLS to the proxy (an https:// upstream: stunnel in front of the pyspnego acceptor),
# with channel bindings checked strictly against the certificate stunnel presents.
NTLM_CB_PORT=$(free_port); NTLM_TLS_PORT=$(free_port)
NTLM_USER_FILE=$work/ntlm-users python3 "$root/tests/interop/ntlm_upstream.py" "$NTLM_CB_PORT" "$work/server.pem" \
    >"$work/ntlm-cb.out" 2>&1 &
pids+=($!)
cat > "$work/stunnel-ntlm.conf" <<CONF
foreground = yes
pid =
[ntlm-tls]
accept = 127.0.0.1:$NTLM_TLS_PORT
connect = 127.0.0.1:$NTLM_CB_PORT
cert = $work/server.pem
key = $work/server.key
CONF
stunnel4 "$work/stunnel-ntlm.conf" >"$work/stunnel-ntlm.log" 2>&1 &
pids+=($!)
wait_port "$NTLM_CB_PORT"; wait_port "$NTLM_TLS_PORT"
corp_viaduct V_CB corp-cb "FILE:$krb/cc_none" "https://CORP%5Ccarol:carol-ntlm-pw@localhost:$NTLM_TLS_PORT" --upstream-ca "$work/ca.pem"
check "ntlm over TLS (https:// upstream): channel bindings match the proxy's certificate (CONNECT and plain)" \
    bash -c "work=$work; $(declare -f corp_get); corp_get $V_CB https://localhost:$HTTPS_PORT/hello.txt | grep -q 'hello from nginx' && \
             corp_get $V_CB http://127.0.0.1:$HTTP_PORT/hello.txt | grep -q 'hello from nginx' && \
             [ \$(grep -c 'verified: CORP' $work/ntlm-cb.out) -ge 2 ] && ! grep -q refused $work/ntlm-cb.out"

# pip and git, through viaduct to the NTLM squid: a wheel index and a dumb-HTTP git repository
# served by nginx.
mkdir -p "$work/www/simple/viaduct-demo" "$work/pip-out"
python3 - "$work/www" <<'PY'
import sys, zipfile
www = sys.argv[1]
name = "viaduct_demo-0.1-py3-none-any.whl"
with zipfile.ZipFile(f"{www}/{name}", "w") as z:
    z.writestr("viaduct_demo/__init__.py", "")
    z.writestr("viaduct_demo-0.1.dist-info/METADATA", "Metadata-Version: 2.1\nName: viaduct-demo\nVersion: 0.1\n")
    z.writestr("viaduct_demo-0.1.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: hand\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
    z.writestr("viaduct_demo-0.1.dist-info/RECORD", "")
open(f"{www}/simple/viaduct-demo/index.html", "w").write(f'<a href="/{name}">{name}</a>\n')
PY
git init -q --bare "$work/www/repo.git"
git -C "$work" init -q seed && git -C "$work/seed" -c user.name=t -c user.email=t@t commit -q --allow-empty -m "through the corporate proxy"
git -C "$work/seed" push -q "$work/www/repo.git" HEAD:refs/heads/main
git -C "$work/www/repo.git" symbolic-ref HEAD refs/heads/main
git -C "$work/www/repo.git" update-server-info
check "pip download through viaduct (NTLM) -> squid -> a local index" \
    python3 -m pip download -q --no-deps --no-cache-dir --dest "$work/pip-out" --proxy "http://127.0.0.1:$V_NTLM" \
        --index-url "http://127.0.0.1:$HTTP_PORT/simple/" viaduct-demo
check "git clone (dumb HTTP) through viaduct (NTLM) -> squid -> nginx" \
    bash -c "git -c http.proxy=http://127.0.0.1:$V_NTLM clone -q http://127.0.0.1:$HTTP_PORT/repo.git $work/clone && \
             git -C $work/clone log --oneline | grep -q 'through the corporate proxy'"

check "no corporate password in viaduct's logs" \
    bash -c "! grep -qi 'bob-corp-pw\\|alice-pw\\|TlRMTVNT\\|Negotiate YII' $work/corp-*.log"
unset KRB5_CONFIG KRB5_KDC_PROFILE
