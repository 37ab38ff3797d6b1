//! Happy Eyeballs v2 (RFC 8305): when a name has several addresses, race connection attempts
//! instead of waiting for each in turn, so a dead address costs at most the attempt delay.
//!
//! Addresses are ordered with the families interleaved, IPv6 first (section 4). The first
//! attempt starts at once; each further one starts [`ATTEMPT_DELAY`] after the previous, or
//! as soon as every attempt started so far has failed. The first attempt to succeed wins and
//! the ones still pending are dropped (their sockets closed). Generic over what an attempt
//! is: a TCP connect for direct dials, a whole dial through a `socks5://` hop that was given
//! a locally resolved address.

use std::net::SocketAddr;
use std::pin::pin;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::time::Instant;

/// The "Connection Attempt Delay" of RFC 8305 section 5 (its recommended value).
pub const ATTEMPT_DELAY: Duration = Duration::from_millis(250);

/// `addrs` in the order they are tried: IPv6 and IPv4 alternating, starting with IPv6, each
/// family keeping the resolver's order.
pub fn interleave(addrs: Vec<SocketAddr>) -> Vec<SocketAddr> {
    let (v6, v4): (Vec<_>, Vec<_>) = addrs.into_iter().partition(SocketAddr::is_ipv6);
    let mut out = Vec::with_capacity(v6.len() + v4.len());
    let (mut a, mut b) = (v6.into_iter(), v4.into_iter());
    loop {
        match (a.next(), b.next()) {
            (None, None) => return out,
            (x, y) => out.extend(x.into_iter().chain(y)),
        }
    }
}

/// Races `attempt` over `addrs` (already ordered) as described in the module docs. On
/// failure, every address tried with its error, in the order the attempts ended.
pub async fn race<T, E, F, Fut>(
    addrs: &[SocketAddr],
    delay: Duration,
    mut attempt: F,
) -> Result<(SocketAddr, T), Vec<(SocketAddr, E)>>
where
    F: FnMut(SocketAddr) -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    if let [only] = addrs {
        // The common case: no timer, no set.
        return match attempt(*only).await {
            Ok(t) => Ok((*only, t)),
            Err(e) => Err(vec![(*only, e)]),
        };
    }
    let mut pending = FuturesUnordered::new();
    let mut failed = Vec::new();
    let mut next = addrs.iter();
    let mut timer = pin!(tokio::time::sleep(Duration::ZERO));
    let mut more = true;
    loop {
        tokio::select! {
            biased;
            Some((addr, res)) = pending.next(), if !pending.is_empty() => match res {
                Ok(t) => return Ok((addr, t)),
                Err(e) => {
                    failed.push((addr, e));
                    if more {
                        // Nothing to wait for: start the next attempt now.
                        timer.as_mut().reset(Instant::now());
                    } else if pending.is_empty() {
                        return Err(failed);
                    }
                }
            },
            () = &mut timer, if more => match next.next() {
                Some(&addr) => {
                    let fut = attempt(addr);
                    pending.push(async move { (addr, fut.await) });
                    timer.as_mut().reset(Instant::now() + delay);
                }
                None => {
                    more = false;
                    if pending.is_empty() {
                        return Err(failed);
                    }
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn families_alternate_starting_with_ipv6() {
        let got = interleave(vec![
            a("192.0.2.1:1"),
            a("192.0.2.2:1"),
            a("192.0.2.3:1"),
            a("[2001:db8::1]:1"),
            a("[2001:db8::2]:1"),
        ]);
        assert_eq!(
            got,
            vec![
                a("[2001:db8::1]:1"),
                a("192.0.2.1:1"),
                a("[2001:db8::2]:1"),
                a("192.0.2.2:1"),
                a("192.0.2.3:1"),
            ]
        );
    }

    /// Scripted attempts on tokio's paused clock: (delay, succeeds) per address.
    async fn run(script: &[(u64, bool)]) -> (Result<usize, Vec<usize>>, Duration, Vec<u64>) {
        let addrs: Vec<SocketAddr> = (0..script.len())
            .map(|i| a(&format!("192.0.2.{}:1", i + 1)))
            .collect();
        let started = Instant::now();
        let mut starts = Vec::new();
        let res = race(&addrs, ATTEMPT_DELAY, |addr| {
            let i = addrs.iter().position(|x| *x == addr).unwrap();
            starts.push(started.elapsed().as_millis() as u64);
            let (wait, ok) = script[i];
            async move {
                tokio::time::sleep(Duration::from_millis(wait)).await;
                if ok { Ok(i) } else { Err(i) }
            }
        })
        .await;
        let res = res
            .map(|(_, i)| i)
            .map_err(|f| f.into_iter().map(|(_, i)| i).collect());
        (res, started.elapsed(), starts)
    }

    /// A hanging first address costs the attempt delay, not the connect timeout.
    #[tokio::test(start_paused = true)]
    async fn a_hanging_address_costs_only_the_delay() {
        let (res, took, starts) = run(&[(60_000, true), (10, true)]).await;
        assert_eq!(res, Ok(1));
        assert_eq!(starts, vec![0, 250]);
        assert_eq!(took, Duration::from_millis(260));
    }

    /// A refused attempt starts the next at once; all failing lists every address.
    #[tokio::test(start_paused = true)]
    async fn failures_start_the_next_at_once_and_are_all_named() {
        let (res, took, starts) = run(&[(5, false), (5, false), (5, false)]).await;
        assert_eq!(res, Err(vec![0, 1, 2]));
        assert_eq!(starts, vec![0, 5, 10]);
        assert_eq!(took, Duration::from_millis(15));
    }

    /// Attempts overlap: a later one may win while an earlier one is still pending.
    #[tokio::test(start_paused = true)]
    async fn first_to_connect_wins() {
        let (res, took, starts) = run(&[(1_000, true), (1_000, true), (100, true)]).await;
        assert_eq!(res, Ok(2));
        assert_eq!(starts, vec![0, 250, 500]);
        assert_eq!(took, Duration::from_millis(600));
    }
}
