//! Sign-in throttling, in memory and bounded. Two counters per failed attempt: one for
//! the (email, client address) pair and one for the client address alone. Blocking the
//! pair stops password guessing from one client without locking the real owner out from
//! anywhere else; blocking the address stops one client spraying many accounts. The
//! window doubles with each failure past the free ones (see [`ThrottleConfig`]).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::config::ThrottleConfig;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Subject {
    Pair(IpAddr, String),
    Client(IpAddr),
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    last_failure: Instant,
    blocked_until: Option<Instant>,
}

#[derive(Debug)]
pub struct Throttle {
    config: ThrottleConfig,
    entries: Mutex<HashMap<Subject, Entry>>,
}

impl Throttle {
    pub fn new(config: ThrottleConfig) -> Throttle {
        Throttle { config, entries: Mutex::new(HashMap::new()) }
    }

    fn subjects(ip: IpAddr, email: &str) -> [Subject; 2] {
        [Subject::Pair(ip, email.to_owned()), Subject::Client(ip)]
    }

    /// `Err(seconds)` while the pair or the client is blocked.
    pub fn check(&self, ip: IpAddr, email: &str) -> Result<(), u64> {
        self.check_at(ip, email, Instant::now())
    }

    fn check_at(&self, ip: IpAddr, email: &str, now: Instant) -> Result<(), u64> {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let wait = Self::subjects(ip, email)
            .iter()
            .filter_map(|s| entries.get(s))
            .filter_map(|e| e.blocked_until)
            .filter(|until| *until > now)
            .map(|until| until - now)
            .max();
        match wait {
            // Whole seconds, rounded up: Retry-After is in seconds.
            Some(wait) => Err(wait.as_secs() + u64::from(wait.subsec_nanos() > 0)),
            None => Ok(()),
        }
    }

    pub fn failure(&self, ip: IpAddr, email: &str) {
        self.failure_at(ip, email, Instant::now());
    }

    fn failure_at(&self, ip: IpAddr, email: &str, now: Instant) {
        let c = &self.config;
        let forget = Duration::from_secs(c.forget_secs);
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.len() + 2 > c.max_entries {
            entries.retain(|_, e| e.blocked_until.is_some_and(|u| u > now) || now.duration_since(e.last_failure) < forget);
            if entries.len() + 2 > c.max_entries {
                // Still full of fresh entries: an attack on the table itself. Keep the blocks.
                entries.retain(|_, e| e.blocked_until.is_some_and(|u| u > now));
                if entries.len() + 2 > c.max_entries {
                    entries.clear();
                }
            }
        }
        for subject in Self::subjects(ip, email) {
            let free = match subject {
                Subject::Pair(..) => c.pair_free,
                Subject::Client(_) => c.client_free,
            };
            let entry = entries.entry(subject).or_insert(Entry { failures: 0, last_failure: now, blocked_until: None });
            if now.duration_since(entry.last_failure) >= forget {
                *entry = Entry { failures: 0, last_failure: now, blocked_until: None };
            }
            entry.failures = entry.failures.saturating_add(1);
            entry.last_failure = now;
            if entry.failures >= free.max(1) {
                let doublings = (entry.failures - free.max(1)).min(30);
                let secs = c.base_secs.max(1).saturating_mul(1u64 << doublings).min(c.max_secs.max(1));
                entry.blocked_until = Some(now + Duration::from_secs(secs));
            }
        }
    }

    /// A correct password clears its pair (not the client: a sprayer with one right
    /// guess stays throttled).
    pub fn success(&self, ip: IpAddr, email: &str) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.remove(&Subject::Pair(ip, email.to_owned()));
    }

    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn pairs_block_after_free_failures_and_back_off() {
        let t = Throttle::new(ThrottleConfig { pair_free: 3, client_free: 100, base_secs: 1, max_secs: 8, forget_secs: 900, max_entries: 1000 });
        let now = Instant::now();
        for _ in 0..2 {
            t.failure_at(ip(1), "a@x.io", now);
            assert_eq!(t.check_at(ip(1), "a@x.io", now), Ok(()));
        }
        t.failure_at(ip(1), "a@x.io", now);
        assert_eq!(t.check_at(ip(1), "a@x.io", now), Err(1));
        // Another client, or another account from this client, is not blocked.
        assert_eq!(t.check_at(ip(2), "a@x.io", now), Ok(()));
        assert_eq!(t.check_at(ip(1), "b@x.io", now), Ok(()));
        let later = now + Duration::from_secs(2);
        assert_eq!(t.check_at(ip(1), "a@x.io", later), Ok(()));
        t.failure_at(ip(1), "a@x.io", later);
        assert_eq!(t.check_at(ip(1), "a@x.io", later), Err(2));
        for _ in 0..10 {
            t.failure_at(ip(1), "a@x.io", later);
        }
        assert_eq!(t.check_at(ip(1), "a@x.io", later), Err(8), "capped");
        t.success(ip(1), "a@x.io");
        assert_eq!(t.check_at(ip(1), "a@x.io", later), Ok(()));
    }

    #[test]
    fn a_client_spraying_accounts_is_blocked_and_memory_is_bounded() {
        let t = Throttle::new(ThrottleConfig { pair_free: 5, client_free: 4, base_secs: 1, max_secs: 8, forget_secs: 900, max_entries: 50 });
        let now = Instant::now();
        for i in 0..4 {
            t.failure_at(ip(9), &format!("u{i}@x.io"), now);
        }
        assert!(t.check_at(ip(9), "new@x.io", now).is_err());
        for i in 0..1000u32 {
            t.failure_at(IpAddr::from(i.to_be_bytes()), "z@x.io", now);
            assert!(t.len() <= 50);
        }
    }
}
