//! natty-election: leader election on a NATS KV key.
pub mod machine;
