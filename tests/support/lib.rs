//! Test harness for end-to-end suites.
