//! Live patching (being built: see issue 8).
