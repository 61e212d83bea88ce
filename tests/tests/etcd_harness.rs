//! Tests of the etcd harness against real etcd processes: a member serves requests and
//! keeps its data over a restart, a three-member cluster survives losing its leader and the
//! lost member catches up, a watch from a compacted revision is cancelled (what netpage's
//! agent relies on to re-list), TLS turns away clients without a certificate, and users are
//! held to their key prefix. Every test has its own members, so they run in parallel.

use std::{
    fs,
    net::{IpAddr, Ipv4Addr},
    time::{Duration, Instant},
};

use etcd_client::{
    Client, ConnectOptions, EventType, GetOptions, Identity, WatchOptions, WatchResponse,
};
use netpage_tests::etcd::{
    Access, Etcd, EtcdCluster, EtcdOptions, TlsFiles, missing_prerequisites,
};

/// The error etcd answers a read of a compacted revision with.
const COMPACTED: &str = "required revision has been compacted";

/// Whether the tests cannot run here; prints why.
fn skipped() -> bool {
    match missing_prerequisites() {
        Some(why) => {
            eprintln!("skipped: {why}");
            true
        }
        None => false,
    }
}

async fn value(client: &mut Client, key: &str) -> Option<String> {
    let r = client.get(key, None).await.unwrap();
    r.kvs().first().map(|kv| kv.value_str().unwrap().to_owned())
}

/// A client of `endpoints` that gives up quickly.
async fn impatient_client(endpoints: &[String], opts: ConnectOptions) -> Client {
    let opts = opts
        .with_connect_timeout(Duration::from_secs(1))
        .with_timeout(Duration::from_secs(2));
    Client::connect(endpoints, Some(opts)).await.unwrap()
}

/// The next response on `stream` within 5 s.
async fn next(stream: &mut etcd_client::WatchStream) -> WatchResponse {
    tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("a watch response within 5 s")
        .expect("watch stream")
        .expect("watch stream still open")
}

#[tokio::test]
async fn a_member_serves_a_put_and_a_get() {
    if skipped() {
        return;
    }
    let etcd = Etcd::new();
    assert_eq!(etcd.len(), 1);
    assert!(
        etcd.urls().starts_with("http://127.0.0.1:"),
        "{}",
        etcd.urls()
    );
    assert_eq!(etcd.cli_args(), ["--etcd".to_owned(), etcd.urls()]);

    let mut client = etcd.client().await;
    let put = client.put("/t/k", "v", None).await.unwrap();
    assert_eq!(value(&mut client, "/t/k").await.as_deref(), Some("v"));
    assert_eq!(etcd.get("/t/k").as_deref(), Some(&b"v"[..]));
    let revision = put.header().unwrap().revision();
    assert_eq!(etcd.current_revision(), revision);
    assert_eq!(etcd.put("/t/k", b"w"), revision + 1);
    assert_eq!(value(&mut client, "/t/k").await.as_deref(), Some("w"));
}

#[tokio::test]
async fn stop_and_start_keep_the_data() {
    if skipped() {
        return;
    }
    let mut etcd = Etcd::new();
    let endpoints = etcd.endpoints();
    etcd.put("/t/kept", b"yes");
    let revision = etcd.current_revision();

    etcd.stop();
    assert!(!etcd.is_running(0));
    let mut client = impatient_client(&endpoints, ConnectOptions::new()).await;
    let refused = client.get("/t/kept", None).await;
    assert!(refused.is_err(), "a stopped member answered: {refused:?}");

    etcd.start();
    assert_eq!(
        etcd.endpoints(),
        endpoints,
        "the same ports after the restart"
    );
    assert_eq!(etcd.get("/t/kept").as_deref(), Some(&b"yes"[..]));
    assert_eq!(etcd.current_revision(), revision);

    // A crash (SIGKILL) keeps acknowledged writes too.
    etcd.put("/t/crash", b"kept");
    etcd.kill();
    etcd.start();
    assert_eq!(etcd.get("/t/crash").as_deref(), Some(&b"kept"[..]));
}

