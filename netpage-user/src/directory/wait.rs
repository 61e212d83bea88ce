//! Waiting for the live nodes to confirm that they applied a revision of the directory:
//! each agent reports its applied revision in its node record, and a writer watches the
//! records until every live node has reached the revision or the time is up.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use etcd_client::{EventType, WatchOptions};
use serde::Serialize;

use super::{DirError, Directory, schema::NodeRecord};

/// One live node's confirmation of a revision.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Confirmation {
    pub node: String,
    /// Whether the node applied the revision in time.
    pub confirmed: bool,
    /// From the change to this command hearing the node's report, ms.
    pub after_ms: Option<f64>,
    /// From the change to the node's own map update by the node's clock, ms (meaningful
    /// where the clocks agree, e.g. on one machine or with PTP).
    pub propagation_ms: Option<f64>,
    /// The node left (its agent stopped or its lease expired) while this command waited.
    pub left: bool,
}

/// Microseconds since the Unix epoch.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

struct Waiting {
    since: Instant,
    since_us: u64,
    revision: i64,
    out: BTreeMap<String, Confirmation>,
}

impl Waiting {
    fn hear(&mut self, r: &NodeRecord) {
        let c = self
            .out
            .entry(r.node.clone())
            .or_insert_with(|| Confirmation {
                node: r.node.clone(),
                confirmed: false,
                after_ms: None,
                propagation_ms: None,
                left: false,
            });
        if r.applied_revision >= self.revision && !c.confirmed {
            c.confirmed = true;
            c.after_ms = Some(self.since.elapsed().as_secs_f64() * 1e3);
            let propagation_ms = r.applied_at_us as f64 / 1e3 - self.since_us as f64 / 1e3;
            c.propagation_ms = Some(propagation_ms.max(0.0));
        }
    }

    /// Whether every node still waited for has confirmed (those in `excused` are not
    /// waited for: they already missed an earlier step).
    fn done(&self, excused: &[String]) -> bool {
        self.out
            .values()
            .all(|c| c.confirmed || c.left || excused.contains(&c.node))
    }
}

impl Directory {
    /// Waits until every live node has applied `revision`, at most `timeout`. `since` is
    /// when the change was made, for the times reported.
    pub async fn wait_applied(
        &mut self,
        revision: i64,
        timeout: Duration,
        since: Instant,
        excused: &[String],
    ) -> Result<Vec<Confirmation>, DirError> {
        let since_us = now_us().saturating_sub(since.elapsed().as_micros() as u64);
        let mut w = Waiting {
            since,
            since_us,
            revision,
            out: BTreeMap::new(),
        };
        let (read_at, records) = self.node_records().await?;
        records.iter().for_each(|r| w.hear(r));
        if w.done(excused) {
            return Ok(w.out.into_values().collect());
        }
        let deadline = Instant::now() + timeout;
        let prefix = self.keys.nodes_prefix();
        let mut stream = self
            .client
            .watch(
                prefix,
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(read_at + 1),
                ),
            )
            .await
            .map_err(self.etcd_err("watching the nodes' reports"))?;
        while !w.done(excused) {
            let Ok(msg) = tokio::time::timeout_at(deadline.into(), stream.message()).await else {
                break;
            };
            let Some(resp) = msg.map_err(self.etcd_err("watching the nodes' reports"))? else {
                break;
            };
            for ev in resp.events() {
                let Some(kv) = ev.kv() else { continue };
                match ev.event_type() {
                    EventType::Put => {
                        if let Ok(r) = serde_json::from_slice::<NodeRecord>(kv.value()) {
                            w.hear(&r);
                        }
                    }
                    EventType::Delete => {
                        if let Some(name) = self.keys.parse_node_key(kv.key())
                            && let Some(c) = w.out.get_mut(name)
                        {
                            c.left = !c.confirmed;
                        }
                    }
                }
            }
        }
        Ok(w.out.into_values().collect())
    }
}
