//! Issue 5: every rule of the decision inside Envoy, live sync, last-known-good, limits, usage.

use keygate_e2e::StackOptions;

use crate::{Case, Suite};

pub fn suites() -> Vec<Suite> {
    vec![Suite { name: "filter", options: StackOptions::default, cases: CASES }]
}

const CASES: &[Case] = &[];
