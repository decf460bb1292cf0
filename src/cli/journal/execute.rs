//! `citadel journal replay --job J --execute`: re-runs a recorded delivery's handler on this
//! machine, printing its chunks and result. It never journals, publishes or settles anything.

use std::path::Path;

use anyhow::{bail, Context as _};

/// Runs a recorded job's handler here, printing chunks as they come and then the result.
pub(super) async fn execute_locally(
    job: citadel_transports::Job,
    enable_shell: bool,
    data_dir: &Path,
) -> anyhow::Result<()> {
    use crate::handlers::{ChunkSink, JobContext, Registry, ShellPolicy};
    let registry = Registry::builtin(ShellPolicy {
        enabled: enable_shell,
        workspace: data_dir.join("workspace"),
        ..ShellPolicy::default()
    })
    .with_node_handlers(
        crate::handlers::DownloadPolicy::new(data_dir.join("models")),
        crate::handlers::ExtractionPolicy::default(),
    )
    .context("building the HTTP client")?;
    let Some(handler) = registry.get(&job.job_type) else {
        bail!(
            "job type `{}` cannot run here; supported: {}",
            job.job_type,
            registry.names().join(", ")
        );
    };
    eprintln!(
        "re-running {} ({}) locally; nothing is journaled or settled",
        job.id, job.job_type
    );
    let (chunks, mut rx) = ChunkSink::channel(256);
    let ctx = JobContext {
        job,
        cancel: tokio_util::sync::CancellationToken::new(),
        deadline: None,
        chunks,
    };
    let printer = tokio::spawn(async move {
        while let Some(chunk) = rx.recv().await {
            eprint!("{chunk}");
        }
    });
    let result = handler.run(&ctx).await;
    drop(ctx);
    let _ = printer.await;
    match result {
        Ok(value) => {
            println!("{}", serde_json::to_string_pretty(&value)?);
            Ok(())
        }
        Err(e) => bail!(
            "the job failed ({}): {}",
            if e.retryable {
                "retryable"
            } else {
                "permanent"
            },
            e.message
        ),
    }
}
