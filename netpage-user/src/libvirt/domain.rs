//! The netpage metadata of a libvirt domain: the VM's virtual address and its real
//! address on each host, read from the domain XML with an XML parser.
//!
//! The schema (namespace [`NAMESPACE`], inside the domain's `<metadata>`):
//!
//! ```xml
//! <metadata>
//!   <netpage:vm xmlns:netpage="https://netpage.dev/xmlns/libvirt/1">
//!     <netpage:va>198.19.0.10</netpage:va>
//!     <netpage:real host="hostA">198.18.10.100</netpage:real>
//!     <netpage:real host="hostB">198.18.20.100</netpage:real>
//!   </netpage:vm>
//! </metadata>
//! ```
//!
//! One `va`, one `real` per host (host names as given to the hook and the follower with
//! `--host`, by default the machine's host name). The prefix is free; the namespace URI
//! is what counts, as libvirt's `virsh metadata --uri` uses it.

use std::net::IpAddr;

use roxmltree::{Document, Node};

/// The XML namespace of netpage's element in a domain's `<metadata>`.
pub const NAMESPACE: &str = "https://netpage.dev/xmlns/libvirt/1";

/// A domain's netpage metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DomainVm {
    /// The domain's name (`<name>`).
    pub name: String,
    /// The VM's virtual address.
    pub va: IpAddr,
    /// Its real address on each host, in document order.
    pub reals: Vec<(String, IpAddr)>,
    /// Its network interfaces (`<devices><interface>`), in document order.
    pub nics: Vec<Nic>,
}

/// One of a domain's network interfaces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Nic {
    /// The guest's MAC (`<mac address>`).
    pub mac: Option<String>,
    /// The host's device for it (`<target dev>`), once libvirt has named it.
    pub dev: Option<String>,
}

impl DomainVm {
    /// The VM's real address on `host`.
    pub fn real_on(&self, host: &str) -> Option<IpAddr> {
        self.reals
            .iter()
            .find(|(h, _)| h == host)
            .map(|(_, ra)| *ra)
    }
}

/// Why a domain XML's netpage metadata cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DomainError {
    #[error("the domain XML does not parse: {0}")]
    Xml(#[from] roxmltree::Error),
    #[error("the document's root is <{0}>, not <domain>")]
    NotDomain(String),
    #[error("the domain has no <name>")]
    NoName,
    #[error("domain {domain}: the netpage metadata has no <va>")]
    NoVa { domain: String },
    #[error("domain {domain}: the netpage metadata has {count} <va> elements, not one")]
    ManyVa { domain: String, count: usize },
    #[error("domain {domain}: {what} {text:?} is not an IP address")]
    BadAddress {
        domain: String,
        what: String,
        text: String,
    },
    #[error("domain {domain}: a <real> element has no host attribute")]
    NoHost { domain: String },
    #[error("domain {domain}: host {host} has more than one <real>")]
    DuplicateHost { domain: String, host: String },
    #[error("domain {domain}: the VA {va} is also given as host {host}'s real address")]
    VaIsReal {
        domain: String,
        va: IpAddr,
        host: String,
    },
}

/// The netpage metadata of the domain that `xml` describes; `None` if it has none (a
/// domain netpage does not manage).
pub fn parse(xml: &str) -> Result<Option<DomainVm>, DomainError> {
    let doc = Document::parse(xml)?;
    let root = doc.root_element();
    if root.tag_name().name() != "domain" {
        return Err(DomainError::NotDomain(root.tag_name().name().to_owned()));
    }
    let name = child(root, None, "name")
        .and_then(|n| n.text())
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
        .ok_or(DomainError::NoName)?;
    let Some(vm) = child(root, None, "metadata").and_then(|m| child(m, Some(NAMESPACE), "vm"))
    else {
        return Ok(None);
    };
    let vas: Vec<Node> = children(vm, "va").collect();
    let va = match vas.as_slice() {
        [] => return Err(DomainError::NoVa { domain: name }),
        [one] => address(&name, "the VA", one)?,
        many => {
            return Err(DomainError::ManyVa {
                count: many.len(),
                domain: name,
            });
        }
    };
    let mut reals: Vec<(String, IpAddr)> = Vec::new();
    for real in children(vm, "real") {
        let Some(host) = real
            .attribute("host")
            .map(str::trim)
            .filter(|h| !h.is_empty())
        else {
            return Err(DomainError::NoHost { domain: name });
        };
        if reals.iter().any(|(h, _)| h == host) {
            return Err(DomainError::DuplicateHost {
                domain: name,
                host: host.to_owned(),
            });
        }
        let ra = address(&name, &format!("host {host}'s real address"), &real)?;
        if ra == va {
            return Err(DomainError::VaIsReal {
                domain: name,
                va,
                host: host.to_owned(),
            });
        }
        reals.push((host.to_owned(), ra));
    }
    let nics = child(root, None, "devices")
        .map(|d| {
            d.children()
                .filter(|c| c.is_element() && c.tag_name().name() == "interface")
                .map(|i| Nic {
                    mac: child(i, None, "mac")
                        .and_then(|m| m.attribute("address"))
                        .map(str::to_owned),
                    dev: child(i, None, "target")
                        .and_then(|t| t.attribute("dev"))
                        .map(str::to_owned),
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(Some(DomainVm {
        name,
        va,
        reals,
        nics,
    }))
}

/// The first child element of `node` named `name` (in namespace `ns`, or in any).
fn child<'a, 'i>(node: Node<'a, 'i>, ns: Option<&str>, name: &str) -> Option<Node<'a, 'i>> {
    node.children().find(|c| {
        c.is_element()
            && c.tag_name().name() == name
            && ns.is_none_or(|ns| c.tag_name().namespace() == Some(ns))
    })
}

/// The child elements of netpage's `vm` element named `name`, in netpage's namespace.
fn children<'a, 'i>(vm: Node<'a, 'i>, name: &'a str) -> impl Iterator<Item = Node<'a, 'i>> {
    vm.children().filter(move |c| {
        c.is_element() && c.tag_name().name() == name && c.tag_name().namespace() == Some(NAMESPACE)
    })
}

fn address(domain: &str, what: &str, node: &Node) -> Result<IpAddr, DomainError> {
    let text = node.text().unwrap_or_default().trim();
    text.parse().map_err(|_| DomainError::BadAddress {
        domain: domain.to_owned(),
        what: what.to_owned(),
        text: text.to_owned(),
    })
}

#[cfg(test)]
mod tests;
