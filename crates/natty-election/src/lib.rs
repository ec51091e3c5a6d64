//! natty-election (not written yet).
