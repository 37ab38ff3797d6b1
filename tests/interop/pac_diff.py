#!/usr/bin/env python3
"""Differential check: the same PAC script and URLs evaluated by viaduct (`viaduct route URL
--pac FILE`) and by pacparser (an independent engine, PyPI); every answer must agree.
Usage: pac_diff.py VIADUCT PACFILE. Prints each disagreement; exit 1 when any."""
import subprocess
import sys

import pacparser

viaduct, pac = sys.argv[1], sys.argv[2]
urls = [
    "https://www.example.com/",
    "https://www.example.com:8443/",
    "http://intranet/",
    "http://wiki.corp.example/page",
    "https://a.b.c.d.example.org/",
    "http://127.0.0.1:8080/",
    "https://10.1.2.3/",
    "https://10.200.0.1/",
    "http://192.168.1.20/",
    "https://localhost/",
    "http://download.example.net/file.iso",
    "https://cdn.static.example.net/x.js",
    "http://a-b.example.io/",
    "https://ftp.example.com/",
    "http://host.with.many.levels.example.co.uk/",
]
pacparser.init()
pacparser.parse_pac_file(pac)
bad = 0
for url in urls:
    # viaduct asks about tunnels as https://host[:port]/ and plain requests as http://host[:port]/:
    # give pacparser the same URL it would.
    scheme, rest = url.split("://", 1)
    authority = rest.split("/", 1)[0]
    asked = f"{scheme}://{authority}/"
    host = authority.rsplit(":", 1)[0] if ":" in authority else authority
    theirs = pacparser.find_proxy(asked, host)
    out = subprocess.run([viaduct, "route", url, "--pac", pac], capture_output=True, text=True)
    ours = None
    for line in out.stdout.splitlines():
        if line.startswith("pac:"):
            ours = line[len("pac:"):].strip().split(" -> ")[0]
    if ours != theirs:
        bad += 1
        print(f"DIFF {asked}: viaduct {ours!r} ({out.stderr.strip()}), pacparser {theirs!r}")
    else:
        print(f"same {asked}: {ours}")
sys.exit(1 if bad else 0)
