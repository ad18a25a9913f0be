//! What one VM's contexts share: the root context fills it, each request context reads it.

use std::cell::RefCell;

use keygate_core::usage::UsageBatch;
use keygate_core::TokenCache;

use crate::metrics::Metrics;
use crate::shared::View;

/// What the request contexts of one VM share with its root context.
#[derive(Debug, Default)]
pub struct VmState {
    pub view: RefCell<View>,
    pub tokens: RefCell<TokenCache>,
    pub usage: RefCell<UsageBatch>,
    pub metrics: Metrics,
}
