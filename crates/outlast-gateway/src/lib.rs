//! Outlast gateway.
