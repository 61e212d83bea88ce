//! The nodes a migration switches (opened, checked to agree, their reverse entries
//! installed together) and the destination host's neighbour entry for the guest.

use std::{net::IpAddr, path::PathBuf, process::Command};

use super::{MigrateError, MigrateOptions, Neighbour};
use crate::{
    node::{Node, OpenNode},
    ops::{self, now_ms},
    qmp::Qmp,
    table::{BpfTable, PageTable},
};

/// Opens every node to write (refused on a node an agent manages) and ends the drains
/// that are over, as every command does first.
pub(super) fn open_nodes(opts: &MigrateOptions) -> Result<Vec<(PathBuf, OpenNode)>, MigrateError> {
    opts.nodes
        .iter()
        .map(|dir| {
            let mut n = Node::new(dir)
                .open_for_write()
                .map_err(|source| MigrateError::Node {
                    dir: dir.clone(),
                    source,
                })?;
            ops::gc(&mut n.table, now_ms())?;
            Ok((dir.clone(), n))
        })
        .collect()
}

/// Installs R2V[to] = vm on every node, or on none: a failure undoes those installed.
pub(super) fn install_reverse(
    nodes: &mut [(PathBuf, OpenNode)],
    to: IpAddr,
    vm: IpAddr,
) -> Result<(), MigrateError> {
    for i in 0..nodes.len() {
        if let Err(e) = nodes[i].1.table.set_reverse(to, vm) {
            for (_, n) in &mut nodes[..i] {
                let _ = n.table.remove_reverse(to);
            }
            return Err(MigrateError::Table(e));
        }
    }
    Ok(())
}

/// Where every node has the VM now (they must agree), checking that it may move to `to`.
pub(super) fn where_is(
    nodes: &[(PathBuf, OpenNode)],
    vm: IpAddr,
    to: IpAddr,
) -> Result<IpAddr, MigrateError> {
    let named: Vec<(String, &BpfTable)> = nodes
        .iter()
        .map(|(dir, n)| (dir.display().to_string(), &n.table))
        .collect();
    Ok(ops::locate(
        named.iter().map(|(d, t)| (d.as_str(), *t)),
        vm,
        to,
    )?)
}

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
