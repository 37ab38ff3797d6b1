#!/usr/bin/env python3
"""An HTTP proxy that wants NTLM and checks it for real: pyspnego's NTLM acceptor verifies
each NTLMv2 response against the password in NTLM_USER_FILE (lines DOMAIN:USER:PASSWORD).
The login is bound to the connection, as squid and Windows proxies do. Authenticated
connections get CONNECT tunnels and absolute-form GET/POST forwarded to loopback origins
(Connection: close towards the origin). Logs one line per verified or refused login to
stdout. Usage: ntlm_upstream.py PORT [CERT.pem] (loopback only).

With CERT (the certificate of a TLS terminator in front, e.g. stunnel), the acceptor also
checks NTLM channel bindings: the client's MsvAvChannelBindings must be the hash of this
certificate's tls-server-end-point (RFC 5929; all zeros is refused here, as a proxy that
requires Extended Protection does)."""
import asyncio
import base64
import sys

import hashlib
import ssl

import spnego
from spnego._ntlm_raw.messages import Authenticate, AvId, NTClientChallengeV2
from spnego.channel_bindings import GssChannelBindings

MAX_HEAD = 64 * 1024
BINDINGS = None
if len(sys.argv) > 2:
    der = ssl.PEM_cert_to_DER_cert(open(sys.argv[2]).read())
    # The interop certificates are signed with SHA-256.
    BINDINGS = GssChannelBindings(application_data=b"tls-server-end-point:" + hashlib.sha256(der).digest())


def bindings_ok(token):
    """Strict check: the client's MsvAvChannelBindings equals ours (zeros refused)."""
    if BINDINGS is None:
        return True
    auth = Authenticate.unpack(token)
    pairs = NTClientChallengeV2.unpack(auth.nt_challenge_response[16:]).av_pairs
    return pairs.get(AvId.channel_bindings) == hashlib.md5(BINDINGS.pack()).digest()


async def read_head(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    if len(head) > MAX_HEAD:
        raise ValueError("head too large")
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers.setdefault(k.strip().lower(), v.strip())
    return method, target, headers, head


async def read_body(reader, headers):
    if "content-length" in headers:
        return await reader.readexactly(int(headers["content-length"]))
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass
                return body
            body += await reader.readexactly(size)
            await reader.readexactly(2)
    return b""


def answer(status, reason, extra=b"", body=b""):
    return (f"HTTP/1.1 {status} {reason}\r\n".encode() + extra +
            f"Content-Length: {len(body)}\r\n\r\n".encode() + body)


async def pipe(r, w):
    try:
        while True:
            data = await r.read(65536)
            if not data:
                break
            w.write(data)
            await w.drain()
    except Exception:
        pass
    finally:
        try:
            w.write_eof()
        except Exception:
            pass


async def handle(reader, writer):
    ctx = None
    authed = False
    try:
        while True:
            method, target, headers, _ = await read_head(reader)
            body = await read_body(reader, headers)
            if not authed:
                auth = headers.get("proxy-authorization", "")
                if not auth.startswith("NTLM "):
                    writer.write(answer(407, "Proxy Authentication Required",
                                        b"Proxy-Authenticate: NTLM\r\n", b"ntlm required\n"))
                    await writer.drain()
                    ctx = None
                    continue
                token = base64.b64decode(auth[5:])
                if ctx is None or token[8:9] == b"\x01":
                    ctx = spnego.server(protocol="ntlm", channel_bindings=BINDINGS)
                try:
                    if token[8:9] == b"\x03" and not bindings_ok(token):
                        raise ValueError("channel bindings do not match the TLS certificate")
                    out = ctx.step(token)
                except Exception as e:  # a wrong password, a non-v2 answer, wrong bindings
                    print(f"refused: {type(e).__name__}", flush=True)
                    ctx = None
                    writer.write(answer(407, "Proxy Authentication Required",
                                        b"Proxy-Authenticate: NTLM\r\n", b"refused\n"))
                    await writer.drain()
                    continue
                if not ctx.complete:
                    writer.write(answer(407, "Proxy Authentication Required",
                                        b"Proxy-Authenticate: NTLM " + base64.b64encode(out) + b"\r\n"))
                    await writer.drain()
                    continue
                authed = True
                print(f"verified: {ctx.client_principal}", flush=True)
            if method == "CONNECT":
                host, port = target.rsplit(":", 1)
                r2, w2 = await asyncio.open_connection(host, int(port))
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                await writer.drain()
                await asyncio.gather(pipe(reader, w2), pipe(r2, writer))
                return
            # Absolute-form: forward to the origin, answer with its response.
            rest = target.split("://", 1)[1]
            authority, _, path = rest.partition("/")
            host, _, port = authority.partition(":")
            r2, w2 = await asyncio.open_connection(host, int(port or 80))
            out = f"{method} /{path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n"
            if body:
                out += f"Content-Length: {len(body)}\r\n"
            w2.write(out.encode() + b"\r\n" + body)
            await w2.drain()
            response = await r2.read(-1)
            w2.close()
            head, _, payload = response.partition(b"\r\n\r\n")
            lines = [l for l in head.split(b"\r\n") if not l.lower().startswith((b"connection:", b"content-length:", b"transfer-encoding:", b"keep-alive:"))]
            if b"transfer-encoding: chunked" in head.lower():
                payload = b""  # the origins used here send sized bodies
            writer.write(b"\r\n".join(lines) + f"\r\nContent-Length: {len(payload)}\r\n\r\n".encode() + payload)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, ValueError):
        pass
    finally:
        writer.close()


async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", int(sys.argv[1]))
    async with server:
        await server.serve_forever()


asyncio.run(main())
