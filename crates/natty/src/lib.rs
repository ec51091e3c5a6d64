//! natty (not written yet).
