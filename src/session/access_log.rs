//! The access log: one record per request or tunnel, as today's text line (through `tracing`),
//! as one JSON object per line, or not at all.
//!
//! A JSON line is serialized into a buffer of the connection's thread and appended to one
//! shared buffer under a short lock; a writer thread swaps that buffer out every 50 ms and
//! writes it in one go. No allocation, channel message or wake-up per line, and a slow disk
//! never stalls a connection: past [`MAX_PENDING`] bytes waiting, lines are dropped and
//! counted (the count is logged). The file is reopened on request (SIGHUP), for logrotate.

use std::cell::RefCell;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;

/// How access records are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// A `tracing` info line (stderr), as before.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
    Off,
}

impl Format {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "text" => Self::Text,
            "json" => Self::Json,
            "off" => Self::Off,
            _ => return None,
        })
    }
}

/// One request or tunnel, as the JSON access log writes it.
#[derive(Debug, Serialize)]
pub struct Record<'a> {
    /// RFC 3339, UTC, milliseconds: formatted straight into the line.
    #[serde(serialize_with = "as_display")]
    pub ts: humantime::Rfc3339Timestamp,
    pub client: SocketAddr,
    pub user: Option<&'a str>,
    /// `connect` or `http`.
    pub protocol: &'static str,
    pub method: &'a str,
    pub target: String,
    pub route: &'a str,
    pub member: Option<&'a str>,
    pub status: u16,
    /// The `Proxy-Status` error type, when it failed.
    pub error: Option<&'static str>,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub duration_ms: u64,
    pub dial_ms: Option<f64>,
    /// Each hop's handshake, in milliseconds.
    pub hops: Vec<f64>,
    /// The address dialed, when viaduct resolved the target's name.
    pub resolved: Option<SocketAddr>,
}

fn as_display<S: serde::Serializer>(v: &impl std::fmt::Display, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

/// Bytes waiting for the writer at most (16 MiB, over 50,000 lines); past this, lines are
/// dropped (and counted) rather than waited for.
const MAX_PENDING: usize = 16 << 20;

/// What connections and the writer thread share.
#[derive(Default)]
struct Shared {
    /// Lines not yet written.
    pending: Mutex<Vec<u8>>,
    reopen: AtomicBool,
    closed: AtomicBool,
}

/// Where JSON records go.
pub struct AccessLog {
    format: Format,
    shared: Option<Arc<Shared>>,
    dropped: AtomicU64,
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLog")
            .field("format", &self.format)
            .finish()
    }
}

impl Default for AccessLog {
    fn default() -> Self {
        Self::new(Format::Text, None)
    }
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        if let Some(shared) = &self.shared {
            shared.closed.store(true, Ordering::Relaxed);
        }
    }
}

thread_local! {
    /// The line being serialized, reused by every record of this thread.
    static LINE: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(512));
}

impl AccessLog {
    /// `file`: where JSON lines go (opened for appending, created when missing); stdout
    /// without one. Text lines always go through `tracing`.
    pub fn new(format: Format, file: Option<PathBuf>) -> Self {
        let shared = (format == Format::Json).then(|| {
            let shared = Arc::new(Shared::default());
            let theirs = Arc::clone(&shared);
            let spawned = std::thread::Builder::new()
                .name("viaduct-access-log".into())
                .spawn(move || writer(&theirs, file));
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start the access log writer");
            }
            shared
        });
        Self {
            format,
            shared,
            dropped: AtomicU64::new(0),
        }
    }

    pub fn format(&self) -> Format {
        self.format
    }

    /// Writes one JSON record (when the format is JSON).
    pub fn write(&self, record: &Record<'_>) {
        let Some(shared) = &self.shared else { return };
        let appended = LINE.with_borrow_mut(|line| {
            line.clear();
            if serde_json::to_writer(&mut *line, record).is_err() {
                return true;
            }
            line.push(b'\n');
            let Ok(mut pending) = shared.pending.lock() else {
                return false;
            };
            if pending.len() + line.len() > MAX_PENDING {
                return false;
            }
            pending.extend_from_slice(line);
            true
        });
        if !appended {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                tracing::warn!(
                    dropped = n,
                    "access log lines dropped: the writer cannot keep up"
                );
            }
        }
    }

    /// Reopens the file (after logrotate moved it).
    pub fn reopen(&self) {
        if let Some(shared) = &self.shared {
            shared.reopen.store(true, Ordering::Relaxed);
        }
    }
}

fn open(file: &Option<PathBuf>) -> Box<dyn Write + Send> {
    match file {
        Some(path) => match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            Ok(f) => Box::new(f),
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "cannot open the access log; writing it to stdout");
                Box::new(std::io::stdout())
            }
        },
        None => Box::new(std::io::stdout()),
    }
}

/// How often the writer wakes to drain the queue: lines reach the file within this.
const DRAIN_EVERY: std::time::Duration = std::time::Duration::from_millis(50);

/// The writer thread: wakes every [`DRAIN_EVERY`], swaps the pending lines out (a spare
/// buffer takes their place, so neither side allocates once warm), writes them in one go and
/// flushes. It never sleeps on a lock or a channel a connection would have to wake.
fn writer(shared: &Shared, file: Option<PathBuf>) {
    let mut out = open(&file);
    let mut batch: Vec<u8> = Vec::new();
    loop {
        let closed = shared.closed.load(Ordering::Relaxed);
        // Reopen before writing: a record made after the SIGHUP (the reload is done before
        // systemd hears READY=1 again) must land in the new file, not the rotated one.
        if shared.reopen.swap(false, Ordering::Relaxed) {
            out = open(&file);
        }
        if let Ok(mut pending) = shared.pending.lock() {
            std::mem::swap(&mut *pending, &mut batch);
        }
        if !batch.is_empty() {
            let _ = out.write_all(&batch);
            let _ = out.flush();
            batch.clear();
            // A burst's buffer is not kept forever.
            batch.shrink_to(1 << 20);
        }
        if closed {
            return;
        }
        std::thread::sleep(DRAIN_EVERY);
    }
}

/// Milliseconds with two decimals.
pub fn ms(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 100_000.0).round() / 100.0
}
