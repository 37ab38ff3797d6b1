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
