//! SOCKS5 UDP ASSOCIATE (RFC 1928 section 7) on direct routes: one UDP socket per
//! association relays datagrams between the client that asked and the targets it names.
//!
//! Bounded: datagrams are at most 64 KiB, fragments (FRAG != 0) are dropped, only the
//! client's own address may send, only targets it wrote to may answer (at most
//! [`MAX_PEERS`]), targets obey the destination policy and `[access] connect_ports`,
//! datagrams pay the user's and the address's bandwidth buckets, and the association ends with
//! its TCP control connection, after `idle` without a datagram, or at shutdown's hard stop.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::{TcpStream, UdpSocket};
use tokio_util::sync::CancellationToken;

use crate::session::{Client, Core};
use crate::target::Target;

/// Targets an association may hear back from, at most.
const MAX_PEERS: usize = 1024;

/// Relays datagrams for `client` until the control connection ends. `expected`: the address
/// the client said it would send from (`0.0.0.0:0` or port 0: any port of its IP).
pub async fn relay(
    core: &Core,
    mut control: TcpStream,
    udp: UdpSocket,
    client: &Client,
    expected: SocketAddr,
    idle: Duration,
    stop: &CancellationToken,
) {
    let client_ip = crate::target::normalize(client.addr.ip());
    let mut client_addr: Option<SocketAddr> =
        (expected.port() != 0 && !expected.ip().is_unspecified()).then_some(expected);
    let mut peers: HashSet<SocketAddr> = HashSet::new();
    // Each target is routed, resolved and checked once per association (as a tunnel is once
    // per connection), not once per datagram.
    let mut routed: HashMap<Target, SocketAddr> = HashMap::new();
    let mut buf = vec![0u8; 65_536];
    // Datagrams pay the same per-user and per-address buckets as tunnels: a pause here leaves
    // the excess to the socket buffers (UDP's own way of dropping).
    let limits = core.throttles(client);
    let mut ctl = [0u8; 64];
    let (mut sent, mut received) = (0u64, 0u64);
    loop {
        let datagram = tokio::select! {
            r = control.read(&mut ctl) => match r {
                // The association lives as long as its control connection.
                Ok(0) | Err(_) => break,
                Ok(_) => continue,
            },
            r = tokio::time::timeout(idle, udp.recv_from(&mut buf)) => match r {
                Ok(Ok(d)) => d,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "UDP relay socket failed");
                    break;
                }
                Err(_) => {
                    tracing::debug!("UDP association idle: closed");
                    break;
                }
            },
            () = stop.cancelled() => break,
        };
        let (n, from) = datagram;
        let from_client = crate::target::normalize(from.ip()) == client_ip
            && client_addr.is_none_or(|c| c == from);
        if from_client {
            client_addr.get_or_insert(from);
            let Some((target, data)) = parse(&buf[..n]) else {
                continue;
            };
            let addr = match routed.get(&target) {
                Some(addr) => *addr,
                None => match core.udp_destination(&target, client).await {
                    Ok(addr) if routed.len() < MAX_PEERS => {
                        routed.insert(target, addr);
                        addr
                    }
                    Ok(_) => {
                        tracing::debug!(%target, "UDP datagram dropped: too many targets");
                        continue;
                    }
                    Err(e) => {
                        tracing::debug!(%target, error = %e, "UDP datagram dropped");
                        continue;
                    }
                },
            };
            peers.insert(addr);
            limits.up.pay(data.len()).await;
            if udp.send_to(data, addr).await.is_ok() {
                sent += data.len() as u64;
            }
        } else if peers.contains(&from)
            && let Some(to) = client_addr
        {
            limits.down.pay(n).await;
            let mut out = header(from);
            out.extend_from_slice(&buf[..n]);
            if udp.send_to(&out, to).await.is_ok() {
                received += n as u64;
            }
        }
    }
    tracing::info!(
        method = "socks5-udp",
        peer = %client.addr,
        up = sent,
        down = received,
        targets = peers.len(),
        "UDP association closed"
    );
}

/// A client datagram: RSV RSV FRAG ATYP DST.ADDR DST.PORT DATA. `None` for fragments and
/// anything malformed (dropped, as RFC 1928 allows).
fn parse(d: &[u8]) -> Option<(Target, &[u8])> {
    let (&frag, rest) = d.get(2..)?.split_first()?;
    if frag != 0 {
        return None;
    }
    let (&atyp, rest) = rest.split_first()?;
    let (host, rest) = match atyp {
        1 => {
            let a: [u8; 4] = rest.get(..4)?.try_into().ok()?;
            (Ok(IpAddr::from(a)), &rest[4..])
        }
        4 => {
            let a: [u8; 16] = rest.get(..16)?.try_into().ok()?;
            (Ok(IpAddr::from(a)), &rest[16..])
        }
        3 => {
            let (&n, rest) = rest.split_first()?;
            let name = std::str::from_utf8(rest.get(..usize::from(n))?).ok()?;
            (Err(name), &rest[usize::from(n)..])
        }
        _ => return None,
    };
    let port = u16::from_be_bytes(rest.get(..2)?.try_into().ok()?);
    let target = match host {
        Ok(ip) => Target::from_ip(ip, port),
        Err(name) => Target::new(name, port),
    }
    .ok()?;
    Some((target, &rest[2..]))
}

/// The header of a datagram handed to the client: who sent it.
fn header(from: SocketAddr) -> Vec<u8> {
    let mut h = vec![0, 0, 0];
    match from.ip() {
        IpAddr::V4(v4) => {
            h.push(1);
            h.extend_from_slice(&v4.octets());
        }
        IpAddr::V6(v6) => {
            h.push(4);
            h.extend_from_slice(&v6.octets());
        }
    }
    h.extend_from_slice(&from.port().to_be_bytes());
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datagram_headers() {
        let mut d = vec![0, 0, 0, 1, 127, 0, 0, 1, 0x1f, 0x90];
        d.extend_from_slice(b"data");
        let (t, data) = parse(&d).unwrap();
        assert_eq!(
            (t.to_string().as_str(), data),
            ("127.0.0.1:8080", b"data".as_slice())
        );
        let mut named = vec![0, 0, 0, 3, 4];
        named.extend_from_slice(b"a.tt");
        named.extend_from_slice(&[0, 53]);
        assert_eq!(parse(&named).unwrap().0.to_string(), "a.tt:53");
        assert!(
            parse(&[0, 0, 1, 1, 127, 0, 0, 1, 0, 1]).is_none(),
            "fragments are dropped"
        );
        assert!(parse(&[0, 0, 0, 9]).is_none());
        assert!(parse(&[0, 0, 0, 1, 127]).is_none());
        assert_eq!(
            header("10.0.0.1:53".parse().unwrap()),
            vec![0, 0, 0, 1, 10, 0, 0, 1, 0, 53]
        );
    }
}
