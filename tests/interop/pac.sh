# Sourced by run.sh: viaduct's PAC engine beside pacparser (PyPI), same script, same URLs.
cat > "$work/corp.pac" <<'PAC'
// A corporate PAC in the usual style: plain hosts and the intranet direct, some networks
// direct, downloads through one proxy, the rest through a list with failover.
function FindProxyForURL(url, host) {
    host = host.toLowerCase();
    if (isPlainHostName(host) || dnsDomainIs(host, ".corp.example") ||
        localHostOrDomainIs(host, "localhost.localdomain"))
        return "DIRECT";
    if (/^[0-9.]+$/.test(host) && (isInNet(host, "10.0.0.0", "255.0.0.0") ||
        isInNet(host, "192.168.0.0", "255.255.0.0") || isInNet(host, "127.0.0.0", "255.0.0.0")))
        return "DIRECT";
    if (shExpMatch(url, "http://download.*") || shExpMatch(host, "*.static.example.net"))
        return "PROXY dl-proxy.corp.example:3128";
    if (dnsDomainLevels(host) > 4)
        return "SOCKS5 socks.corp.example:1080";
    if (url.substring(0, 6) == "https:" && shExpMatch(host, "ftp.*"))
        return "HTTPS secure-proxy.corp.example:443; DIRECT";
    return "PROXY proxy-a.corp.example:8080; PROXY proxy-b.corp.example:8080; DIRECT";
}
PAC
check "PAC: viaduct's answers agree with pacparser's for 15 URLs" \
    python3 "$root/tests/interop/pac_diff.py" "$VIADUCT" "$work/corp.pac"

# A PAC served by nginx routes real traffic: localhost through squid, plain http to 127.0.0.1
# through microsocks (credentials from [pac_credentials]), the rest DIRECT; SIGHUP fetches it
# again.
pac_script() { # pac_script SQUID_TARGET: the served script, sending localhost to SQUID_TARGET
    cat > "$work/www/route.pac" <<PAC
function FindProxyForURL(url, host) {
    if (host === "localhost") return "PROXY $1";
    if (host === "127.0.0.1" && url.startsWith("http://")) return "SOCKS5 127.0.0.1:$MS_PORT";
    return "DIRECT";
}
PAC
}
pac_script "127.0.0.1:$SQUID_PORT"
cat > "$work/pac-route.toml" <<CONF
pac = "http://127.0.0.1:$HTTP_PORT/route.pac"
[pac_credentials]
"127.0.0.1:$MS_PORT" = "sockuser:sock%3Apass"
CONF
PAC_PORT=$(free_port)
"$VIADUCT" --listen "127.0.0.1:$PAC_PORT" --config "$work/pac-route.toml" --access-log json \
    --access-log-file "$work/viaduct-pac.json" > "$work/viaduct-pac.log" 2>&1 &
VPAC_PID=$!
pids+=($VPAC_PID)
wait_port "$PAC_PORT"
squid_connects() { grep -c "CONNECT localhost:$HTTPS_PORT" "$work/squid/access.log" || true; }
before=$(squid_connects)
check "PAC (served by nginx): https://localhost goes through squid" \
    bash -c "[ \"\$(curl -fsS --noproxy '' --cacert $work/ca.pem -x http://127.0.0.1:$PAC_PORT https://localhost:$HTTPS_PORT/hello.txt)\" = 'hello from nginx' ] && \
             for i in \$(seq 1 50); do [ \$(grep -c 'CONNECT localhost:$HTTPS_PORT' $work/squid/access.log) -gt $before ] && exit 0; sleep 0.1; done; exit 1"
# microsocks wants its user and password: success means the PAC's credentials went along.
check "PAC: plain http to 127.0.0.1 goes through microsocks with the PAC's credentials" \
    bash -c "[ \"\$(curl -fsS --noproxy '' -x http://127.0.0.1:$PAC_PORT http://127.0.0.1:$HTTP_PORT/hello.txt)\" = 'hello from nginx' ] && \
             for i in \$(seq 1 50); do grep '\"target\":\"http://127.0.0.1:$HTTP_PORT/hello.txt\"' $work/viaduct-pac.json | grep -q '\"route\":\"pac\"' && exit 0; sleep 0.1; done; exit 1"
check "PAC: SIGHUP fetches the script again (localhost now goes to a dead proxy: 502)" \
    bash -c "$(declare -f pac_script); work=$work MS_PORT=$MS_PORT; pac_script 127.0.0.1:1; kill -HUP $VPAC_PID; \
             for i in \$(seq 1 50); do \
               code=\$(curl -s -o /dev/null -w '%{http_connect}' --noproxy '' -x http://127.0.0.1:$PAC_PORT https://localhost:$HTTPS_PORT/hello.txt); \
               [ \"\$code\" = 502 ] && exit 0; sleep 0.1; done; exit 1"
