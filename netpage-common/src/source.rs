//! Source validation on the virtual side: a mapping's addresses are accepted as a packet's
//! source only from the port of the node that owns its VM.
//!
//! A packet that arrives on a virtual-side port (a VM's tap, a gateway's client port)
//! with a source that belongs to a mapping, its virtual address (VA) or its real address
//! (RA), came from that mapping's VM only if the port owns the VM. From any other port it
//! is spoofed: a client posing as a VM, or a guest sending as another VM. It is dropped,
//! the one packet the program does not pass, and counted as [`Counter::Spoofed`]. A
//! source that is neither (a client's own address) is not the table's business.

use crate::counters::Counter;

/// Where a packet's source address stands in the node's tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// Neither a virtual nor a real address of a mapping.
    Foreign,
    /// A mapping's address (its VA, or its RA) whose VM the port with index `owner` of
    /// this node owns; `None` if no port of the node does.
    Mapped { owner: Option<u32> },
}

impl Source {
    /// What becomes of a packet with this source arriving on the port with index
    /// `ingress`: it goes on (`Ok`) or is dropped as spoofed.
    pub const fn verdict(self, ingress: u32) -> Result<(), Counter> {
        match self {
            Source::Foreign => Ok(()),
            // Index 0 names no interface: an owner record of 0 owns nothing.
            Source::Mapped { owner: Some(o) } if o != 0 && o == ingress => Ok(()),
            Source::Mapped { .. } => Err(Counter::Spoofed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mapped_source_goes_on_only_from_its_owner() {
        assert_eq!(Source::Foreign.verdict(3), Ok(()));
        assert_eq!(Source::Mapped { owner: Some(3) }.verdict(3), Ok(()));
        for (owner, ingress) in [(Some(3), 4), (None, 3), (Some(0), 0), (None, 0)] {
            assert_eq!(
                Source::Mapped { owner }.verdict(ingress),
                Err(Counter::Spoofed),
                "owner {owner:?}, ingress {ingress}"
            );
        }
        assert!(Counter::Spoofed.is_dropped());
    }
}
