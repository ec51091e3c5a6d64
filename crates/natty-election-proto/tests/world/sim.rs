//! The world: N candidates (each a [`Machine`] with a model of natty-election's driver), one
//! simulated KV server, a network that delays, loses and reorders, processes that freeze,
//! crash and restart, a bucket deleted and re-created behind everyone's back — all in virtual
//! time. A judge checks the election's safety after every instant: the chaos harness's checks.

use std::{
    collections::{BTreeMap, VecDeque},
    fmt::Write as _,
    time::Duration,
};

use natty_election_proto::{
    Event, FenceQueue, Instant, Machine, MachineConfig, Reply, Request, State, Term, Work,
};

use crate::{
    kv::{Effect, Lease, Op, Res, Server, Value},
    store::{Next, Prog, Store},
};

/// The lease TTL in the world (whole seconds, as the server's per-key TTL).
pub(crate) const TTL: Duration = Duration::from_secs(3);
/// The client's request timeout (a renew gets its renew interval instead).
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);
const MS: Duration = Duration::from_millis(1);

pub(crate) fn machine_config() -> MachineConfig {
    MachineConfig::new(TTL)
}

/// A small deterministic random source (splitmix64).
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }

    /// True with probability `permille / 1000`.
    pub(crate) fn chance(&mut self, permille: u64) -> bool {
        self.below(1000) < permille
    }

    /// A duration in `[lo, hi]` (ms granularity).
    pub(crate) fn ms(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi - lo + 1))
    }
}

/// How hostile the world is.
#[derive(Debug, Clone)]
pub(crate) struct Knobs {
    /// Candidates.
    pub(crate) nodes: usize,
    /// Per mille of requests and replies lost.
    pub(crate) loss: u64,
    /// Per mille of requests and replies delayed by up to 3 s.
    pub(crate) slow: u64,
    /// Replicas lag by up to this many messages.
    pub(crate) max_lag: u64,
    /// Whether a write right at its base revision's expiry may be wiped by the expiry marker.
    pub(crate) wipe: bool,
    /// Clock rates differ by up to this many parts per million.
    pub(crate) skew_ppm: u64,
    /// Per mille of each leader's wake-ups that want a fenced write.
    pub(crate) fences: u64,
    /// Faults over the run, each at a random instant: freezes, crashes, graceful restarts,
    /// bucket deletions (re-created by another election's put), key deletions.
    pub(crate) freezes: usize,
    pub(crate) crashes: usize,
    pub(crate) restarts: usize,
    pub(crate) bucket_deletes: usize,
    pub(crate) key_deletes: usize,
    /// Writes of a non-lease value to the lease key by someone else.
    pub(crate) foreign_writes: usize,
    /// How long faults keep coming.
    pub(crate) chaos_for: Duration,
    /// Whether every node starts at once (else: only when told).
    pub(crate) start_all: bool,
    /// Reads are served by a replica at least this many messages behind (up to `max_lag`).
    pub(crate) min_lag: u64,
}

impl Default for Knobs {
    fn default() -> Self {
        Self {
            nodes: 3,
            loss: 0,
            slow: 0,
            max_lag: 0,
            wipe: false,
            skew_ppm: 0,
            fences: 0,
            freezes: 0,
            crashes: 0,
            restarts: 0,
            bucket_deletes: 0,
            key_deletes: 0,
            foreign_writes: 0,
            chaos_for: Duration::from_secs(60),
            start_all: true,
            min_lag: 0,
        }
    }
}

/// Something the world does at an instant.
#[derive(Debug, Clone)]
pub(crate) enum Ev {
    /// The machine's timeout (valid only for generation `gen`).
    Wake { node: usize, generation: u64 },
    /// An operation reaches the server.
    Arrive { node: usize, flight: u64, op: Op },
    /// Its answer reaches the driver.
    Answer { node: usize, flight: u64, res: Res },
    /// The driver gives up on the request.
    GiveUp { node: usize, flight: u64 },
    /// The node's watch delivers what is due.
    Watch { node: usize },
    /// The driver re-creates its ended watch.
    Rewatch { node: usize, generation: u64 },
    /// The server's expiry timer for a revision.
    Expire { epoch: u64, seq: u64 },
    /// A node starts (again): a fresh process.
    Start { node: usize },
    /// A fault.
    Fault(Fault),
}

