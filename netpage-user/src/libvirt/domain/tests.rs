use super::*;

/// A domain XML as libvirt 9.0 gave it on a hook's stdin (`migrate begin`, destination).
const RECORDED: &str = include_str!("../testdata/migrate-begin.xml");

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn reads_the_recorded_domain() {
    let vm = parse(RECORDED).unwrap().unwrap();
    assert_eq!(vm.name, "vm1");
    assert_eq!(vm.va, ip("198.19.0.10"));
    assert_eq!(vm.real_on("A"), Some(ip("198.18.10.100")));
    assert_eq!(vm.real_on("B"), Some(ip("198.18.20.100")));
    assert_eq!(vm.real_on("C"), None);
    assert_eq!(
        vm.nics,
        vec![Nic {
            mac: Some("52:54:00:00:00:10".into()),
            dev: Some("vm1tap".into()),
        }]
    );
}

#[test]
fn reads_the_stopped_domain_too() {
    let xml = include_str!("../testdata/stopped-end.xml");
    assert_eq!(parse(xml).unwrap().unwrap().va, ip("198.19.0.10"));
}

#[test]
fn a_domain_without_netpage_metadata_is_none() {
    let xml = "<domain type='kvm'><name>other</name><metadata>\
        <app:x xmlns:app='https://example.com/app'><app:va>1.2.3.4</app:va></app:x>\
        </metadata></domain>";
    assert_eq!(parse(xml).unwrap(), None);
    assert_eq!(parse("<domain><name>bare</name></domain>").unwrap(), None);
}

#[test]
fn the_namespace_counts_not_the_prefix() {
    let xml = "<domain><name>v</name><metadata>\
        <np:vm xmlns:np='https://netpage.dev/xmlns/libvirt/1'><np:va> 2001:db8::1 </np:va>\
        <np:real host='h1'>2001:db8:1::1</np:real></np:vm>\
        <netpage:vm xmlns:netpage='https://wrong.example/'><netpage:va>9.9.9.9</netpage:va></netpage:vm>\
        </metadata></domain>";
    let vm = parse(xml).unwrap().unwrap();
    assert_eq!(vm.va, ip("2001:db8::1"));
    assert_eq!(vm.reals, vec![("h1".to_owned(), ip("2001:db8:1::1"))]);
    assert!(vm.nics.is_empty());
}

#[test]
fn bad_metadata_is_refused_with_the_reason() {
    let meta = |inner: &str| {
        format!(
            "<domain><name>v</name><metadata><n:vm xmlns:n='{NAMESPACE}'>{inner}</n:vm></metadata></domain>"
        )
    };
    let err = |inner: &str| parse(&meta(inner)).unwrap_err().to_string();
    assert!(err("").contains("no <va>"));
    assert!(err("<n:va>1.1.1.1</n:va><n:va>1.1.1.2</n:va>").contains("2 <va>"));
    assert!(err("<n:va>vm1</n:va>").contains("\"vm1\" is not an IP address"));
    assert!(err("<n:va>1.1.1.1</n:va><n:real>2.2.2.2</n:real>").contains("no host"));
    assert!(
        err(
            "<n:va>1.1.1.1</n:va><n:real host='a'>2.2.2.2</n:real><n:real host='a'>2.2.2.3</n:real>"
        )
        .contains("more than one")
    );
    assert!(err("<n:va>1.1.1.1</n:va><n:real host='a'>1.1.1.1</n:real>").contains("also given"));
    assert!(parse("<domain><name>v</name>").is_err());
    assert!(matches!(
        parse("<network/>"),
        Err(DomainError::NotDomain(_))
    ));
}
