//! Switching a VM mapped with method `encap` through the directory: one transaction that
//! rewrites its segment entry, conditional on the entry being as read. Nothing is reserved
//! first and nothing drains: no reverse entry names a locator.

use std::{net::IpAddr, time::Duration};

use super::{DirError, DirSwitched, Directory, View, laggards, switch::Method};
use crate::ops;

impl Directory {
    /// Moves `vm`, which `view` maps with method `encap`, to the node of locator `to`,
    /// then waits for every live node to apply it unless `wait` is `None`. Of two
    /// concurrent switches of one VM exactly one wins; the other changes nothing.
    pub(super) async fn switch_segment(
        &mut self,
        mut view: View,
        vm: IpAddr,
        to: IpAddr,
        wait: Option<Duration>,
    ) -> Result<DirSwitched, DirError> {
        let switched = ops::segment::switch_many(&mut [("directory".into(), &mut view)], vm, to)?;
        let mut out = DirSwitched::new(Method::Encap, vm, switched.from, to, wait.is_some());
        if switched.from == to {
            return Ok(out);
        }
        let sent = std::time::Instant::now();
        let Some(revision) = self.commit(&view).await? else {
            let now = self.view().await?;
            let now = match (now.read_seg(vm), now.read_vm(vm)) {
                (Some(seg), _) => seg.value.locator.to_string(),
                (None, Some(at)) => at.value.real.to_string(),
                (None, None) => "deleted".into(),
            };
            return Err(DirError::Conflict { vm, now });
        };
        out.revision = revision;
        out.txn_ms = sent.elapsed().as_secs_f64() * 1e3;
        if let Some(timeout) = wait {
            out.nodes = self.wait_applied(revision, timeout, sent, &[]).await?;
            out.unconfirmed = laggards(&out.nodes);
        }
        Ok(out)
    }
}
