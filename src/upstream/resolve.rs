//! Name resolution behind a trait, so that tests (and later, caching or DoH resolvers) can stand
//! in for the system resolver.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;

/// A boxed resolution future.
pub type Resolving = Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send>>;

/// Resolves a host name to socket addresses.
pub trait Resolve: Send + Sync + 'static {
    /// Looks up `host` and pairs every address with `port`. An empty list counts as a failure.
    fn resolve(&self, host: &str, port: u16) -> Resolving;
}

/// The operating system's resolver (`getaddrinfo` on a blocking thread, via tokio).
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve(&self, host: &str, port: u16) -> Resolving {
        let host = host.to_owned();
        Box::pin(async move {
            Ok(tokio::net::lookup_host((host.as_str(), port))
                .await?
                .collect())
        })
    }
}
