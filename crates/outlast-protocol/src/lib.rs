//! Outlast wire protocol.