/// Faults.
#[derive(Debug, Clone)]
pub(crate) enum Fault {
    Freeze {
        node: usize,
        for_: Duration,
    },
    Crash {
        node: usize,
        down_for: Duration,
    },
    Restart {
        node: usize,
        down_for: Duration,
    },
    DeleteBucket {
        recreate_after: Option<Duration>,
    },
    /// Another election's put: creates the bucket if missing.
    PutOtherKey,
    DeleteKey,
    ForeignWrite,
}

/// What the watch will deliver to the driver.
#[derive(Debug, Clone)]
enum Item {
    Put {
        rev: u64,
        value: Value,
    },
    Gone {
        rev: u64,
    },
    /// The watch's consumer is gone (bucket deleted): natty-kv checks the stream.
    Broken,
}

#[derive(Debug, Default)]
struct WatchState {
    up: bool,
    epoch: u64,
    queue: VecDeque<(Instant, Item)>,
    last_due: Instant,
    generation: u64,
    pauses: u32,
    /// Extra delay of every delivery (a slow watch).
    extra: Duration,
}

/// One request in flight through the model driver.
#[derive(Debug)]
struct Flight {
    id: u64,
    prog: Prog,
    /// `None`: the set-up.
    request: Option<Request>,
}

/// One candidate process.
#[derive(Debug)]
pub(crate) struct Node {
    alive: bool,
    m: Option<Machine>,
    store: Store,
    /// Clock rate: local = real × (1e6 + ppm) / 1e6.
    ppm: i64,
    frozen_until: Option<Instant>,
    working: Option<Term>,
    flight: Option<Flight>,
    wake_generation: u64,
    watch: WatchState,
    fences: FenceQueue<u64>,
    /// Set while a graceful restart waits for the machine to stop.
    restart_after: Option<Duration>,
    /// The node is down until this instant (crash or restart).
    pub(crate) elected: u32,
}

/// Everything that happened, for the judge and for reading a failure.
#[derive(Debug, Default)]
pub(crate) struct Judge {
    /// For each node: the term it acts in, since when.
    acting: Vec<Option<(Term, Instant)>>,
    /// Every election: when, which term, who.
    pub(crate) elected: Vec<(Instant, Term, usize)>,
    pub(crate) violations: Vec<String>,
    pub(crate) log: Vec<String>,
    /// How many fenced writes landed.
    pub(crate) fenced: u32,
    /// The longest time any two nodes acted at once.
    pub(crate) max_overlap: Duration,
    overlap_since: Option<Instant>,
}

/// The world.
#[derive(Debug)]
pub(crate) struct World {
    pub(crate) now: Instant,
    pub(crate) rng: Rng,
    pub(crate) knobs: Knobs,
    pub(crate) server: Server,
    pub(crate) nodes: Vec<Node>,
    events: BTreeMap<(Instant, u64), Ev>,
    seq: u64,
    next_flight: u64,
    next_instance: u64,
    pub(crate) judge: Judge,
    config: MachineConfig,
}

impl World {
    /// A world with `knobs`, its randomness from `seed`. Every node starts at once; faults are
    /// scheduled over `knobs.chaos_for`.
    pub(crate) fn new(seed: u64, knobs: Knobs) -> Self {
        let mut rng = Rng::new(seed);
        let n = knobs.nodes;
        let nodes = (0..n)
            .map(|slot| {
                let ppm = if knobs.skew_ppm == 0 {
                    0
                } else {
                    i64::try_from(rng.below(2 * knobs.skew_ppm + 1)).unwrap_or(0)
                        - i64::try_from(knobs.skew_ppm).unwrap_or(0)
                };
                Node {
                    alive: false,
                    m: None,
                    store: Store {
                        slot,
                        instance: 0,
                        known_epoch: 0,
                    },
                    ppm,
                    frozen_until: None,
                    working: None,
                    flight: None,
                    wake_generation: 0,
                    watch: WatchState::default(),
                    fences: FenceQueue::new(16),
                    restart_after: None,
                    elected: 0,
                }
            })
            .collect();
        let mut world = Self {
            now: Instant::ZERO,
            rng,
            server: Server {
                max_lag: knobs.max_lag,
                ..Server::default()
            },
            knobs,
            nodes,
            events: BTreeMap::new(),
            seq: 0,
            next_flight: 1,
            next_instance: 1,
            judge: Judge {
                acting: vec![None; n],
                ..Judge::default()
            },
            config: machine_config(),
        };
        world.schedule_faults();
        world
    }

    /// An empty world: nodes start only when told ([`World::start_node`]).
    pub(crate) fn quiet(seed: u64, knobs: Knobs) -> Self {
        let mut knobs = knobs;
        knobs.start_all = false;
        knobs.freezes = 0;
        knobs.crashes = 0;
        knobs.restarts = 0;
        knobs.bucket_deletes = 0;
        knobs.key_deletes = 0;
        knobs.foreign_writes = 0;
        Self::new(seed, knobs)
    }

