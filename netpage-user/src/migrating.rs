//! `netpage migrate`, on this machine's nodes or through the directory: runs the
//! migration and draws its timeline if asked, or recovers an interrupted one.

use anyhow::Result;
use netpage::{
    migrate::{self, EdgeSpec},
    outfile::OutFile,
};

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
    // Checked before the migration: after it, a path netpage may not write costs the
    // timeline only.
    let timeline = m.timeline.as_deref().map(OutFile::open).transpose()?;
    let opts = m.options(edges);
    let report = runtime.block_on(migrate::migrate(&opts))?;
    if let Some(out) = timeline {
        let title = format!("netpage migrate {} -> {}", report.vm, report.to);
        let path = out.path().to_owned();
        if let Err(e) = out.write(report.timeline.svg(&title).as_bytes()) {
            eprintln!(
                "netpage: warning: the timeline was not written to {}: {:#}",
                path.display(),
                anyhow::Error::from(e)
            );
        }
    }
    Ok(Output::Migrated(Box::new(report)))
}
