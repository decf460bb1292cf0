//! Reading a running worker's journal. sled locks its files, so while a worker holds the journal
//! no other process can open it; the worker serves it instead on a Unix socket beside the journal
//! folder ([`crate::socket_path`], mode 0600, so only the owner can connect). `citadel journal`
//! opens the journal directly when nobody holds it and goes through the socket otherwise
//! ([`JournalAccess::open`]); either way it sees the same events.
//!
//! The protocol is newline-delimited JSON: one request line, then response lines. This module
//! serves reads and compaction only; it must never append events.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{UnixListener, UnixStream};

use crate::error::{JournalError, Result};
use crate::journal::{Damage, Journal, JournalInfo, JournalOptions};
use crate::retention::{CompactReport, RetentionPolicy};
use crate::{socket_path, JobEvent};

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Request {
    Events { from: u64 },
    Info,
    Compact { policy: RetentionPolicy },
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Response {
    Event(JobEvent),
    Damaged(Damage),
    End,
    Info(JournalInfo),
    Compacted(CompactReport),
    Error(String),
}

/// Serves `journal` on its socket until the returned task is aborted or the process exits.
pub async fn serve(journal: Journal) -> Result<tokio::task::JoinHandle<()>> {
    let path = socket_path(journal.path());
    let err = |e: std::io::Error| JournalError::Remote {
        path: path.clone(),
        detail: e.to_string(),
    };
    // We hold the journal's lock, so a socket file left here belongs to a dead process.
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let listener = UnixListener::bind(&path).map_err(err)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    Ok(tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    let journal = journal.clone();
                    tokio::spawn(async move {
                        if let Err(e) = answer(&journal, stream).await {
                            tracing::debug!(error = %e, "journal socket client went away");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "journal socket accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    }))
}

async fn answer(journal: &Journal, stream: UnixStream) -> std::io::Result<()> {
    let (read, write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    let mut out = BufWriter::new(write);
    let Some(line) = lines.next_line().await? else {
        return Ok(());
    };
    let send = |r: &Response| {
        let mut line = serde_json::to_vec(r).expect("responses always serialize");
        line.push(b'\n');
        line
    };
    match serde_json::from_str::<Request>(&line) {
        Err(e) => {
            out.write_all(&send(&Response::Error(format!("bad request: {e}"))))
                .await?
        }
        Ok(Request::Info) => {
            out.write_all(&send(&Response::Info(journal.info())))
                .await?
        }
        Ok(Request::Compact { policy }) => {
            let r = match journal.compact(&policy) {
                Ok(report) => Response::Compacted(report),
                Err(e) => Response::Error(e.to_string()),
            };
            out.write_all(&send(&r)).await?;
        }
        Ok(Request::Events { from }) => {
            for item in journal.events(from) {
                let r = match item {
                    Ok(Ok(ev)) => Response::Event(ev),
                    Ok(Err(d)) => Response::Damaged(d),
                    Err(e) => Response::Error(e.to_string()),
                };
                out.write_all(&send(&r)).await?;
            }
            out.write_all(&send(&Response::End)).await?;
        }
    }
    out.flush().await
}

/// A client of a running worker's journal socket.
#[derive(Debug, Clone)]
pub struct RemoteJournal {
    socket: PathBuf,
}

impl RemoteJournal {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
        }
    }

    fn err(&self, detail: impl std::fmt::Display) -> JournalError {
        JournalError::Remote {
            path: self.socket.clone(),
            detail: detail.to_string(),
        }
    }

    async fn call(&self, request: &Request) -> Result<Vec<Response>> {
        let stream = UnixStream::connect(&self.socket)
            .await
            .map_err(|e| self.err(e))?;
        let (read, mut write) = stream.into_split();
        let mut line = serde_json::to_vec(request).expect("requests always serialize");
        line.push(b'\n');
        write.write_all(&line).await.map_err(|e| self.err(e))?;
        let mut lines = BufReader::new(read).lines();
        let mut out = Vec::new();
        while let Some(line) = lines.next_line().await.map_err(|e| self.err(e))? {
            match serde_json::from_str::<Response>(&line).map_err(|e| self.err(e))? {
                Response::Error(e) => return Err(self.err(e)),
                Response::End => return Ok(out),
                done @ (Response::Info(_) | Response::Compacted(_)) => {
                    out.push(done);
                    return Ok(out);
                }
                r => out.push(r),
            }
        }
        Err(self.err("the worker closed the connection before answering"))
    }

    pub async fn events(&self, from: u64) -> Result<Vec<Result<JobEvent, Damage>>> {
        let responses = self.call(&Request::Events { from }).await?;
        Ok(responses
            .into_iter()
            .filter_map(|r| match r {
                Response::Event(ev) => Some(Ok(ev)),
                Response::Damaged(d) => Some(Err(d)),
                _ => None,
            })
            .collect())
    }

    pub async fn info(&self) -> Result<JournalInfo> {
        match self.call(&Request::Info).await?.pop() {
            Some(Response::Info(info)) => Ok(info),
            _ => Err(self.err("unexpected answer to `info`")),
        }
    }

    pub async fn compact(&self, policy: &RetentionPolicy) -> Result<CompactReport> {
        let policy = policy.clone();
        match self.call(&Request::Compact { policy }).await?.pop() {
            Some(Response::Compacted(report)) => Ok(report),
            _ => Err(self.err("unexpected answer to `compact`")),
        }
    }
}

/// Read access to a journal, wherever it is held.
#[derive(Debug, Clone)]
pub enum JournalAccess {
    /// Nobody held it: opened directly, without recovery (inspection changes nothing).
    Local(Journal),
    /// A running worker holds it: read through its socket.
    Remote(RemoteJournal),
}

impl JournalAccess {
    /// Opens the journal in `dir` for inspection, through the worker's socket if one holds it.
    pub fn open(dir: &Path) -> Result<Self> {
        match Journal::open(dir, JournalOptions::inspect()) {
            Ok((journal, _)) => Ok(Self::Local(journal)),
            Err(JournalError::Locked { socket, .. }) if socket.exists() => {
                Ok(Self::Remote(RemoteJournal::new(socket)))
            }
            Err(e) => Err(e),
        }
    }

    pub fn is_remote(&self) -> bool {
        matches!(self, Self::Remote(_))
    }

    /// Every event from `from` on (and damaged entries, reported in place).
    pub async fn events(&self, from: u64) -> Result<Vec<Result<JobEvent, Damage>>> {
        match self {
            Self::Local(j) => j.events(from).collect(),
            Self::Remote(r) => r.events(from).await,
        }
    }

    pub async fn info(&self) -> Result<JournalInfo> {
        match self {
            Self::Local(j) => Ok(j.info()),
            Self::Remote(r) => r.info().await,
        }
    }

    pub async fn compact(&self, policy: &RetentionPolicy) -> Result<CompactReport> {
        match self {
            Self::Local(j) => j.compact(policy),
            Self::Remote(r) => r.compact(policy).await,
        }
    }
}
