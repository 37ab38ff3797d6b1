"""Formats bench/run's results: one table with every figure from the same run, ratios, targets."""
import re
import sys
from collections import defaultdict

rows = defaultdict(dict)
for line in open(sys.argv[1]):
    name, key, value = line.rstrip("\n").split("\t", 2)
    rows[name][key] = value


def ms(text):
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    if not m:
        return None
    v, unit = float(m.group(1)), m.group(2)
    return v / 1000 if unit == "us" else v * 1000 if unit == "s" else v


for name, r in rows.items():
    if "wrk" in r:
        out = r.pop("wrk").replace("|", "\n")
        rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
        p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M)
        p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
        errs = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        sock = re.search(r"Socket errors: (.*)", out)
        r["plain_rps"] = float(rps.group(1)) if rps else None
        r["p50_ms"] = ms(p50.group(1)) if p50 else None
        r["p99_ms"] = ms(p99.group(1)) if p99 else None
        bad = [f"{errs.group(1)} non-2xx"] if errs else []
        if sock:
            bad += [f"{n} {kind}" for kind, n in re.findall(r"(\w+) (\d+)", sock.group(1)) if n != "0"]
        r["plain_errors"] = ", ".join(bad) or "0"


def num(v, fmt="{:,.0f}"):
    try:
        return fmt.format(float(v))
    except (TypeError, ValueError):
        return "-" if v in (None, "") else str(v)


def table(names, title):
    names = [n for n in names if n in rows]
    if not names:
        return
    print(f"\n{title}")
    lines = [
        ("tunnel MB/s (CONNECT, median)", "tunnel_mbps", "{:,.0f}"),
        ("plain HTTP req/s (64 conns)", "plain_rps", "{:,.0f}"),
        ("plain HTTP p50 ms", "p50_ms", "{:.2f}"),
        ("plain HTTP p99 ms", "p99_ms", "{:.2f}"),
        ("plain HTTP errors", "plain_errors", None),
        ("CONNECT setup, tunnels/s", "tunnels_per_s", "{:,.0f}"),
        ("CONNECT setup errors", "rate_errors", None),
        ("RSS per idle tunnel, KiB", "idle_kib_per_tunnel", "{:.1f}"),
        ("idle tunnels lost/refused", "idle_errors", None),
    ]
    width = max(len(n) for n in names) + 2
    print(f"{'':32}" + "".join(f"{n:>{max(width, 12)}}" for n in names))
    for label, key, fmt in lines:
        if not any(key in rows[n] for n in names):
            continue
        cells = [num(rows[n].get(key), fmt) if fmt else (rows[n].get(key) or "-") for n in names]
        print(f"{label:32}" + "".join(f"{c:>{max(width, 12)}}" for c in cells))


def ratio(a, b, key):
    try:
        return float(rows[a][key]) / float(rows[b][key])
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return None


print(f"viaduct benchmark: {sys.argv[2]}")
peers = ["direct", "viaduct", "squid", "tinyproxy", "proxy-chain"]
table(peers, "client -> proxy -> origin (nginx)")
table(["viaduct-chain", "squid-chain", "tinyproxy-chain", "proxy-chain-chain"], "client -> proxy -> squid -> origin")

table(["viaduct-socks", "microsocks", "dante"], "SOCKS5: client -> proxy -> origin (nginx)")
table(["viaduct-tls", "stunnel-squid"], "TLS to the proxy: client -> proxy (https://) -> origin (nginx)")
table(["viaduct-tlshop", "viaduct-sockshop", "viaduct-control"], "idle tunnels through an upstream: https:// (stunnel -> squid; the portable relay), socks5:// (microsocks; splice), and direct with as many tunnels (control)")


