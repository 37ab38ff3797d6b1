//! The first leg of every dial: resolve a name and open TCP to it.

use std::net::SocketAddr;

use tokio::net::TcpStream;

use super::error::ConnectError;
use super::resolve::Resolve;
use crate::target::{Host, Target};

/// Opens TCP to `target` (resolving names with `resolver`), trying each address in turn.
/// `peer` names the target in errors (`target host:port` or `upstream host:port`).
pub async fn connect_tcp(
    resolver: &dyn Resolve,
    target: &Target,
    peer: &str,
) -> Result<TcpStream, ConnectError> {
    let addrs: Vec<SocketAddr> = match &target.host {
        Host::Ip(ip) => vec![SocketAddr::new(*ip, target.port)],
        Host::Name(name) => {
            let dns = |source| ConnectError::Dns {
                host: name.clone(),
                source,
            };
            match resolver.resolve(name, target.port).await {
                Ok(addrs) if !addrs.is_empty() => addrs,
                Ok(_) => return Err(dns(std::io::Error::other("no addresses"))),
                Err(e) => return Err(dns(e)),
            }
        }
    };
    let mut last = None;
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(stream) => {
                // Small writes (handshakes, interactive tunnels) must not wait for Nagle.
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Err(e) => {
                tracing::debug!(%addr, error = %e, "tcp connect failed");
                last = Some(e);
            }
        }
    }
    Err(ConnectError::io(
        peer,
        last.unwrap_or_else(|| std::io::Error::other("no addresses")),
    ))
}
