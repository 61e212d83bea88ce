//! `netpage migrate`, on this machine's nodes or through the directory: runs the
//! migration and draws its timeline if asked.

use anyhow::{Context, Result};
use netpage::migrate::{self, EdgeSpec};

use crate::{cli::MigrateArgs, report::Output};

/// Migrates as `m` says, switching `edges`.
pub fn run(m: &MigrateArgs, edges: EdgeSpec) -> Result<Output> {
    let opts = m.options(edges);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(migrate::migrate(&opts))?;
    if let Some(path) = &m.timeline {
        let title = format!("netpage migrate {} -> {}", report.vm, report.to);
        std::fs::write(path, report.timeline.svg(&title))
            .with_context(|| format!("writing the timeline to {}", path.display()))?;
    }
    Ok(Output::Migrated(Box::new(report)))
}
