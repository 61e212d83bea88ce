//! Switching a VM mapped with method `encap` through the directory: one transaction that
//! rewrites its segment entry, conditional on the entry being as read. Nothing is reserved
//! first and nothing drains: no reverse entry names a locator.

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use super::{Committed, DirError, DirSwitched, Directory, View, laggards, switch::Method};
use crate::ops;

/// A move of a VM mapped with method `encap`, made ready ahead of its moment: the
/// directory as read, with the VM's segment entry rewritten, so that the switch is the
/// one conditional transaction that commits it.
#[derive(Debug)]
pub struct SegmentMove {
    pub vm: IpAddr,
    pub from: IpAddr,
    pub to: IpAddr,
    switched: View,
}

impl SegmentMove {
    /// The move of `vm`, which `view` maps with method `encap`, to the node of locator
    /// `to`; refused as `switch` refuses it (a VA mapped by paging, a `to` that is no
    /// locator).
    pub fn new(mut view: View, vm: IpAddr, to: IpAddr) -> Result<Self, DirError> {
        let s = ops::segment::switch_many(&mut [("directory".into(), &mut view)], vm, to)?;
        Ok(Self {
            vm,
            from: s.from,
            to,
            switched: view,
        })
    }
}

impl Directory {
    /// Moves `vm`, which `view` maps with method `encap`, to the node of locator `to`,
    /// then waits for every live node to apply it unless `wait` is `None`. Of two
    /// concurrent switches of one VM exactly one wins; the other changes nothing.
    pub(super) async fn switch_segment(
        &mut self,
        view: View,
        vm: IpAddr,
        to: IpAddr,
        wait: Option<Duration>,
    ) -> Result<DirSwitched, DirError> {
        let m = SegmentMove::new(view, vm, to)?;
        let mut out = DirSwitched::new(Method::Encap, vm, m.from, to, wait.is_some());
        if m.from == to {
            return Ok(out);
        }
        let done = self.commit_segment_move(&m).await?;
        out.revision = done.revision;
        out.txn_ms = done.txn_ms;
        if let Some(timeout) = wait {
            out.nodes = self
                .wait_applied(done.revision, timeout, done.sent, &[])
                .await?;
            out.unconfirmed = laggards(&out.nodes);
        }
        Ok(out)
    }

    /// The move's one transaction; [`DirError::Conflict`], naming where the VM is now, if
    /// another writer changed its entry since it was read.
    pub async fn commit_segment_move(&mut self, m: &SegmentMove) -> Result<Committed, DirError> {
        let sent = Instant::now();
        if let Some(revision) = self.commit(&m.switched).await? {
            return Ok(Committed {
                revision,
                sent,
                txn_ms: sent.elapsed().as_secs_f64() * 1e3,
            });
        }
        let now = self.view().await?;
        let now = match (now.read_seg(m.vm), now.read_vm(m.vm)) {
            (Some(seg), _) => seg.value.locator.to_string(),
            (None, Some(at)) => at.value.real.to_string(),
            (None, None) => "deleted".into(),
        };
        Err(DirError::Conflict { vm: m.vm, now })
    }
}
