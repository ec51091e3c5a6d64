//! Helpers shared by the group suites: members as tasks with their own connections, a judge
//! of what their handlers saw, a publisher.
#![allow(dead_code, unreachable_pub, reason = "each suite uses a part")]

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use natty_core::{Client, ConnectOptions};
use natty_group::{CancellationToken, ConsumerGroup, GroupConfig, Partition, Term};
use natty_stream::{BatchConfig, BatchPublisher, HandlerError, Message};

/// One handler run of a key: (number, member, term).
pub type Run = (u64, String, Term);

/// What every member's handlers saw.
#[derive(Default)]
pub struct Judge {
    /// key -> runs in the order handled.
    pub order: Mutex<HashMap<String, Vec<Run>>>,
    /// partition -> (member, handlers running): another member entering while it runs is a
    /// second owner.
    pub active: Mutex<HashMap<u32, (String, u32)>>,
    pub two_owners: AtomicU64,
    pub handled: AtomicU64,
}

impl Judge {
    pub fn enter(&self, partition: u32, member: &str) {
        let mut active = self.active.lock().unwrap();
        let e = active.entry(partition).or_insert((member.to_owned(), 0));
        if e.0 != member && e.1 > 0 {
            self.two_owners.fetch_add(1, Ordering::SeqCst);
            eprintln!("partition {partition}: {member} handles while {} does", e.0);
        }
        if e.1 == 0 {
            e.0 = member.to_owned();
        }
        e.1 += 1;
    }

    pub fn leave(&self, partition: u32, member: &str) {
        let mut active = self.active.lock().unwrap();
        if let Some(e) = active.get_mut(&partition)
            && e.0 == member
        {
            e.1 -= 1;
        }
    }

    /// Per key, Kafka's order: every number 0..per_key handled; a key's messages handled for
    /// the first time in order; each owner's run (member, term) handles them in strictly
    /// increasing order. A next owner may go back (it resumes from the durable's ack floor
    /// after a member was killed mid-message): those re-runs are counted and returned.
    pub fn check(&self, keys: usize, per_key: u64) -> u64 {
        let order = self.order.lock().unwrap();
        assert_eq!(order.len(), keys, "keys handled");
        let mut again = 0;
        for (key, got) in order.iter() {
            let mut first_handled = 0;
            let mut runs: HashMap<(&str, Term), u64> = HashMap::new();
            for (n, member, term) in got {
                if let Some(last) = runs.insert((member, *term), *n) {
                    assert!(
                        *n > last,
                        "key {key}: {n} after {last} in {member}'s run (term {term:?}): {got:?}"
                    );
                }
                if *n == first_handled {
                    first_handled += 1;
                } else {
                    assert!(
                        *n < first_handled,
                        "key {key}: {n} handled before {first_handled}: {got:?}"
                    );
                    again += 1;
                }
            }
            assert_eq!(
                first_handled, per_key,
                "key {key}: not every message handled"
            );
        }
        again
    }
}

pub struct Member {
    pub group: ConsumerGroup,
    pub cancel: CancellationToken,
    pub task: tokio::task::JoinHandle<Result<(), natty_group::Error>>,
}

pub async fn member(
    url: &str,
    config: &GroupConfig,
    name: &str,
    judge: Arc<Judge>,
) -> anyhow::Result<Member> {
    let client = ConnectOptions::new([url]).connect().await?;
    let mut cfg = config.clone();
    cfg.member = name.to_owned();
    let group = ConsumerGroup::new(client, cfg)?;
    let cancel = CancellationToken::new();
    let (g, k, me) = (group.clone(), cancel.clone(), name.to_owned());
    let task =
        tokio::spawn(async move {
            g.join(k, move |p: Partition, m: Message| {
                let judge = judge.clone();
                let me = me.clone();
                async move {
                    judge.enter(p.index, &me);
                    let key = m.subject.rsplit('.').next().unwrap().to_owned();
                    let n: u64 = std::str::from_utf8(&m.payload).unwrap().parse().unwrap();
                    judge.order.lock().unwrap().entry(key).or_default().push((
                        n,
                        me.clone(),
                        p.term,
                    ));
                    tokio::task::yield_now().await;
                    judge.leave(p.index, &me);
                    judge.handled.fetch_add(1, Ordering::SeqCst);
                    Ok::<(), HandlerError>(())
                }
            })
            .await
        });
    Ok(Member {
        group,
        cancel,
        task,
    })
}

pub async fn publish(
    client: &Client,
    config: &GroupConfig,
    keys: usize,
    from: u64,
    to: u64,
) -> anyhow::Result<()> {
    let p = BatchPublisher::new(client.clone(), BatchConfig::default())?;
    for n in from..to {
        for k in 0..keys {
            let subject = config.subject_for(&format!("key-{k}"))?;
            p.send(&subject, n.to_string().into()).await?;
        }
    }
    let report = p.close().await?;
    assert!(report.failed.is_empty(), "{report:?}");
    Ok(())
}
