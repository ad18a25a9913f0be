//! Issue 6: attacks through the real Envoy (RFC 8725 JWT cases, API-key cases).

use keygate_e2e::StackOptions;

use crate::{Case, Suite};

pub fn suites() -> Vec<Suite> {
    vec![Suite { name: "attacks", options: StackOptions::default, cases: CASES }]
}

const CASES: &[Case] = &[];
