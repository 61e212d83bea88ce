//! The destination host's neighbour entry for the guest, so that packets for it wait in
//! the destination's tap queue while it is paused instead of waiting for ARP.

use std::{net::IpAddr, process::Command};

use super::{MigrateError, Neighbour};
use crate::qmp::Qmp;

/// The guest's MAC: given, or the only NIC's as the source QEMU reports it.
pub(super) async fn guest_mac(src: &mut Qmp, n: &Neighbour) -> Result<String, MigrateError> {
    if let Some(mac) = &n.mac {
        return Ok(mac.clone());
    }
    let nics = src.query_rx_filter(None).await?;
    match nics.as_slice() {
        [one] => Ok(one.main_mac.clone()),
        _ => Err(MigrateError::Mac(format!(
            "the source VM has {} network devices: give the guest's MAC with --mac",
            nics.len()
        ))),
    }
}

/// Runs `ip [-n NETNS] neigh OP VM [lladdr MAC nud permanent] dev IFACE`.
pub(super) fn neigh(n: &Neighbour, op: &str, vm: IpAddr, mac: Option<&str>) -> Result<(), String> {
    let mut cmd = Command::new("ip");
    if let Some(ns) = &n.netns {
        cmd.args(["-n", ns]);
    }
    cmd.args(["neigh", op, &vm.to_string()]);
    if let Some(mac) = mac {
        cmd.args(["lladdr", mac, "nud", "permanent"]);
    }
    cmd.args(["dev", &n.iface]);
    let out = cmd.output().map_err(|e| format!("cannot run ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
    }
}
