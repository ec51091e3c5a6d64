//! Helpers shared by the election suites.
#![allow(dead_code, unreachable_pub, reason = "each suite uses a part")]

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use natty_core::ConnectOptions;
use natty_election::{CancellationToken, Election, ElectionConfig};
use natty_kv::Kv;
use tokio::{task::JoinHandle, time::Instant};

/// One work interval: who, which term, when it started and (if it did) ended.
#[derive(Debug, Clone)]
pub struct Interval {
    pub node: String,
    pub term: natty_election::Term,
    pub start: Instant,
    pub end: Option<Instant>,
}

#[derive(Debug, Clone, Default)]
pub struct Recorder(pub Arc<Mutex<Vec<Interval>>>);

impl Recorder {
    pub fn intervals(&self) -> Vec<Interval> {
        self.0.lock().unwrap().clone()
    }

    /// Panics if two work intervals overlap; the last one may still be open.
    pub fn assert_no_overlap_open_last(&self) {
        let mut all = self.intervals();
        all.sort_by_key(|i| i.start);
        if let Some(last) = all.last_mut() {
            last.end
                .get_or_insert(Instant::now() + Duration::from_secs(3600));
        }
        check(&all);
    }

    /// Panics if two work intervals overlap.
    pub fn assert_no_overlap(&self) {
        let mut all = self.intervals();
        all.sort_by_key(|i| i.start);
        check(&all);
    }
}

fn check(all: &[Interval]) {
    {
        for pair in all.windows(2) {
            let end = pair[0].end.expect("an earlier interval is still open");
            assert!(
                end <= pair[1].start,
                "overlapping leaders: {:?} and {:?}",
                pair[0],
                pair[1]
            );
        }
    }
}

/// A candidate running in this process.
pub struct Candidate {
    pub node: String,
    pub election: Election,
    pub cancel: CancellationToken,
    pub task: JoinHandle<Result<(), natty_election::Error>>,
    pub started: Instant,
}

impl Candidate {
    pub async fn start(
        url: &str,
        config: ElectionConfig,
        recorder: &Recorder,
    ) -> anyhow::Result<Self> {
        let client = ConnectOptions::new([url]).connect().await?;
        let node = config.node_name.clone();
        let election = Election::new(Kv::new(client), config)?;
        let cancel = CancellationToken::new();
        let rec = recorder.clone();
        let started = Instant::now();
        let (e, c, n) = (election.clone(), cancel.clone(), node.clone());
        let task = tokio::spawn(async move {
            e.run(c, move |lead| {
                let rec = rec.clone();
                let node = n.clone();
                async move {
                    let idx = {
                        let mut v = rec.0.lock().unwrap();
                        v.push(Interval {
                            node,
                            term: lead.term,
                            start: Instant::now(),
                            end: None,
                        });
                        v.len() - 1
                    };
                    lead.lost.cancelled().await;
                    rec.0.lock().unwrap()[idx].end = Some(Instant::now());
                }
            })
            .await
        });
        Ok(Self {
            node,
            election,
            cancel,
            task,
            started,
        })
    }

    /// Cancels and waits for the run to return.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.cancel.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task).await???;
        Ok(())
    }
}

pub fn config(bucket: &str, key: &str, node: &str) -> ElectionConfig {
    ElectionConfig::new(bucket, key, node).ttl(Duration::from_secs(2))
}

pub fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}
