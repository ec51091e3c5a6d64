//! natty-kv (not written yet).