    fn schedule_faults(&mut self) {
        let k = self.knobs.clone();
        let n = u64::try_from(k.nodes).unwrap_or(1);
        let span = u64::try_from(k.chaos_for.as_millis()).unwrap_or(60_000);
        let at = |rng: &mut Rng| Instant::ZERO + Duration::from_millis(1000 + rng.below(span));
        for _ in 0..k.freezes {
            let t = at(&mut self.rng);
            let node = usize::try_from(self.rng.below(n)).unwrap_or(0);
            let for_ = self.rng.ms(50, 6000);
            self.at(t, Ev::Fault(Fault::Freeze { node, for_ }));
        }
        for _ in 0..k.crashes {
            let t = at(&mut self.rng);
            let node = usize::try_from(self.rng.below(n)).unwrap_or(0);
            let down_for = self.rng.ms(0, 8000);
            self.at(t, Ev::Fault(Fault::Crash { node, down_for }));
        }
        for _ in 0..k.restarts {
            let t = at(&mut self.rng);
            let node = usize::try_from(self.rng.below(n)).unwrap_or(0);
            let down_for = self.rng.ms(0, 3000);
            self.at(t, Ev::Fault(Fault::Restart { node, down_for }));
        }
        for _ in 0..k.bucket_deletes {
            let t = at(&mut self.rng);
            let recreate_after = (!self.rng.chance(200)).then(|| self.rng.ms(0, 5000));
            self.at(t, Ev::Fault(Fault::DeleteBucket { recreate_after }));
        }
        for _ in 0..k.key_deletes {
            let t = at(&mut self.rng);
            self.at(t, Ev::Fault(Fault::DeleteKey));
        }
        for _ in 0..k.foreign_writes {
            let t = at(&mut self.rng);
            self.at(t, Ev::Fault(Fault::ForeignWrite));
        }
        for node in 0..self.nodes.len() {
            if k.start_all {
                let t = Instant::ZERO + self.rng.ms(0, 500);
                self.at(t, Ev::Start { node });
            }
        }
    }

    /// Schedules `ev` at `t`.
    pub(crate) fn at(&mut self, t: Instant, ev: Ev) {
        self.seq += 1;
        self.events.insert((t.max(self.now), self.seq), ev);
    }

    /// Starts node `node` (a fresh process) now.
    pub(crate) fn start_node(&mut self, node: usize) {
        self.at(self.now, Ev::Start { node });
    }

    /// Runs until `until`, judging after every instant.
    pub(crate) fn run_until(&mut self, until: Instant) {
        while let Some((&(t, _), _)) = self.events.first_key_value() {
            if t > until {
                break;
            }
            // Every event of this instant, then the judge.
            while let Some(entry) = self.events.first_entry() {
                if entry.key().0 != t {
                    break;
                }
                let ev = entry.remove();
                self.now = t;
                self.handle(ev);
            }
            self.judge_now();
        }
        self.now = self.now.max(until);
        self.judge_now();
    }

    /// Runs for `d` more.
    pub(crate) fn run_for(&mut self, d: Duration) {
        self.run_until(self.now + d);
    }

    /// The node's clock reading at real time `t`.
    fn local(&self, node: usize, t: Instant) -> Instant {
        let ppm = self.nodes[node].ppm;
        let ns = t.as_duration().as_nanos();
        let scaled = ns * u128::try_from(1_000_000 + ppm).unwrap_or(1_000_000) / 1_000_000;
        Instant::from_duration(Duration::from_nanos(
            u64::try_from(scaled).unwrap_or(u64::MAX),
        ))
    }

    /// The real time at which the node's clock reads `local` (rounded up).
    fn real(&self, node: usize, local: Instant) -> Instant {
        let ppm = u128::try_from(1_000_000 + self.nodes[node].ppm).unwrap_or(1_000_000);
        let ns = local.as_duration().as_nanos();
        let real = (ns * 1_000_000).div_ceil(ppm);
        Instant::from_duration(Duration::from_nanos(
            u64::try_from(real).unwrap_or(u64::MAX),
        ))
    }

    fn log(&mut self, line: String) {
        let now = self.now;
        self.judge.log.push(format!("{now:?} {line}"));
    }

    fn frozen(&self, node: usize) -> bool {
        self.nodes[node].frozen_until.is_some_and(|t| t > self.now)
    }

