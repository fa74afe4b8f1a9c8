//! test-guest
