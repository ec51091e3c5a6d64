//! natty-stream (not written yet).