#[tokio::test]
async fn a_cluster_survives_losing_its_leader() {
    if skipped() {
        return;
    }
    let mut cluster = EtcdCluster::new();
    assert_eq!(cluster.endpoints().len(), 3);
    assert_eq!(cluster.urls().matches(',').count(), 2);
    let ids: Vec<u64> = (0..3).map(|i| cluster.member_id(i)).collect();
    assert!(ids.iter().all(|&id| id != 0) && ids[0] != ids[1] && ids[1] != ids[2]);

    let old = cluster.wait_for_leader();
    assert_eq!(cluster.leader(), old);
    cluster.put("/t/before", b"1");

    let killed = Instant::now();
    cluster.kill(old);
    let new = cluster.wait_for_leader();
    assert_ne!(new, old, "a killed member cannot stay leader");
    eprintln!(
        "member {new} leads {:?} after member {old} was killed",
        killed.elapsed()
    );
    let mut client = cluster.client().await;
    client.put("/t/after", "2", None).await.unwrap();
    assert_eq!(value(&mut client, "/t/before").await.as_deref(), Some("1"));

    cluster.restart(old);
    assert!(cluster.is_running(old));
    // Its own copy of the data (a serializable read) has the write it missed.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match cluster.get_local(old, "/t/after") {
            Ok(Some(v)) => {
                assert_eq!(v, b"2");
                break;
            }
            other if Instant::now() >= deadline => {
                panic!(
                    "member {old} did not catch up: {other:?}\n{}",
                    cluster.log_tail(old)
                )
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    assert_eq!(
        cluster.get_local(old, "/t/before").unwrap().as_deref(),
        Some(&b"1"[..])
    );
    let leader = cluster.wait_for_leader();
    assert!(cluster.is_running(leader));
}

#[tokio::test]
async fn a_watch_from_a_compacted_revision_is_cancelled() {
    if skipped() {
        return;
    }
    let etcd = Etcd::new();
    let first = etcd.put("/t/w", b"1");
    etcd.put("/t/w", b"2");
    let last = etcd.put("/t/w", b"3");
    assert_eq!(etcd.current_revision(), last);
    etcd.compact(last);

    let mut client = etcd.client().await;
    let mut stream = client
        .watch("/t/w", Some(WatchOptions::new().with_start_revision(first)))
        .await
        .unwrap();
    let response = loop {
        let r = next(&mut stream).await;
        if r.canceled() {
            break r;
        }
        assert!(r.events().is_empty(), "events from a compacted revision");
    };
    // The watch is cancelled with the compaction revision set. etcd 3.4 leaves the reason
    // empty (Go's clientv3 makes "required revision has been compacted" out of the
    // revision), so a client must go by `compact_revision`, not by the text.
    assert_eq!(response.compact_revision(), last);
    let reason = response.cancel_reason();
    assert!(
        reason.is_empty() || reason.contains(COMPACTED),
        "{reason:?}"
    );
    eprintln!("watch from {first} after compacting {last}: {response:?}");

    // Reads of the old revision fail the same way.
    let err = client
        .get("/t/w", Some(GetOptions::new().with_revision(first)))
        .await
        .unwrap_err();
    assert!(err.to_string().contains(COMPACTED), "{err}");

    // What the agent does next: list, then watch from the listed revision + 1.
    let listed = client.get("/t/w", None).await.unwrap();
    let revision = listed.header().unwrap().revision();
    assert_eq!(listed.kvs()[0].value(), b"3");
    let mut stream = client
        .watch(
            "/t/w",
            Some(WatchOptions::new().with_start_revision(revision + 1)),
        )
        .await
        .unwrap();
    let created = next(&mut stream).await;
    assert!(created.created() && !created.canceled());
    client.put("/t/w", "4", None).await.unwrap();
    let change = next(&mut stream).await;
    let event = &change.events()[0];
    assert_eq!(event.event_type(), EventType::Put);
    assert_eq!(event.kv().unwrap().value(), b"4");
    assert_eq!(event.kv().unwrap().mod_revision(), revision + 1);
}

#[tokio::test]
async fn tls_turns_away_a_client_without_a_certificate() {
    if skipped() {
        return;
    }
    let etcd = Etcd::start_tls();
    let tls = etcd.tls().expect("TLS files");
    assert!(
        etcd.urls().starts_with("https://127.0.0.1:"),
        "{}",
        etcd.urls()
    );
    for path in [tls.ca(), tls.client_cert(), tls.client_key()] {
        assert!(path.is_file(), "{}", path.display());
    }
    let args = etcd.cli_args();
    assert_eq!(args[..2], ["--etcd".to_owned(), etcd.urls()]);
    assert_eq!(args[2..].len(), 6);
    assert_eq!(args[2], "--etcd-cacert");

    let mut good = etcd.client().await;
    good.put("/t/tls", "ok", None).await.unwrap();
    assert_eq!(value(&mut good, "/t/tls").await.as_deref(), Some("ok"));

    let opts = ConnectOptions::new().with_tls(tls.ca_only_tls());
    let mut anonymous = impatient_client(&etcd.endpoints(), opts).await;
    let refused = anonymous.put("/t/anonymous", "no", None).await;
    let err = refused.expect_err("a client without a certificate wrote");
    eprintln!("without a certificate: {err}");
    assert_eq!(value(&mut good, "/t/anonymous").await, None);

    // Plain HTTP is no way around it either.
    let plain = etcd.endpoints()[0].replace("https://", "http://");
    let mut plain = impatient_client(&[plain], ConnectOptions::new()).await;
    let err = plain.put("/t/plain", "no", None).await.unwrap_err();
    eprintln!("over plain HTTP: {err}");
    assert_eq!(value(&mut good, "/t/plain").await, None);

    // Nor is a certificate with the right name from another CA.
    let stranger = TlsFiles::generate(&[Ipv4Addr::LOCALHOST.into()]);
    let identity = Identity::from_pem(
        fs::read(stranger.client_cert()).unwrap(),
        fs::read(stranger.client_key()).unwrap(),
    );
    let opts = ConnectOptions::new().with_tls(tls.ca_only_tls().identity(identity));
    let mut stranger = impatient_client(&etcd.endpoints(), opts).await;
    let err = stranger.put("/t/stranger", "no", None).await.unwrap_err();
    eprintln!("with another CA's certificate: {err}");
    assert_eq!(value(&mut good, "/t/stranger").await, None);
}

#[tokio::test]
async fn users_are_held_to_their_prefix() {
    if skipped() {
        return;
    }
    let mut etcd = Etcd::new();
    etcd.put("/netpage/dir/a", b"1");
    etcd.put("/other", b"x");
    etcd.enable_auth("rootpw");
    etcd.add_user("agent", "agentpw", "/netpage/", Access::Read);
    etcd.add_user("switch", "switchpw", "/netpage/", Access::ReadWrite);
    // The harness itself goes on as root.
    assert_eq!(etcd.get("/other").as_deref(), Some(&b"x"[..]));

    let mut agent = etcd.client_as("agent", "agentpw").await;
    assert_eq!(
        value(&mut agent, "/netpage/dir/a").await.as_deref(),
        Some("1")
    );
    let err = agent.put("/netpage/dir/a", "2", None).await.unwrap_err();
    assert!(err.to_string().contains("permission denied"), "{err}");
    let err = agent.get("/other", None).await.unwrap_err();
    assert!(err.to_string().contains("permission denied"), "{err}");

    let mut switch = etcd.client_as("switch", "switchpw").await;
    switch.put("/netpage/dir/a", "2", None).await.unwrap();
    let err = switch.put("/other", "y", None).await.unwrap_err();
    assert!(err.to_string().contains("permission denied"), "{err}");
    assert_eq!(etcd.get("/netpage/dir/a").as_deref(), Some(&b"2"[..]));
    assert_eq!(etcd.get("/other").as_deref(), Some(&b"x"[..]));

    let mut nobody = impatient_client(&etcd.endpoints(), ConnectOptions::new()).await;
    assert!(nobody.get("/netpage/dir/a", None).await.is_err());

    let wrong = ConnectOptions::new().with_user("agent", "wrong");
    assert!(
        Client::connect(etcd.endpoints(), Some(wrong))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn members_listen_where_they_are_told_and_do_not_share_anything() {
    if skipped() {
        return;
    }
    // 127.0.0.2 is a local address other than the default 127.0.0.1.
    let other: IpAddr = Ipv4Addr::new(127, 0, 0, 2).into();
    let everywhere = EtcdOptions::new()
        .name("wide")
        .listen_ip(Ipv4Addr::UNSPECIFIED.into())
        .advertise_ip(other)
        .start();
    let local = Etcd::new();
    assert!(everywhere.urls().starts_with("http://127.0.0.2:"));
    assert_ne!(everywhere.endpoints(), local.endpoints());
    assert_ne!(everywhere.dir(0), local.dir(0));

    let mut wide = everywhere.client().await;
    wide.put("/t/where", "wide", None).await.unwrap();
    let mut narrow = local.client().await;
    assert_eq!(value(&mut narrow, "/t/where").await, None);

    // The default member does not answer on the other address.
    let port = local.endpoints()[0].rsplit(':').next().unwrap().to_owned();
    let elsewhere = format!("http://127.0.0.2:{port}");
    let mut unreachable = impatient_client(&[elsewhere], ConnectOptions::new()).await;
    assert!(unreachable.get("/t/where", None).await.is_err());
}

#[test]
fn a_member_that_cannot_start_is_reported_with_its_log() {
    if skipped() {
        return;
    }
    let failed = std::panic::catch_unwind(|| {
        EtcdOptions::new()
            .name("broken")
            .arg("--no-such-flag")
            .start()
    });
    let message = *failed
        .expect_err("etcd with an unknown flag started")
        .downcast::<String>()
        .unwrap();
    assert!(message.contains("exited"), "{message}");
    assert!(message.contains("etcd.log"), "{message}");
    // The end of the log, where etcd names the flag.
    assert!(message.contains("no-such-flag"), "{message}");
    // The log stays for a look after a failure; this one was expected.
    let log = message
        .split_whitespace()
        .find(|w| w.ends_with("etcd.log:"))
        .unwrap()
        .trim_end_matches(':');
    let dir = std::path::Path::new(log).parent().unwrap();
    assert!(dir.join("etcd.log").is_file() && !dir.join("data").exists());
    fs::remove_dir_all(dir).unwrap();
}