    fn handle(&mut self, ev: Ev) {
        // A frozen process does nothing until it thaws; what was due waits.
        let for_node = match &ev {
            Ev::Wake { node, .. }
            | Ev::Answer { node, .. }
            | Ev::GiveUp { node, .. }
            | Ev::Watch { node }
            | Ev::Rewatch { node, .. } => Some(*node),
            _ => None,
        };
        if let Some(node) = for_node
            && self.frozen(node)
        {
            let until = self.nodes[node].frozen_until.unwrap_or(self.now);
            self.at(until, ev);
            return;
        }
        match ev {
            Ev::Wake { node, generation } => {
                if self.nodes[node].wake_generation == generation && self.nodes[node].alive {
                    let now = self.local(node, self.now);
                    if let Some(m) = &mut self.nodes[node].m {
                        m.on_timeout(now);
                    }
                    self.pump(node);
                }
            }
            Ev::Arrive { node, flight, op } => self.arrive(node, flight, &op),
            Ev::Answer { node, flight, res } => {
                let n = &mut self.nodes[node];
                if !n.alive || n.flight.as_ref().is_none_or(|f| f.id != flight) {
                    return;
                }
                let mut f = n.flight.take().expect("checked");
                let next = n.store.step(&mut f.prog, res);
                self.advance_flight(node, f, next);
            }
            Ev::GiveUp { node, flight } => {
                let n = &mut self.nodes[node];
                if !n.alive || n.flight.as_ref().is_none_or(|f| f.id != flight) {
                    return;
                }
                let f = n.flight.take().expect("checked");
                match f.request {
                    Some(_) => self.reply(node, Reply::Failed),
                    None => {
                        let t = self.now + Duration::from_millis(200);
                        self.nodes[node].alive = false;
                        self.at(t, Ev::Start { node });
                    }
                }
            }
            Ev::Watch { node } => self.deliver_watch(node),
            Ev::Rewatch { node, generation } => {
                if self.nodes[node].alive && self.nodes[node].watch.generation == generation {
                    // `store.rewatch`: a bucket back with an epoch newer than we knew is a
                    // re-created one.
                    let newer = self
                        .server
                        .bucket
                        .as_ref()
                        .is_some_and(|b| b.epoch > self.nodes[node].store.known_epoch);
                    self.open_watch(node);
                    if newer && self.nodes[node].watch.up {
                        self.log(format!("n{node}: new watch on a re-created bucket"));
                        let now = self.local(node, self.now);
                        if let Some(m) = &mut self.nodes[node].m {
                            m.on_bucket_recreated(now);
                        }
                        self.pump(node);
                    }
                }
            }
            Ev::Expire { epoch, seq } => {
                let mut effects = Vec::new();
                self.server.expire(epoch, seq, self.now, &mut effects);
                self.effects(effects);
            }
            Ev::Start { node } => self.start(node),
            Ev::Fault(f) => self.fault(f),
        }
    }

    fn fault(&mut self, fault: Fault) {
        self.log(format!("fault {fault:?}"));
        match fault {
            Fault::Freeze { node, for_ } => {
                let until = self.now + for_;
                let n = &mut self.nodes[node];
                n.frozen_until = Some(n.frozen_until.map_or(until, |t| t.max(until)));
            }
            Fault::Crash { node, down_for } => {
                if self.nodes[node].alive {
                    self.kill(node);
                    let t = self.now + down_for;
                    self.at(t, Ev::Start { node });
                }
            }
            Fault::Restart { node, down_for } => {
                let now = self.local(node, self.now);
                let n = &mut self.nodes[node];
                if n.alive && n.restart_after.is_none() {
                    n.restart_after = Some(down_for);
                    if let Some(m) = &mut n.m {
                        m.on_shutdown(now);
                    }
                    self.pump(node);
                }
            }
            Fault::DeleteBucket { recreate_after } => {
                if self.server.delete_bucket() {
                    for node in 0..self.nodes.len() {
                        if self.nodes[node].watch.up {
                            self.push_watch(node, Item::Broken);
                        }
                    }
                }
                if let Some(d) = recreate_after {
                    let t = self.now + d;
                    self.at(t, Ev::Fault(Fault::PutOtherKey));
                }
            }
            Fault::PutOtherKey => {
                let mut effects = Vec::new();
                self.server.put_other_key(self.now, &mut effects);
                self.effects(effects);
            }
            Fault::DeleteKey => {
                let mut effects = Vec::new();
                self.server.delete_lease_key(self.now, &mut effects);
                self.effects(effects);
            }
            Fault::ForeignWrite => {
                let mut effects = Vec::new();
                self.server
                    .put_lease_key(self.now, Value::Other, &mut effects);
                self.effects(effects);
            }
        }
    }

