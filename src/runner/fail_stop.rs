//! Fail-stop on a broken journal: once a journal write or flush fails (disk full, I/O error),
//! nothing the worker would journal can be made durable, so it stops taking work. [`failed`]
//! waits for the journal's first failure; [`Shared::fail_stop`] logs the one clear error (what
//! failed, which folder, how much space is left), records the reason for `/readyz` and `citadel
//! status`, and returns the error the runner exits with after its drain (claimed jobs handed
//! back, running ones finished or interrupted). This module never retries the journal.

use std::path::Path;

use tokio::sync::watch;

use super::Shared;

/// Waits until the journal reports a failure and returns it (pending forever while it works).
pub(super) async fn failed(failure: &mut watch::Receiver<Option<String>>) -> String {
    let why = failure
        .wait_for(Option::is_some)
        .await
        .map(|why| why.clone().unwrap_or_default());
    match why {
        Ok(why) => why,
        Err(_) => std::future::pending().await, // the journal is gone: nothing more to report
    }
}

impl Shared {
    /// Records and logs the journal failure `why`; the error `citadel work` exits with.
    pub(super) fn fail_stop(&self, why: String) -> anyhow::Error {
        let dir = self.journal.path();
        let message = format!(
            "the journal at {} cannot be written ({why}); {} left on its file system. \
             Stopping: no more jobs are taken and claimed ones are handed back",
            dir.display(),
            space_left(dir)
        );
        tracing::error!(journal = %dir.display(), error = %why, "{message}");
        *self
            .counters
            .journal_failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(message.clone());
        anyhow::anyhow!(message)
    }
}

fn space_left(dir: &Path) -> String {
    match rustix::fs::statvfs(dir) {
        Ok(s) => crate::format::bytes(s.f_bavail.saturating_mul(s.f_frsize)),
        Err(e) => format!("unknown space ({e})"),
    }
}
