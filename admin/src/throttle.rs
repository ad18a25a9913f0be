//! Sign-in throttling, in memory and bounded. Two counters per failed attempt: one for
//! the (email, client address) pair and one for the client address alone. Blocking the
//! pair stops password guessing from one client without locking the real owner out from
//! anywhere else; blocking the address stops one client spraying many accounts. The
//! window doubles with each failure past the free ones (see [`ThrottleConfig`]).
//!
//! An attempt is reserved before its password is checked and counts as a failure while in
//! flight, so parallel guesses cannot all pass the check before the first one fails.
//!
//! [`LoginLimiter`] rate-limits API-key logins per key and per client address.
//!
//! On a store other replicas share, the counts and blocks live in the database
//! ([`SharedLimits`]) so they hold across the fleet; the in-memory table still keeps each
//! replica's attempts in flight. If the database cannot be reached, each replica falls back
//! to counting alone (and says so in its log) rather than refusing every attempt.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::config::{LoginLimitConfig, ThrottleConfig};
use crate::digest;
use crate::store::limits::{self, FailureRule, SharedLimits, Subject as SharedSubject};
use crate::store::Store;

/// A counter's name in the shared table: a digest, so no email or address is stored.
fn shared_subject(kind: &str, what: &str) -> SharedSubject {
    digest::sha256(&format!("{kind}\0{what}"))
}

/// The store's shared counters, if it has any.
fn shared(store: &Option<Store>) -> Option<&dyn SharedLimits> {
    store.as_ref().and_then(Store::shared_limits)
}

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
    /// Attempts reserved by [`Throttle::begin`] whose password check has not finished.
    in_flight: u32,
}

impl Entry {
    fn fresh(now: Instant) -> Entry {
        Entry { failures: 0, last_failure: now, blocked_until: None, in_flight: 0 }
    }
}

#[derive(Debug)]
pub struct Throttle {
    config: ThrottleConfig,
    entries: Mutex<HashMap<Subject, Entry>>,
    /// Where the counts are shared with other replicas.
    store: Option<Store>,
}

/// Whole seconds, rounded up: Retry-After is in seconds.
fn retry_secs(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}

/// A sign-in attempt reserved by [`Throttle::begin`]. It counts as a failure unless
/// [`Attempt::succeeded`] is called, also when the request is dropped half-way.
#[must_use = "an attempt counts as a failure unless it succeeded"]
pub struct Attempt<'a> {
    throttle: &'a Throttle,
    ip: IpAddr,
    email: String,
    settled: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Succeeded,
    Failed,
    /// No password was checked (the check was refused for load): counts as nothing.
    Abandoned,
}

impl Attempt<'_> {
    /// The password was right: clears its pair.
    pub fn succeeded(mut self) {
        self.settled = true;
        self.throttle.finish(self.ip, &self.email, Outcome::Succeeded, Instant::now());
    }

    /// The password was never checked: the reservation is released without a failure.
    pub fn abandon(mut self) {
        self.settled = true;
        self.throttle.finish(self.ip, &self.email, Outcome::Abandoned, Instant::now());
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if !self.settled {
            self.throttle.finish(self.ip, &self.email, Outcome::Failed, Instant::now());
        }
    }
}

impl Throttle {
    pub fn new(config: ThrottleConfig) -> Throttle {
        Throttle { config, entries: Mutex::new(HashMap::new()), store: None }
    }

    /// Counts in `store`'s shared counters too, when it has them.
    pub fn sharing(self, store: Store) -> Throttle {
        Throttle { store: Some(store), ..self }
    }

    /// The pair's and the client's names in the shared counters, with their rules.
    fn shared_subjects(&self, ip: IpAddr, email: &str) -> [(SharedSubject, FailureRule); 2] {
        let c = &self.config;
        let rule = |free| FailureRule { free, base_secs: c.base_secs, max_secs: c.max_secs, forget_secs: c.forget_secs };
        [
            (shared_subject("signin-pair", &format!("{ip}\0{email}")), rule(c.pair_free)),
            (shared_subject("signin-client", &ip.to_string()), rule(c.client_free)),
        ]
    }