    /// The process dies: its work with it; nothing is resigned.
    fn kill(&mut self, node: usize) {
        let n = &mut self.nodes[node];
        n.alive = false;
        n.m = None;
        n.working = None;
        n.flight = None;
        n.watch = WatchState {
            generation: n.watch.generation + 1,
            extra: n.watch.extra,
            ..WatchState::default()
        };
        n.fences = FenceQueue::new(16);
        n.restart_after = None;
        n.frozen_until = None;
        self.judge.acting[node] = None;
    }

    fn start(&mut self, node: usize) {
        if self.nodes[node].alive {
            return;
        }
        let instance = self.next_instance;
        self.next_instance += 1;
        let n = &mut self.nodes[node];
        n.alive = true;
        n.store.instance = instance;
        n.store.known_epoch = 0;
        self.log(format!("n{node} starts (instance {instance})"));
        let (prog, op) = Store::prepare();
        self.send(node, prog, None, op);
    }

    /// The machine exists: the bucket is ready and the watch is up.
    fn prepared(&mut self, node: usize, wait: Duration) {
        let now = self.local(node, self.now);
        let config = self.config;
        let m = if wait.is_zero() {
            Machine::new(config, now)
        } else {
            Machine::contesting_at(config, now, now + wait)
        };
        self.nodes[node].m = Some(m);
        self.open_watch(node);
        self.pump(node);
    }

    /// The driver's watch on the key: delivers the current value, then every change.
    fn open_watch(&mut self, node: usize) {
        let Some(b) = &self.server.bucket else {
            self.watch_ended(node);
            return;
        };
        let epoch = b.epoch;
        let current = b.lease.last().cloned();
        let w = &mut self.nodes[node].watch;
        w.up = true;
        w.epoch = epoch;
        w.pauses = 0;
        if let Some(rec) = current {
            let item = match rec.value {
                Some(value) => Item::Put {
                    rev: rec.seq,
                    value,
                },
                None => Item::Gone { rev: rec.seq },
            };
            self.push_watch(node, item);
        }
    }

    fn watch_ended(&mut self, node: usize) {
        let poll = self.config.poll_interval;
        let w = &mut self.nodes[node].watch;
        w.up = false;
        w.queue.clear();
        w.generation += 1;
        w.pauses += 1;
        let pause = (poll * w.pauses).min(poll.max(Duration::from_secs(1)) * 2);
        let generation = w.generation;
        let t = self.now + pause;
        self.at(t, Ev::Rewatch { node, generation });
    }

    fn push_watch(&mut self, node: usize, item: Item) {
        let d = self.rng.ms(1, 60) + self.nodes[node].watch.extra;
        let w = &mut self.nodes[node].watch;
        let due = (self.now + d).max(w.last_due);
        w.last_due = due;
        w.queue.push_back((due, item));
        self.at(due, Ev::Watch { node });
    }

    fn deliver_watch(&mut self, node: usize) {
        loop {
            let w = &mut self.nodes[node].watch;
            if !w.up {
                return;
            }
            let Some((due, _)) = w.queue.front() else {
                return;
            };
            if *due > self.now {
                return;
            }
            let (_, item) = w.queue.pop_front().expect("checked");
            let now = self.local(node, self.now);
            match item {
                Item::Broken => match &self.server.bucket {
                    None => {
                        self.log(format!("n{node}: watch ended (bucket gone)"));
                        self.watch_ended(node);
                        return;
                    }
                    Some(b) if b.epoch != self.nodes[node].watch.epoch => {
                        // natty-kv: BucketRecreated, then the new bucket's current value.
                        self.log(format!("n{node}: watch saw the bucket re-created"));
                        self.watched_recreated(node, now);
                        self.open_watch(node);
                    }
                    Some(_) => {}
                },
                Item::Put { rev, value } => self.watched_put(node, now, rev, &value),
                Item::Gone { rev } => {
                    if let Some(m) = &mut self.nodes[node].m {
                        m.on_key_gone(now, rev);
                    }
                }
            }
            self.pump(node);
        }
    }

