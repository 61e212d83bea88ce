//! Moving a VM make-before-break: it is plugged into the destination host while still
//! plugged into the source, its traffic is turned to the new port, and only then is the
//! old port unplugged. Nothing is in flight to a VM that is nowhere, so what a test
//! measures across the move is the page-table switch alone.

use super::{
    Host, Vm, World,
    topology::{vm_addr_lines, vm_route_lines},
};

/// A VM plugged into a new host and still into its old one, until [`World::unplug`].
#[must_use = "the old port stays until World::unplug"]
pub struct Plugged {
    vm: Vm,
    from: Host,
    old_if: String,
}

impl World {
    /// Plugs `vm` into `to` through a new veth (VM side `eth0` or `eth1`, host side
    /// `vm.port()`), configures the host's port, runs `attach(to, port)` (e.g. netpage on
    /// the virtual side), then turns the VM's default routes to the new port. The VM keeps
    /// its sockets and stays reachable through the old port until [`World::unplug`].
    pub fn plug(&self, vm: Vm, to: Host, attach: impl FnOnce(Host, &str)) -> Plugged {
        let from = self.vm_host(vm);
        assert_ne!(from, to, "{vm:?} is already at host {to:?}");
        let vm_ns = self.ns(vm.node());
        let old_if = if vm_ns.exec("ip", &["link", "show", "eth0"]).status.success() {
            "eth0"
        } else {
            "eth1"
        };
        let new_if = if old_if == "eth0" { "eth1" } else { "eth0" };
        self.vm_veth(vm, to, new_if);
        vm_ns.ip_batch(&vm_addr_lines(vm, new_if));
        self.setup_port(vm, to);
        attach(to, vm.port());
        vm_ns.ip_batch(&vm_route_lines(new_if));
        self.vm_hosts.lock().unwrap()[vm.index()] = to;
        Plugged {
            vm,
            from,
            old_if: old_if.to_owned(),
        }
    }

    /// Unplugs the VM's old port: `detach(from, port)` first (e.g. netpage), then the old
    /// veth pair is deleted, and with it the old host's routes to the VM.
    pub fn unplug(&self, plugged: Plugged, detach: impl FnOnce(Host, &str)) {
        detach(plugged.from, plugged.vm.port());
        self.ns(plugged.vm.node())
            .ip(&["link", "del", &plugged.old_if]);
    }

    /// Moves `vm` to `to` make-before-break with netpage following the port: attached at
    /// the new host before the VM uses it, detached at the old one before it goes.
    /// `between()` runs while the VM is plugged into both (the moment to switch).
    pub fn replug_vm(&self, vm: Vm, to: Host, between: impl FnOnce()) {
        let plugged = self.plug(vm, to, |host, port| self.attach(host.node(), port, true));
        between();
        self.unplug(plugged, |host, port| self.detach(host.node(), port));
    }
}