def median(vals):
    vals = sorted(v for v in vals if v is not None)
    return vals[len(vals) // 2] if vals else None


pair_ratios = []
if "pair:direct" in rows:
    for run, d in rows["pair:direct"].items():
        v = rows.get("pair:viaduct", {}).get(run)
        try:
            pair_ratios.append(float(v) / float(d))
        except (TypeError, ValueError, ZeroDivisionError):
            pass
    print("\ntunnel throughput, direct and viaduct alternating (MB/s, one download each)")
    print("  direct   " + ", ".join(rows["pair:direct"].values()))
    print("  viaduct  " + ", ".join(rows.get("pair:viaduct", {}).values()))
    print("  ratio    " + ", ".join(f"{r:.2f}" for r in pair_ratios) + (f"   median {median(pair_ratios):.2f}x" if pair_ratios else ""))

# A/B: each feature beside plain viaduct, interleaved round by round.
ab = defaultdict(lambda: defaultdict(list))  # feature -> metric -> [ratio per round]
for name in rows:
    parts = name.split(":")
    if len(parts) != 4 or parts[0] != "ab" or parts[2] != "on":
        continue
    _, feature, _, rnd = parts
    base = rows.get(f"ab:{feature}:base:{rnd}", {})
    on = rows[name]
    for key in ["tunnel_mbps", "plain_rps", "tunnels_per_s", "p99_ms"]:
        try:
            ab[feature][key].append(float(on[key]) / float(base[key]))
        except (KeyError, TypeError, ValueError, ZeroDivisionError):
            pass
AB_LABELS = {
    "viaduct-auth": "authentication (a bcrypt user)",
    "viaduct-deny": "access checks, 65-network deny list",
    "viaduct-admin": "admin + metrics scraped 1/s",
    "viaduct-json": "JSON access log to a file",
    "viaduct-http": "http:// listener (no sniffing)",
}
if ab:
    rounds = max(len(v) for m in ab.values() for v in m.values())
    print(f"\nfeatures, A/B: with / without, median of {rounds} interleaved round(s) (each round: plain viaduct, then the feature)")
    print(f"{'':40}{'tunnel MB/s':>12}{'req/s':>10}{'tunnels/s':>11}{'p99':>8}")
    for f in AB_LABELS:
        if f not in ab:
            continue
        cells = [median(ab[f].get(k, [])) for k in ["tunnel_mbps", "plain_rps", "tunnels_per_s", "p99_ms"]]
        print(f"  {AB_LABELS[f]:38}" + "".join(f"{(f'{c:.2f}x' if c else '-'):>{w}}" for c, w in zip(cells, [12, 10, 11, 8])))

if "limits-on" in rows:
    def med(name):
        vals = sorted(float(v) for v in rows[name].values() if v)
        return vals[len(vals) // 2] if vals else None

    off, idle_, on, alice = med("limits-off"), med("limits-idle"), med("limits-on"), med("limits-alice")
    n = len(rows["limits-off"])
    print(f"\nbandwidth limits: an unlimited user's tunnel MB/s (median of {n} interleaved rounds, each the median of 3)")
    print(f"  no limits configured            {num(off):>6}   ({', '.join(rows['limits-off'].values())})")
    print(f"  limits configured, none at cap  {num(idle_):>6}   ({', '.join(rows['limits-idle'].values())})")
    print(f"  while alice is at her cap       {num(on):>6}   ({', '.join(rows['limits-on'].values())})")
    print(f"  alice (cap 20 MB/s)             {num(alice, '{:,.1f}'):>6}   ({', '.join(rows['limits-alice'].values())})")

if "viaduct" not in rows:
    print("\ntargets")
    lr = on / off if on and off else None
    print(f"  [{'met' if lr and lr >= 0.95 else 'MISSED'}] unlimited user beside a user at its cap within 5% of no limits: {lr:.2f}x")
    print(f"  [{'met' if alice and 18 <= alice <= 22 else 'MISSED'}] a capped user gets its cap (20 MB/s, within 10%): {alice:.1f} MB/s")
    sys.exit(0)

print("\nratios (viaduct / peer)")
for peer in ["direct", "squid", "tinyproxy", "proxy-chain"]:
    if peer not in rows:
        continue
    parts = []
    for label, key in [("tunnel", "tunnel_mbps"), ("req/s", "plain_rps"), ("tunnels/s", "tunnels_per_s")]:
        r = ratio("viaduct", peer, key)
        if r is not None:
            parts.append(f"{label} {r:.2f}x")
    print(f"  vs {peer:12} " + ", ".join(parts))

for mine, peer in [("viaduct-socks", "microsocks"), ("viaduct-socks", "dante"), ("viaduct-tls", "stunnel-squid")]:
    parts = []
    for label, key in [("tunnel", "tunnel_mbps"), ("tunnels/s", "tunnels_per_s")]:
        r = ratio(mine, peer, key)
        if r is not None:
            parts.append(f"{label} {r:.2f}x")
    if parts:
        print(f"  {mine} vs {peer:13} " + ", ".join(parts))
print("\ntargets")


def target(text, ok):
    print(f"  [{'met' if ok else 'MISSED'}] {text}")


t = median(pair_ratios)
target(f"tunnel throughput >= 0.9 x direct (median of 5 alternating pairs): {t:.2f}x" if t else "tunnel throughput: no figure", bool(t and t >= 0.9))
p = ratio("viaduct", "squid", "plain_rps")
v99, s99 = rows["viaduct"].get("p99_ms"), rows.get("squid", {}).get("p99_ms")
target(f"plain HTTP >= 1.5 x squid req/s: {p:.2f}x" if p else "plain HTTP: no figure", bool(p and p >= 1.5))
pd = ratio("viaduct", "direct", "plain_rps")
target(f"plain HTTP >= 0.5 x direct req/s: {pd:.2f}x" if pd else "plain HTTP vs direct: no figure", bool(pd and pd >= 0.5))
target(f"plain HTTP p99 <= squid's: {v99:.2f} ms vs {s99:.2f} ms" if v99 and s99 else "p99: no figure", bool(v99 and s99 and v99 <= s99))
c = ratio("viaduct", "squid", "tunnels_per_s")
target(f"CONNECT setup >= 2 x squid: {c:.2f}x" if c else "CONNECT setup: no figure", bool(c and c >= 2))
for f, label in AB_LABELS.items():
    if f not in ab:
        continue
    if f == "viaduct-http":
        # The mixed port is the base here: sniffing must cost nothing measurable.
        for key, what in [("plain_rps", "req/s"), ("tunnels_per_s", "tunnels/s")]:
            r = median(ab[f].get(key, []))
            inv = 1 / r if r else None
            target(f"mixed port (sniffing) vs http:// listener, {what}: {inv:.2f}x" if inv else f"mixed port {what}: no figure", bool(inv and inv >= 0.97))
        continue
    for key, what in [("plain_rps", "req/s"), ("tunnels_per_s", "tunnels/s")]:
        r = median(ab[f].get(key, []))
        target(f"{label} costs <= 3% of {what}: {r:.2f}x" if r else f"{label} {what}: no figure", bool(r and r >= 0.97))
if "limits-on" in rows:
    lr = on / off if on and off else None
    target(f"unlimited user beside a user at its cap within 5% of no limits: {lr:.2f}x" if lr else "bandwidth limits: no figure", bool(lr and lr >= 0.95))
    target(f"a capped user gets its cap (20 MB/s, within 10%): {alice:.1f} MB/s" if alice else "capped user: no figure", bool(alice and 18 <= alice <= 22))
kib = rows["viaduct"].get("idle_kib_per_tunnel")
target(f"< 4 KiB RSS per idle tunnel: {kib} KiB", kib is not None and float(kib) < 4)
# Through an upstream, fewer tunnels are opened (the upstreams are thread-per-connection), so
# fixed costs weigh more: judged as viaduct's own figure plus what the hop adds over a fresh
# direct viaduct with as many tunnels (the control).
ctrl = rows.get("viaduct-control", {}).get("idle_kib_per_tunnel")
for name, what in [("viaduct-tlshop", "a TLS upstream"), ("viaduct-sockshop", "a SOCKS5 upstream")]:
    hop = rows.get(name, {}).get("idle_kib_per_tunnel")
    if hop is not None and ctrl is not None and kib is not None:
        est = float(kib) + float(hop) - float(ctrl)
        target(f"< 4 KiB RSS per idle tunnel through {what}: {est:.1f} KiB ({hop} - control {ctrl} + {kib})", est < 4)
lost = rows["viaduct"].get("idle_errors")
target(f"idle tunnels all open, zero errors: {lost} lost or refused", lost == "0")