    /// `store.watched` for a put.
    fn watched_put(&mut self, node: usize, now: Instant, rev: u64, value: &Value) {
        let n = &mut self.nodes[node];
        match value {
            Value::Lease(l) => {
                n.store.known_epoch = n.store.known_epoch.max(l.epoch);
                if let Some(m) = &mut n.m {
                    let holder =
                        natty_election_proto::Holder::new(format!("n{}", l.slot), l.term_at(rev));
                    m.on_key_written(now, holder, rev);
                }
            }
            Value::Other => {
                if let Some(m) = &mut n.m {
                    m.on_key_taken(now, rev);
                }
            }
        }
    }

    /// `store.watched` for natty-kv's `BucketRecreated`.
    fn watched_recreated(&mut self, node: usize, now: Instant) {
        if let Some(m) = &mut self.nodes[node].m {
            m.on_bucket_recreated(now);
        }
    }

    /// Sends the first operation of a request (or set-up).
    fn send(&mut self, node: usize, prog: Prog, request: Option<Request>, op: Op) {
        let id = self.next_flight;
        self.next_flight += 1;
        self.nodes[node].flight = Some(Flight { id, prog, request });
        let limit = match request {
            Some(Request::Renew { .. } | Request::Fence { .. }) => self.config.renew_interval,
            _ => REQUEST_TIMEOUT,
        };
        let t = self.now + limit;
        self.at(t, Ev::GiveUp { node, flight: id });
        self.send_op(node, id, op);
    }

    fn delay(&mut self) -> Option<Duration> {
        if self.rng.chance(self.knobs.loss) {
            return None;
        }
        Some(if self.rng.chance(self.knobs.slow) {
            self.rng.ms(100, 3000)
        } else {
            self.rng.ms(1, 20)
        })
    }

    fn send_op(&mut self, node: usize, flight: u64, op: Op) {
        if let Some(d) = self.delay() {
            let t = self.now + d;
            self.at(t, Ev::Arrive { node, flight, op });
        }
    }

    fn arrive(&mut self, node: usize, flight: u64, op: &Op) {
        let (lo, hi) = (
            self.knobs.min_lag,
            self.server.max_lag.max(self.knobs.min_lag),
        );
        let lag = lo + self.rng.below(hi - lo + 1);
        let wipe = self.knobs.wipe && self.rng.chance(500);
        let slack = self.rng.ms(0, 500);
        let mut effects = Vec::new();
        let res = self
            .server
            .apply(op, self.now, TTL, lag, wipe, slack, &mut effects);
        self.effects(effects);
        if let Some(d) = self.delay() {
            let t = self.now + d;
            self.at(t, Ev::Answer { node, flight, res });
        }
    }

    fn effects(&mut self, effects: Vec<Effect>) {
        for e in effects {
            match e {
                Effect::Wrote(rec) => {
                    let epoch = self.server.bucket.as_ref().map_or(0, |b| b.epoch);
                    for node in 0..self.nodes.len() {
                        let w = &self.nodes[node].watch;
                        if w.up && w.epoch == epoch {
                            let item = match rec.value.clone() {
                                Some(value) => Item::Put {
                                    rev: rec.seq,
                                    value,
                                },
                                None => Item::Gone { rev: rec.seq },
                            };
                            self.push_watch(node, item);
                        }
                    }
                }
                Effect::ExpireAt { epoch, seq, at } => self.at(at, Ev::Expire { epoch, seq }),
                Effect::Fenced { on, value, at } => self.judge_fence(on.as_ref(), &value, at),
                Effect::Created => {
                    let epoch = self.server.bucket.as_ref().map_or(0, |b| b.epoch);
                    self.log(format!("bucket created, epoch {epoch}"));
                    // Watches on an older bucket notice (natty-kv checks the stream).
                    for node in 0..self.nodes.len() {
                        let w = &self.nodes[node].watch;
                        if w.up
                            && w.epoch != epoch
                            && !w.queue.iter().any(|(_, i)| matches!(i, Item::Broken))
                        {
                            self.push_watch(node, Item::Broken);
                        }
                    }
                }
            }
        }
    }

    fn advance_flight(&mut self, node: usize, f: Flight, next: Next) {
        match next {
            Next::Op(op) => {
                let id = f.id;
                self.nodes[node].flight = Some(f);
                self.send_op(node, id, op);
            }
            Next::Reply(reply) => self.reply(node, reply),
            Next::Prepared { wait } => self.prepared(node, wait),
            Next::Retry => {
                let t = self.now + Duration::from_millis(200);
                self.nodes[node].alive = false;
                self.at(t, Ev::Start { node });
            }
        }
    }