    /// Seconds the fleet-wide counts block this attempt for (0: not blocked).
    fn shared_block(&self, ip: IpAddr, email: &str) -> u64 {
        let Some(shared) = shared(&self.store) else { return 0 };
        let subjects = self.shared_subjects(ip, email).map(|(s, _)| s);
        shared.blocked_secs(&subjects).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot read the shared sign-in throttle; counting on this replica alone");
            0
        })
    }

    fn shared_outcome(&self, ip: IpAddr, email: &str, outcome: Outcome) {
        let Some(shared) = shared(&self.store) else { return };
        let [pair, client] = self.shared_subjects(ip, email);
        let written = match outcome {
            Outcome::Abandoned => Ok(()),
            Outcome::Succeeded => shared.clear(pair.0),
            Outcome::Failed => shared.count_failure(pair.0, pair.1).and_then(|()| shared.count_failure(client.0, client.1)),
        };
        if let Err(e) = written {
            tracing::warn!(error = %e, "cannot update the shared sign-in throttle; counting on this replica alone");
        }
    }

    fn subjects(ip: IpAddr, email: &str) -> [Subject; 2] {
        [Subject::Pair(ip, email.to_owned()), Subject::Client(ip)]
    }

    fn free(&self, subject: &Subject) -> u32 {
        match subject {
            Subject::Pair(..) => self.config.pair_free.max(1),
            Subject::Client(_) => self.config.client_free.max(1),
        }
    }

    /// Reserves an attempt for (`ip`, `email`), or `Err(seconds)` to wait. Refused while
    /// the pair or the client is blocked, and while its failures plus the attempts in
    /// flight reach its free count (past it, one attempt at a time).
    pub fn begin(&self, ip: IpAddr, email: &str) -> Result<Attempt<'_>, u64> {
        self.begin_at(ip, email, Instant::now())?;
        let attempt = Attempt { throttle: self, ip, email: email.to_owned(), settled: false };
        match self.shared_block(ip, email) {
            0 => Ok(attempt),
            wait => {
                attempt.abandon();
                Err(wait)
            }
        }
    }

    fn begin_at(&self, ip: IpAddr, email: &str, now: Instant) -> Result<(), u64> {
        let forget = Duration::from_secs(self.config.forget_secs);
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let subjects = Self::subjects(ip, email);
        let mut wait: Option<Duration> = None;
        for subject in &subjects {
            let Some(e) = entries.get(subject) else { continue };
            if let Some(until) = e.blocked_until.filter(|until| *until > now) {
                wait = wait.max(Some(until - now));
                continue;
            }
            let failures = if now.duration_since(e.last_failure) >= forget { 0 } else { e.failures };
            if e.in_flight > 0 && failures.saturating_add(e.in_flight) >= self.free(subject) {
                // Those in flight may all fail: wait for their outcome.
                wait = wait.max(Some(Duration::from_secs(self.config.base_secs.max(1))));
            }
        }
        if let Some(wait) = wait {
            return Err(retry_secs(wait));
        }
        self.make_room(&mut entries, now);
        for subject in subjects {
            let entry = entries.entry(subject).or_insert(Entry::fresh(now));
            entry.in_flight = entry.in_flight.saturating_add(1);
        }
        Ok(())
    }

    /// Ends a reserved attempt: a failure counts (and may block), a success clears the pair.
    fn finish(&self, ip: IpAddr, email: &str, outcome: Outcome, now: Instant) {
        self.shared_outcome(ip, email, outcome);
        {
            let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
            for subject in Self::subjects(ip, email) {
                if let Some(entry) = entries.get_mut(&subject) {
                    entry.in_flight = entry.in_flight.saturating_sub(1);
                }
            }
            if outcome == Outcome::Abandoned {
                return;
            }
            if outcome == Outcome::Succeeded {
                let pair = Subject::Pair(ip, email.to_owned());
                if let Some(entry) = entries.get_mut(&pair) {
                    if entry.in_flight == 0 {
                        entries.remove(&pair);
                    } else {
                        *entry = Entry { in_flight: entry.in_flight, ..Entry::fresh(now) };
                    }
                }
                return;
            }
        }
        self.failure_at(ip, email, now);
    }

    /// `Err(seconds)` while the pair or the client is blocked (sign-in goes through
    /// `begin`, which checks and reserves at once).
    #[cfg(test)]
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
            Some(wait) => Err(retry_secs(wait)),
            None => Ok(()),
        }
    }

    /// Keeps the table under `max_entries` (room for two more): forgotten entries go
    /// first, then unblocked ones; attempts in flight are kept while anything else can go.
    fn make_room(&self, entries: &mut HashMap<Subject, Entry>, now: Instant) {
        let c = &self.config;
        let forget = Duration::from_secs(c.forget_secs);
        if entries.len() + 2 > c.max_entries {
            entries
                .retain(|_, e| e.in_flight > 0 || e.blocked_until.is_some_and(|u| u > now) || now.duration_since(e.last_failure) < forget);
            if entries.len() + 2 > c.max_entries {
                // Still full of fresh entries: an attack on the table itself. Keep the blocks.
                entries.retain(|_, e| e.in_flight > 0 || e.blocked_until.is_some_and(|u| u > now));
                if entries.len() + 2 > c.max_entries {
                    entries.clear();
                }
            }
        }
    }

    fn failure_at(&self, ip: IpAddr, email: &str, now: Instant) {
        let c = &self.config;
        let forget = Duration::from_secs(c.forget_secs);
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        self.make_room(&mut entries, now);
        for subject in Self::subjects(ip, email) {
            let free = self.free(&subject);
            let entry = entries.entry(subject).or_insert(Entry::fresh(now));
            if now.duration_since(entry.last_failure) >= forget {
                *entry = Entry { in_flight: entry.in_flight, ..Entry::fresh(now) };
            }
            entry.failures = entry.failures.saturating_add(1);
            entry.last_failure = now;
            if let Some(secs) = limits::block_secs(entry.failures, free, c.base_secs, c.max_secs) {
                entry.blocked_until = Some(now + Duration::from_secs(secs));
            }
        }
    }

    /// A correct password clears its pair (not the client: a sprayer with one right
    /// guess stays throttled).
    #[cfg(test)]
    fn success(&self, ip: IpAddr, email: &str) {
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

/// The address a client is counted by: an IPv4 address (IPv4-mapped IPv6 included) as is,
/// an IPv6 address by its /64, which one subscriber usually holds whole.
pub fn client_net(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        },
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Bucket {
    Key(String),
    Client(IpAddr),
}

/// Token buckets for API-key logins that write (open or renew a session): one per key and
/// one per client address, each holding a minute's allowance and refilling evenly over the
/// minute. In memory, bounded by `max_entries` (a full bucket is the same as none).
#[derive(Debug)]
pub struct LoginLimiter {
    config: LoginLimitConfig,
    buckets: Mutex<HashMap<Bucket, (f64, Instant)>>,
    /// Where the buckets are shared with other replicas.
    store: Option<Store>,
}

impl LoginLimiter {
    pub fn new(config: LoginLimitConfig) -> LoginLimiter {
        LoginLimiter { config, buckets: Mutex::new(HashMap::new()), store: None }
    }

    /// Keeps the buckets in `store`'s shared counters, when it has them.
    pub fn sharing(self, store: Store) -> LoginLimiter {
        LoginLimiter { store: Some(store), ..self }
    }

    fn capacity(&self, bucket: &Bucket) -> f64 {
        f64::from(match bucket {
            Bucket::Key(_) => self.config.per_key_per_minute.max(1),
            Bucket::Client(_) => self.config.per_client_per_minute.max(1),
        })
    }

    /// Takes one login from `key_id`'s and `client`'s buckets, or neither and
    /// `Err(seconds)` until both hold one.
    pub fn take(&self, key_id: &str, client: IpAddr) -> Result<(), u64> {
        if let Some(shared) = shared(&self.store) {
            let buckets = [
                (shared_subject("login-key", key_id), self.capacity(&Bucket::Key(String::new()))),
                (shared_subject("login-client", &client_net(client).to_string()), self.capacity(&Bucket::Client(client))),
            ];
            match shared.take(&buckets) {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(wait)) => return Err(retry_secs(Duration::from_secs_f64(wait.clamp(0.0, 3600.0)))),
                Err(e) => tracing::warn!(error = %e, "cannot reach the shared login buckets; counting on this replica alone"),
            }
        }
        self.take_at(key_id, client, Instant::now())
    }

    fn take_at(&self, key_id: &str, client: IpAddr, now: Instant) -> Result<(), u64> {
        let subjects = [Bucket::Key(key_id.to_owned()), Bucket::Client(client_net(client))];
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let mut levels = [0.0; 2];
        let mut wait = 0.0f64;
        for (subject, level) in subjects.iter().zip(levels.iter_mut()) {
            let capacity = self.capacity(subject);
            *level = match buckets.get(subject) {
                Some((tokens, at)) => limits::refilled(*tokens, now.saturating_duration_since(*at).as_secs_f64(), capacity),
                None => capacity,
            };
            wait = wait.max(limits::wait_for_one(*level, capacity));
        }
        if wait > 0.0 {
            return Err(retry_secs(Duration::from_secs_f64(wait.min(3600.0))));
        }
        if buckets.len() + 2 > self.config.max_entries {
            // Full buckets carry no information; drop them first, then everything.
            buckets.retain(|b, (tokens, at)| {
                *tokens + now.saturating_duration_since(*at).as_secs_f64() * self.capacity(b) / 60.0 < self.capacity(b)
            });
            if buckets.len() + 2 > self.config.max_entries {
                buckets.clear();
            }
        }
        for (subject, level) in subjects.into_iter().zip(levels) {
            buckets.insert(subject, (level - 1.0, now));
        }
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.buckets.lock().unwrap_or_else(PoisonError::into_inner).len()
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

    /// Backoff of 1 s doubling to 8 s, forgotten after 15 idle minutes.
    fn throttle(pair_free: u32, client_free: u32, max_entries: usize) -> Throttle {
        Throttle::new(ThrottleConfig { pair_free, client_free, base_secs: 1, max_secs: 8, forget_secs: 900, max_entries })
    }

    #[test]
    fn pairs_block_after_free_failures_and_back_off() {
        let t = throttle(3, 100, 1000);
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
        let t = throttle(5, 4, 50);
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

    #[test]
    fn attempts_in_flight_count_as_failures_until_they_succeed() {
        let t = throttle(3, 100, 1000);
        let now = Instant::now();
        for _ in 0..3 {
            t.begin_at(ip(1), "a@x.io", now).unwrap();
        }
        assert_eq!(t.begin_at(ip(1), "a@x.io", now), Err(1), "three in flight fill the free count");
        assert_eq!(t.begin_at(ip(2), "a@x.io", now), Ok(()), "another client is not held up");
        // One succeeds: the pair is clear, the two others still in flight.
        t.finish(ip(1), "a@x.io", Outcome::Succeeded, now);
        t.begin_at(ip(1), "a@x.io", now).unwrap();
        assert!(t.begin_at(ip(1), "a@x.io", now).is_err());
        for _ in 0..3 {
            t.finish(ip(1), "a@x.io", Outcome::Failed, now);
        }
        assert_eq!(t.begin_at(ip(1), "a@x.io", now), Err(1), "three failures block");
        t.finish(ip(2), "a@x.io", Outcome::Abandoned, now);
        assert_eq!(t.begin_at(ip(2), "a@x.io", now), Ok(()), "an abandoned attempt counts as nothing");
        // Past the block, one attempt at a time.
        let later = now + Duration::from_secs(2);
        t.begin_at(ip(1), "a@x.io", later).unwrap();
        assert!(t.begin_at(ip(1), "a@x.io", later).is_err());
    }

    #[test]
    fn login_buckets_refill_over_the_minute_and_stay_bounded() {
        let l = LoginLimiter::new(LoginLimitConfig { per_client_per_minute: 3, per_key_per_minute: 5, max_entries: 1000 });
        let now = Instant::now();
        for _ in 0..3 {
            l.take_at("key_a", ip(1), now).unwrap();
        }
        assert_eq!(l.take_at("key_a", ip(1), now), Err(20), "one login per 20 s refills");
        l.take_at("key_a", ip(2), now).unwrap();
        l.take_at("key_a", ip(3), now).unwrap();
        assert_eq!(l.take_at("key_a", ip(4), now), Err(12), "the key's five are spent");
        assert_eq!(l.take_at("key_b", ip(4), now), Ok(()));
        assert_eq!(l.take_at("key_c", ip(1), now + Duration::from_secs(20)), Ok(()));
        // An IPv6 client is counted by its /64.
        let v6 = |last: u16| IpAddr::from([0x2001, 0xdb8, 0, 1, 0, 0, 0, last]);
        for i in 0..3 {
            l.take_at(&format!("key_v{i}"), v6(i), now).unwrap();
        }
        assert!(l.take_at("key_v9", v6(9), now).is_err());
        assert!(l.take_at("key_v9", IpAddr::from([0x2001, 0xdb8, 0, 2, 0, 0, 0, 1]), now).is_ok());

        let small = LoginLimiter::new(LoginLimitConfig { per_client_per_minute: 3, per_key_per_minute: 5, max_entries: 10 });
        for i in 0..100u32 {
            small.take_at(&format!("key_{i}"), IpAddr::from(i.to_be_bytes()), now).unwrap();
            assert!(small.len() <= 10);
        }
    }
}
