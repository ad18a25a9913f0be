//! Issue 4: the credential lifecycle through the real admin binary (and Envoy where the
//! filter is involved).

use keygate_e2e::StackOptions;

use crate::{Case, Suite};

pub fn suites() -> Vec<Suite> {
    vec![Suite { name: "lifecycle", options: StackOptions::default, cases: CASES }]
}

const CASES: &[Case] = &[];