    fn reply(&mut self, node: usize, reply: Reply) {
        let now = self.local(node, self.now);
        self.log(format!("n{node} <- {reply:?}"));
        let n = &mut self.nodes[node];
        let _ = n.fences.settle(&reply);
        if let Some(m) = &mut n.m {
            m.on_reply(now, reply);
            if n.fences.wants_fence() {
                m.on_fence_wanted(now);
            }
        }
        self.pump(node);
    }

    /// The driver's loop body: work first, then the request, then events, then the timer.
    fn pump(&mut self, node: usize) {
        if !self.nodes[node].alive {
            return;
        }
        let now = self.now;
        let Some(mut m) = self.nodes[node].m.take() else {
            return;
        };
        while let Some(w) = m.poll_work() {
            let n = &mut self.nodes[node];
            match w {
                Work::Start { term } => {
                    if n.working.is_some() {
                        self.judge
                            .violations
                            .push(format!("{now:?} n{node}: work started twice"));
                    }
                    n.working = Some(term);
                }
                Work::Stop { term, .. } => {
                    if n.working != Some(term) {
                        self.judge.violations.push(format!(
                            "{now:?} n{node}: stopping {term} while working {:?}",
                            n.working
                        ));
                    }
                    n.working = None;
                    let _ = n.fences.end();
                }
            }
        }
        let n = &mut self.nodes[node];
        let _ = n.fences.take_stale(m.term());
        // The leader's work wants a fenced write now and then.
        if let Some(term) = m.term()
            && self.knobs.fences > 0
            && self.rng.chance(self.knobs.fences)
            && n.fences.push(term, 0, Some(term)).is_ok()
        {
            let local = self.local(node, now);
            m.on_fence_wanted(local);
        }
        let mut request = m.poll_request();
        let mut events = Vec::new();
        while let Some(e) = m.poll_event() {
            events.push(e);
        }
        let stopped = m.is_stopped();
        let timeout = m.poll_timeout();
        let term = m.term();
        self.nodes[node].m = Some(m);
        if let Some(r) = request.take() {
            let n = &mut self.nodes[node];
            let fence = matches!(r, Request::Fence { .. }) && n.fences.begin().is_some();
            let (prog, op) = n.store.start(r, term, fence);
            self.log(format!("n{node} -> {r:?}"));
            self.send(node, prog, Some(r), op);
        }
        for e in events {
            self.judge_event(node, &e);
        }
        if stopped {
            // A graceful exit: the process ends (and starts again later).
            let after = self.nodes[node].restart_after.unwrap_or(Duration::ZERO);
            self.log(format!("n{node} stopped"));
            self.kill(node);
            let t = self.now + after;
            self.at(t, Ev::Start { node });
            return;
        }
        if let Some(t) = timeout {
            let t = self.real(node, t);
            let n = &mut self.nodes[node];
            n.wake_generation += 1;
            let generation = n.wake_generation;
            self.at(t, Ev::Wake { node, generation });
        }
    }

    fn judge_event(&mut self, node: usize, e: &Event) {
        self.log(format!("n{node}: {e:?}"));
        match e {
            Event::Elected { term } => {
                self.nodes[node].elected += 1;
                if let Some((t, last, who)) = self
                    .judge
                    .elected
                    .iter()
                    .filter(|(_, t, _)| t >= term)
                    .max_by_key(|(_, t, _)| *t)
                {
                    self.judge.violations.push(format!(
                        "{:?} n{node} elected in {term}, not above {last} (n{who} at {t:?})",
                        self.now
                    ));
                }
                self.judge.elected.push((self.now, *term, node));
            }
            Event::Lost { term, .. } if self.nodes[node].working.is_some_and(|w| w == *term) => {
                self.judge.violations.push(format!(
                    "{:?} n{node}: lost {term} with its work still running",
                    self.now
                ));
            }
            _ => {}
        }
    }

    /// A fenced write landed at `at`, conditioned on the record `on`: that record must be
    /// this leader's own lease in the same term, and no later term may have begun.
    fn judge_fence(&mut self, on: Option<&crate::kv::Rec>, value: &Lease, at: Instant) {
        self.judge.fenced += 1;
        let term = value.term_at(0);
        let own = on.is_some_and(|r| match &r.value {
            Some(Value::Lease(l)) => l.instance == value.instance && l.term_at(r.seq) == term,
            _ => false,
        });
        if !own {
            self.judge.violations.push(format!(
                "{at:?} n{}: fenced write of term {term} landed on someone else's record {on:?}",
                value.slot
            ));
        }
        if let Some((t, later, who)) = self.judge.elected.iter().find(|(_, t, _)| *t > term) {
            self.judge.violations.push(format!(
                "{at:?} n{}: fenced write of term {term} landed after n{who} was elected in {later} at {t:?}",
                value.slot
            ));
        }
    }

