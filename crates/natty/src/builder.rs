//! [`NattyBuilder`]: what a [`Natty`] handle does beyond connecting.

use natty_core::{ConnectOptions, ConnectionEvent};

use crate::{Error, Natty};

/// Connects a [`Natty`] with settings beyond the connection: the defaults of buckets it
/// creates on first write, the publisher behind [`Natty::publish`], the JetStream domain, and
/// a hook for connection events. From [`Natty::builder`].
///
/// ```no_run
/// # #[cfg(all(feature = "kv", feature = "stream"))]
/// # async fn example() -> Result<(), natty::Error> {
/// use natty::{BatchConfig, BucketConfig, ConnectOptions, Natty};
/// let natty = Natty::builder(ConnectOptions::new(["nats://n1:4222", "nats://n2:4222"]))
///     // Buckets created by a first `put`/`create`: 3 replicas, 5 revisions per key.
///     .bucket_defaults(BucketConfig::new("defaults").replicas(3).history(5))
///     .publisher(BatchConfig::default().max_in_flight(1_000))
///     .on_event(|event| eprintln!("NATS: {event}"))
///     .connect()
///     .await?;
/// # let _ = natty; Ok(()) }
/// ```
#[derive(Debug)]
#[must_use]
pub struct NattyBuilder {
    options: ConnectOptions,
    #[cfg(feature = "kv")]
    bucket_defaults: natty_kv::BucketConfig,
    #[cfg(feature = "stream")]
    publisher: natty_stream::BatchConfig,
}

/// The name validation gives the bucket defaults (their own name is never used).
#[cfg(feature = "kv")]
const DEFAULTS_NAME: &str = "bucket-defaults";

impl NattyBuilder {
    pub(crate) fn new(options: ConnectOptions) -> Self {
        Self {
            options,
            #[cfg(feature = "kv")]
            bucket_defaults: natty_kv::BucketConfig::new(DEFAULTS_NAME),
            #[cfg(feature = "stream")]
            publisher: natty_stream::BatchConfig::default(),
        }
    }

    /// The settings of buckets created on first write (`put`, `create`, …): replicas,
    /// storage, history, TTL, per-key TTL. The name of `defaults` is ignored. Default:
    /// [`BucketConfig::new`](natty_kv::BucketConfig::new)'s (1 replica, history 1, file);
    /// use 3 replicas in a production cluster.
    #[cfg(feature = "kv")]
    pub fn bucket_defaults(mut self, defaults: natty_kv::BucketConfig) -> Self {
        self.bucket_defaults = defaults.with_name(DEFAULTS_NAME);
        self
    }

    /// The configuration of the batch publisher behind [`Natty::publish`] (started on first
    /// use).
    #[cfg(feature = "stream")]
    pub fn publisher(mut self, config: natty_stream::BatchConfig) -> Self {
        self.publisher = config;
        self
    }

    /// Use the JetStream API of this domain (see [`ConnectOptions::jetstream_domain`]).
    pub fn jetstream_domain(mut self, domain: impl Into<String>) -> Self {
        self.options = self.options.jetstream_domain(domain);
        self
    }

    /// Use the JetStream API under this prefix (see
    /// [`ConnectOptions::jetstream_api_prefix`]).
    pub fn jetstream_api_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.options = self.options.jetstream_api_prefix(prefix);
        self
    }

    /// Calls `hook` on every connection event, server errors such as permission violations
    /// included (see [`ConnectOptions::on_event`]).
    pub fn on_event(mut self, hook: impl Fn(ConnectionEvent) + Send + Sync + 'static) -> Self {
        self.options = self.options.on_event(hook);
        self
    }

    /// Connect in the background (see [`ConnectOptions::retry_on_initial_connect`]).
    pub fn retry_on_initial_connect(mut self) -> Self {
        self.options = self.options.retry_on_initial_connect();
        self
    }

    /// Checks every setting without touching the network.
    pub fn validate(&self) -> Result<(), Error> {
        self.options.validate()?;
        #[cfg(feature = "kv")]
        self.bucket_defaults.validate()?;
        #[cfg(feature = "stream")]
        self.publisher.validate()?;
        Ok(())
    }

    /// Checks the settings, connects, and returns the handle.
    pub async fn connect(self) -> Result<Natty, Error> {
        self.validate()?;
        let client = self.options.connect().await?;
        Ok(Natty::from_parts(
            client,
            #[cfg(feature = "kv")]
            self.bucket_defaults,
            #[cfg(feature = "stream")]
            self.publisher,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::NattyBuilder;
    use natty_core::ConnectOptions;

    fn builder() -> NattyBuilder {
        NattyBuilder::new(ConnectOptions::new(["nats://127.0.0.1:4222"]))
    }

    #[test]
    fn nonsense_is_refused_before_connecting() {
        let e = builder().jetstream_domain("a.b").validate().unwrap_err();
        assert!(e.is_invalid_input(), "{e}");
        #[cfg(feature = "kv")]
        {
            let e = builder()
                .bucket_defaults(natty_kv::BucketConfig::new("x").replicas(9))
                .validate()
                .unwrap_err();
            assert_eq!(e.kv_kind(), Some(natty_kv::ErrorKind::InvalidConfig), "{e}");
        }
        #[cfg(feature = "stream")]
        {
            let e = builder()
                .publisher(natty_stream::BatchConfig::default().max_in_flight(0))
                .validate()
                .unwrap_err();
            assert_eq!(
                e.stream_kind(),
                Some(natty_stream::ErrorKind::InvalidConfig),
                "{e}"
            );
        }
        builder().validate().unwrap();
    }

    #[cfg(feature = "kv")]
    #[test]
    fn bucket_defaults_keep_everything_but_the_name() {
        let b = builder().bucket_defaults(
            natty_kv::BucketConfig::new("ignored")
                .replicas(3)
                .history(7)
                .storage(natty_kv::Storage::Memory),
        );
        let d = &b.bucket_defaults;
        assert_eq!(
            (d.replicas, d.history, d.storage),
            (3, 7, natty_kv::Storage::Memory)
        );
    }
}
