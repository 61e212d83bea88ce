//! `netpage migrate`, on this machine's nodes or through the directory: runs the
//! migration and draws its timeline if asked, or recovers an interrupted one.

use anyhow::{Context, Result};
use netpage::migrate::{self, EdgeSpec};

use crate::{cli::MigrateArgs, report::Output};

/// Migrates as `m` says, switching `edges`.
pub fn run(m: &MigrateArgs, edges: EdgeSpec) -> Result<Output> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    if m.recover {
        let report =
            runtime.block_on(migrate::recover(m.vm, &m.state_dir, edges, m.drain.drain))?;
        return Ok(Output::Recovered(Box::new(report)));
    }
    let opts = m.options(edges);
    let report = runtime.block_on(migrate::migrate(&opts))?;
    if let Some(path) = &m.timeline {
        let title = format!("netpage migrate {} -> {}", report.vm, report.to);
        std::fs::write(path, report.timeline.svg(&title))
            .with_context(|| format!("writing the timeline to {}", path.display()))?;
    }
    Ok(Output::Migrated(Box::new(report)))
}
