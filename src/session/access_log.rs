//! The access log: one record per request or tunnel, as today's text line (through `tracing`),
//! as one JSON object per line, or not at all.
//!
//! JSON lines go to a writer thread through a bounded channel, so a slow disk never stalls a
//! connection: when the channel is full the line is dropped and counted (the count is logged).
//! The file is reopened on request (SIGHUP), for logrotate.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;

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
    /// RFC 3339, UTC, milliseconds.
    pub ts: String,
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

enum Message {
    Line(Vec<u8>),
    Reopen,
}

/// Queued lines at most; past this, lines are dropped (and counted) rather than waited for.
const QUEUE: usize = 65_536;

/// Where JSON records go.
pub struct AccessLog {
    format: Format,
    tx: Option<mpsc::SyncSender<Message>>,
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

impl AccessLog {
    /// `file`: where JSON lines go (opened for appending, created when missing); stdout
    /// without one. Text lines always go through `tracing`.
    pub fn new(format: Format, file: Option<PathBuf>) -> Self {
        let tx = (format == Format::Json).then(|| {
            let (tx, rx) = mpsc::sync_channel(QUEUE);
            let spawned = std::thread::Builder::new()
                .name("viaduct-access-log".into())
                .spawn(move || writer(rx, file));
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start the access log writer");
            }
            tx
        });
        Self {
            format,
            tx,
            dropped: AtomicU64::new(0),
        }
    }

    pub fn format(&self) -> Format {
        self.format
    }

    /// Writes one JSON record (when the format is JSON).
    pub fn write(&self, record: &Record<'_>) {
        let Some(tx) = &self.tx else { return };
        let Ok(mut line) = serde_json::to_vec(record) else {
            return;
        };
        line.push(b'\n');
        if tx.try_send(Message::Line(line)).is_err() {
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
        if let Some(tx) = &self.tx {
            let _ = tx.try_send(Message::Reopen);
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

/// The writer thread: wakes every [`DRAIN_EVERY`], writes what is queued in one buffered go
/// and flushes. It never blocks in `recv`, so a connection sending a line never has to wake
/// it (a futex call per line costs more than the line at 10,000 tunnels a second).
fn writer(rx: mpsc::Receiver<Message>, file: Option<PathBuf>) {
    use std::sync::mpsc::TryRecvError;
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, open(&file));
    loop {
        let mut wrote = false;
        loop {
            match rx.try_recv() {
                Ok(Message::Line(line)) => {
                    let _ = out.write_all(&line);
                    wrote = true;
                }
                Ok(Message::Reopen) => {
                    let _ = out.flush();
                    out = std::io::BufWriter::with_capacity(64 * 1024, open(&file));
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    let _ = out.flush();
                    return;
                }
            }
        }
        if wrote {
            let _ = out.flush();
        }
        std::thread::sleep(DRAIN_EVERY);
    }
}

/// Milliseconds with two decimals.
pub fn ms(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 100_000.0).round() / 100.0
}