    /// At most one node acts at any instant: working, its lease valid by its own clock, and
    /// not frozen.
    fn judge_now(&mut self) {
        let now = self.now;
        let mut acting = Vec::new();
        for node in 0..self.nodes.len() {
            let n = &self.nodes[node];
            let local = self.local(node, now);
            let is = n.alive
                && !self.frozen(node)
                && n.working.is_some()
                && n.m.as_ref().is_some_and(|m| m.is_leader(local));
            let term = n.working;
            match (is, term) {
                (true, Some(term)) => {
                    acting.push((node, term));
                    if self.judge.acting[node].is_none_or(|(t, _)| t != term) {
                        self.judge.acting[node] = Some((term, now));
                    }
                }
                _ => self.judge.acting[node] = None,
            }
        }
        if acting.len() > 1 {
            let since = *self.judge.overlap_since.get_or_insert(now);
            self.judge.max_overlap = self.judge.max_overlap.max(now - since);
            if self
                .judge
                .violations
                .iter()
                .all(|v| !v.contains("act at once"))
            {
                let mut line = format!("{now:?} two leaders act at once:");
                for (node, term) in &acting {
                    let _ = write!(line, " n{node} in {term};");
                }
                self.judge.violations.push(line);
            }
        } else {
            self.judge.overlap_since = None;
        }
    }

    /// The node leading now, if exactly one does.
    pub(crate) fn leader(&self) -> Option<usize> {
        let leaders: Vec<usize> = (0..self.nodes.len())
            .filter(|&node| {
                let n = &self.nodes[node];
                n.alive
                    && n.m
                        .as_ref()
                        .is_some_and(|m| m.is_leader(self.local(node, self.now)))
            })
            .collect();
        (leaders.len() == 1).then(|| leaders[0])
    }

    /// Whether `node` leads now.
    pub(crate) fn leads(&self, node: usize) -> bool {
        let n = &self.nodes[node];
        n.alive
            && n.m
                .as_ref()
                .is_some_and(|m| m.is_leader(self.local(node, self.now)))
    }

    /// Node `node`'s machine state, for failure messages.
    pub(crate) fn state(&self, node: usize) -> Option<&State> {
        self.nodes[node].m.as_ref().map(Machine::state)
    }

    /// Fails with the log's tail when the judge found anything.
    pub(crate) fn assert_safe(&self, what: &str) {
        assert!(
            self.judge.violations.is_empty(),
            "{what}: {}\n(longest overlap {:?})\nlog tail:\n{}",
            self.judge.violations.join("\n"),
            self.judge.max_overlap,
            self.judge
                .log
                .iter()
                .rev()
                .take(60)
                .rev()
                .cloned()
                .collect::<Vec<_>>()
                .join("\n")
        );
    }

    /// Deletes the bucket now; another election's put re-creates it after `after`.
    pub(crate) fn delete_bucket(&mut self, recreate_after: Option<Duration>) {
        self.fault(Fault::DeleteBucket { recreate_after });
    }

    /// Deletes the lease key now (someone else's blind delete).
    pub(crate) fn delete_key(&mut self) {
        self.fault(Fault::DeleteKey);
    }

    /// Delays everything `node`'s watch delivers by `d` more (a watch that lags).
    pub(crate) fn slow_watch(&mut self, node: usize, d: Duration) {
        self.nodes[node].watch.extra = d;
    }

    /// How many requests `node` sent so far.
    pub(crate) fn requests(&self, node: usize) -> usize {
        let name = format!("n{node} -> ");
        self.judge.log.iter().filter(|l| l.contains(&name)).count()
    }

    /// Freezes `node` for `d` from now.
    #[allow(dead_code, reason = "for the scenario tests to come")]
    pub(crate) fn freeze(&mut self, node: usize, d: Duration) {
        self.fault(Fault::Freeze { node, for_: d });
    }

    /// Runs until `cond` holds (checked after every instant), at most `limit`.
    pub(crate) fn run_until_cond(
        &mut self,
        limit: Duration,
        mut cond: impl FnMut(&Self) -> bool,
    ) -> bool {
        let until = self.now + limit;
        while self.now < until {
            if cond(self) {
                return true;
            }
            let next = self
                .events
                .first_key_value()
                .map_or(until, |(&(t, _), _)| t.min(until));
            self.run_until(next.max(self.now + MS).min(until));
        }
        cond(self)
    }
}
