//! Credits: a number of uses a key has left, optionally refilled every UTC day or month,
//! spent by each request on a rule by the rule's `cost` (default 1).
//!
//! Admin owns the balance: [`CreditsEntry`] travels in the key's record through the feed.
//! Each setting of a balance (an absolute `PUT`) starts a new **epoch**, and a refill
//! starts a new **period**; spending is counted per (epoch, period), so what was spent
//! against an old balance never counts against a newly set one. An `add` raises the
//! balance of the current epoch and period (spending goes on counting).
//!
//! Each Envoy counts what it spent of a key in one shared-data entry ([`CreditCount`]:
//! its own spending, exact, and the other proxies' as admin last told it); every
//! `sync_interval_ms` a worker VM reports its Envoy's absolute spending to admin
//! (`POST /v1/credit-spend`), which keeps the largest count heard per proxy in a durable
//! write and answers with the sum of every other proxy's. Absolute counts make retries,
//! reorders and an admin restart harmless, and since a restarted Envoy is a new proxy,
//! what an Envoy reported before it went away stays counted.

use serde::{Deserialize, Serialize};

use crate::UnixTime;

pub const PATH: &str = "/v1/credit-spend";
/// Keys per report (admin refuses more).
pub const MAX_REPORT_KEYS: usize = 5000;
/// Most bytes of an answer the filter reads.
pub const MAX_ANSWER_BYTES: usize = 1 << 20;
/// Largest balance, refill amount or route cost admin and the config take.
pub const MAX_CREDITS: u64 = 1_000_000_000_000;
/// Largest route cost.
pub const MAX_COST: u64 = 1_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Interval {
    Day,
    Month,
}

impl Interval {
    pub fn as_str(self) -> &'static str {
        match self {
            Interval::Day => "day",
            Interval::Month => "month",
        }
    }
}

/// At the start of every UTC day or month the balance becomes `amount` (not `+ amount`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Refill {
    pub interval: Interval,
    pub amount: u64,
}

/// A key's credits as admin holds them and the feed carries them (inside the key record's
/// extension object, field `credits`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreditsEntry {
    /// The allowance of `period` in `epoch`: what was set (or refilled), plus what was added.
    pub balance: u64,
    /// Changes each time the balance is set (never reused for a key).
    pub epoch: u64,
    /// The refill period `balance` belongs to (0 without a refill).
    #[serde(default)]
    pub period: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refill: Option<Refill>,
}

/// Days since 1970-01-01 → (year, month 1..=12, day), proleptic Gregorian (Hinnant's algorithm).
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// (year, month 1..=12, day 1) → days since 1970-01-01.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The refill period `now` falls in: days since 1970 (UTC), or months since January 1970.
pub fn period_of(interval: Interval, now: UnixTime) -> u64 {
    let days = now / 86_400;
    match interval {
        Interval::Day => days,
        Interval::Month => {
            let (y, m, _) = civil(i64::try_from(days).unwrap_or(i64::MAX / 2));
            u64::try_from((y - 1970) * 12 + i64::from(m) - 1).unwrap_or(0)
        }
    }
}

/// When period `period` starts (UTC).
pub fn period_start(interval: Interval, period: u64) -> UnixTime {
    match interval {
        Interval::Day => period.saturating_mul(86_400),
        Interval::Month => {
            let period = i64::try_from(period).unwrap_or(i64::MAX / 24).min(12 * 100_000);
            let days = days_from_civil(1970 + period / 12, (period % 12) as u32 + 1, 1);
            u64::try_from(days).unwrap_or(0).saturating_mul(86_400)
        }
    }
}

impl CreditsEntry {
    /// The period and allowance in force at `now`: past the entry's period, a refill's
    /// amount in the current one.
    pub fn current(&self, now: UnixTime) -> (u64, u64) {
        match self.refill {
            Some(refill) => {
                let period = period_of(refill.interval, now);
                if period > self.period {
                    (period, refill.amount)
                } else {
                    (self.period, self.balance)
                }
            }
            None => (self.period, self.balance),
        }
    }

    /// The entry rolled to the period in force at `now` (admin does this before an `add`).
    pub fn rolled(self, now: UnixTime) -> CreditsEntry {
        let (period, balance) = self.current(now);
        CreditsEntry { period, balance, ..self }
    }

    /// When the next refill is due after `now`, if the entry refills.
    pub fn next_refill(&self, now: UnixTime) -> Option<UnixTime> {
        let refill = self.refill?;
        Some(period_start(refill.interval, period_of(refill.interval, now).saturating_add(1)))
    }

    /// What a request of `cost` on key `key_id` is checked against at `now`.
    pub fn check(&self, key_id: &str, cost: u64, now: UnixTime) -> CreditCheck {
        let (period, allowance) = self.current(now);
        CreditCheck {
            key_id: key_id.to_owned(),
            epoch: self.epoch,
            period,
            allowance,
            cost,
            retry_after: self.next_refill(now).map(|at| at.saturating_sub(now).max(1)),
        }
    }
}

/// One request's spending: filled in by `decide`, charged by the filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreditCheck {
    pub key_id: String,
    pub epoch: u64,
    pub period: u64,
    pub allowance: u64,
    pub cost: u64,
    /// Seconds until the next refill (the 429's `Retry-After`); `None` without a refill.
    pub retry_after: Option<u64>,
}

/// A spend that does not fit: the key has too few credits left (the decision turns it into
/// 429 `quota_exhausted`, [`crate::decide::quota_exhausted`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exhausted;

/// The shared-data name of a key's spending count, under the plugin's namespace `ns`.
pub fn count_key(ns: &str, key_id: &str) -> String {
    format!("{ns}cr.{key_id}")
}

/// One Envoy's spending of one key, as kept in its shared data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CreditCount {
    pub epoch: u64,
    pub period: u64,
    /// What this Envoy spent (exact).
    pub own: u64,
    /// What every other proxy spent, as admin last answered.
    pub others: u64,
    /// `own` as last acknowledged by admin (what the fleet knows of this Envoy).
    pub own_synced: u64,
}

pub const COUNT_BYTES: usize = 40;

impl CreditCount {
    pub fn encode(&self) -> [u8; COUNT_BYTES] {
        let mut out = [0u8; COUNT_BYTES];
        for (i, n) in [self.epoch, self.period, self.own, self.others, self.own_synced].iter().enumerate() {
            out[8 * i..8 * i + 8].copy_from_slice(&n.to_le_bytes());
        }
        out
    }

    /// Untrusted bytes: anything but a whole entry reads as nothing spent.
    pub fn decode(bytes: &[u8]) -> CreditCount {
        let Ok(bytes) = <&[u8; COUNT_BYTES]>::try_from(bytes) else { return CreditCount::default() };
        let long = |i: usize| {
            let mut word = [0u8; 8];
            word.copy_from_slice(&bytes[8 * i..8 * i + 8]);
            u64::from_le_bytes(word)
        };
        CreditCount { epoch: long(0), period: long(1), own: long(2), others: long(3), own_synced: long(4) }
    }

    /// This count as it applies to (epoch, period): a count of another epoch or an older
    /// period is spending against another balance, so it starts again from zero.
    pub fn at(self, epoch: u64, period: u64) -> CreditCount {
        if self.epoch == epoch && self.period == period {
            self
        } else {
            CreditCount { epoch, period, ..CreditCount::default() }
        }
    }

    pub fn spent(&self) -> u64 {
        self.own.saturating_add(self.others)
    }

    /// Spends `check.cost` if it fits: in the allowance, less what this Envoy and the
    /// others spent; and, while the fleet is cut off (`cut_off: Some(proxies)`), in this
    /// Envoy's share of what was left when admin last answered (⌈left / proxies⌉).
    pub fn spend(self, check: &CreditCheck, cut_off: Option<u64>) -> Result<CreditCount, Exhausted> {
        let count = self.at(check.epoch, check.period);
        let after = count.own.saturating_add(check.cost);
        if after.saturating_add(count.others) > check.allowance {
            return Err(Exhausted);
        }
        if let Some(proxies) = cut_off {
            let left = check.allowance.saturating_sub(count.own_synced.saturating_add(count.others));
            let share = left.div_ceil(proxies.max(1));
            if after.saturating_sub(count.own_synced) > share {
                return Err(Exhausted);
            }
        }
        Ok(CreditCount { own: after, ..count })
    }

    /// Gives back a spend that was not used (the request was refused by a later check).
    pub fn refund(self, check: &CreditCheck) -> CreditCount {
        if self.epoch == check.epoch && self.period == check.period {
            CreditCount { own: self.own.saturating_sub(check.cost), ..self }
        } else {
            self
        }
    }

    /// Takes admin's answer to a report of `reported` (this Envoy's spending then) into
    /// the count: the others' spending, and what the fleet now knows of this Envoy's.
    pub fn merged(self, reported: &Spent, others: u64) -> CreditCount {
        if self.epoch != reported.epoch || self.period != reported.period {
            return self;
        }
        CreditCount { others, own_synced: self.own_synced.max(reported.spent.min(self.own)), ..self }
    }

    /// What left is at this Envoy's view.
    pub fn left(&self, allowance: u64) -> u64 {
        allowance.saturating_sub(self.spent())
    }
}

/// One key's absolute spending by the reporting proxy in (epoch, period).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Spent {
    pub key_id: String,
    pub epoch: u64,
    pub period: u64,
    pub spent: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpendReport {
    pub proxy: String,
    pub keys: Vec<Spent>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpendAnswer {
    /// `others[i]`: what every other proxy spent of `keys[i]` in its epoch and period.
    pub others: Vec<u64>,
}

/// Parses an answer; anything malformed (or answering another number of keys) is `None`.
pub fn parse_answer(body: &[u8], asked: usize) -> Option<SpendAnswer> {
    let answer: SpendAnswer = serde_json::from_slice(body).ok()?;
    (answer.others.len() == asked).then_some(answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 86_400;
    // 2026-03-31T23:59:59Z and the next second.
    const MARCH_END: u64 = 1_775_001_599;

    fn entry(balance: u64, refill: Option<Refill>, period: u64) -> CreditsEntry {
        CreditsEntry { balance, epoch: 7, period, refill }
    }

    #[test]
    fn periods_follow_utc_days_and_months() {
        assert_eq!(period_of(Interval::Day, 0), 0);
        assert_eq!(period_of(Interval::Day, DAY - 1), 0);
        assert_eq!(period_of(Interval::Day, DAY), 1);
        assert_eq!(period_of(Interval::Month, 0), 0);
        assert_eq!(period_of(Interval::Month, 31 * DAY - 1), 0, "January 1970");
        assert_eq!(period_of(Interval::Month, 31 * DAY), 1, "February 1970");
        let march = period_of(Interval::Month, MARCH_END);
        assert_eq!(march, (2026 - 1970) * 12 + 2);
        assert_eq!(period_of(Interval::Month, MARCH_END + 1), march + 1);
        assert_eq!(period_start(Interval::Month, march + 1), MARCH_END + 1);
        assert_eq!(period_start(Interval::Day, 3), 3 * DAY);
        // Leap day, and every month start round-trips.
        assert_eq!(period_of(Interval::Month, 1_709_164_800), (2024 - 1970) * 12 + 1, "2024-02-29");
        for p in 1..1200 {
            let start = period_start(Interval::Month, p);
            assert_eq!(period_of(Interval::Month, start), p);
            assert_eq!(period_of(Interval::Month, start - 1), p - 1);
        }
        let _ = period_of(Interval::Month, u64::MAX);
        let _ = period_start(Interval::Month, u64::MAX);
    }

    #[test]
    fn a_refill_gives_its_amount_from_the_next_period_on() {
        let refill = Some(Refill { interval: Interval::Month, amount: 100 });
        let now = MARCH_END;
        let e = entry(3, refill, period_of(Interval::Month, now));
        assert_eq!(e.current(now), (e.period, 3));
        assert_eq!(e.current(now + 1), (e.period + 1, 100), "April: refilled to the amount");
        assert_eq!(e.next_refill(now), Some(now + 1));
        let check = e.check("key_a", 1, now);
        assert_eq!((check.allowance, check.retry_after), (3, Some(1)));
        // A count of March does not carry into April.
        let march = CreditCount { epoch: 7, period: e.period, own: 3, others: 0, own_synced: 3 };
        assert!(march.spend(&check, None).is_err());
        assert!(march.spend(&e.check("key_a", 1, now + 1), None).is_ok());
        assert_eq!(e.rolled(now + 1).balance, 100);
        // Without a refill the balance never changes with time.
        let plain = entry(5, None, 0);
        assert_eq!(plain.current(now), (0, 5));
        assert_eq!(plain.check("key_a", 1, now).retry_after, None);
    }

    #[test]
    fn spending_stops_at_the_allowance_and_a_cost_counts_whole() {
        let e = entry(10, None, 0);
        let cost5 = e.check("key_a", 5, 1000);
        let cost1 = e.check("key_a", 1, 1000);
        let mut count = CreditCount::default();
        count = count.spend(&cost5, None).unwrap();
        assert_eq!(count.own, 5);
        count = count.spend(&cost5, None).unwrap();
        assert_eq!(count.spend(&cost1, None), Err(Exhausted));
        // The others' spending counts too.
        let shared = CreditCount { epoch: 7, period: 0, own: 2, others: 6, own_synced: 2 };
        assert!(shared.spend(&cost5, None).is_err());
        assert_eq!(shared.spend(&cost1, None).unwrap().own, 3);
        // A refund gives the cost back.
        assert_eq!(shared.spend(&cost1, None).unwrap().refund(&cost1), shared);
        // A zero balance refuses at once.
        assert!(CreditCount::default().spend(&entry(0, None, 0).check("key_a", 1, 0), None).is_err());
    }

    #[test]
    fn a_new_epoch_forgets_what_was_spent_against_the_old_balance() {
        let old = CreditCount { epoch: 7, period: 0, own: 10, others: 30, own_synced: 10 };
        let reset = CreditsEntry { balance: 5, epoch: 8, period: 0, refill: None };
        let check = reset.check("key_a", 1, 0);
        let after = old.spend(&check, None).unwrap();
        assert_eq!(after, CreditCount { epoch: 8, period: 0, own: 1, others: 0, own_synced: 0 });
        // An answer about the old epoch does not touch the new count.
        let stale = Spent { key_id: "key_a".into(), epoch: 7, period: 0, spent: 10 };
        assert_eq!(after.merged(&stale, 30), after);
        let fresh = Spent { key_id: "key_a".into(), epoch: 8, period: 0, spent: 1 };
        assert_eq!(after.merged(&fresh, 2).others, 2);
        assert_eq!(after.merged(&fresh, 2).own_synced, 1);
    }

    #[test]
    fn cut_off_an_envoy_spends_only_its_share_of_what_was_left() {
        let e = entry(100, None, 0);
        let check = e.check("key_a", 1, 0);
        // Admin last heard: this Envoy 10, the others 30; 60 left for 3 proxies → 20 each.
        let mut count = CreditCount { epoch: 7, period: 0, own: 10, others: 30, own_synced: 10 };
        let mut admitted = 0;
        while let Ok(next) = count.spend(&check, Some(3)) {
            count = next;
            admitted += 1;
        }
        assert_eq!(admitted, 20);
        // A 1-proxy fleet may spend all that is left.
        let alone = CreditCount { epoch: 7, period: 0, own: 10, others: 30, own_synced: 10 };
        assert_eq!(alone.spend(&e.check("key_a", 60, 0), Some(1)).unwrap().own, 70);
    }

    #[test]
    fn counts_round_trip_and_junk_reads_as_nothing_spent() {
        let c = CreditCount { epoch: 1, period: 2, own: 3, others: 4, own_synced: 5 };
        assert_eq!(CreditCount::decode(&c.encode()), c);
        assert_eq!(CreditCount::decode(b"short"), CreditCount::default());
        assert_eq!(CreditCount::decode(&[0xff; 41]), CreditCount::default());
        assert_eq!(count_key("keygate.abc.", "key_1"), "keygate.abc.cr.key_1");
    }

    #[test]
    fn answers_parse_only_when_they_answer_every_key() {
        assert_eq!(parse_answer(br#"{"others": [3, 0]}"#, 2).map(|a| a.others), Some(vec![3, 0]));
        assert_eq!(parse_answer(br#"{"others": [3]}"#, 2), None);
        assert_eq!(parse_answer(br#"{"others": [-1]}"#, 1), None);
        assert_eq!(parse_answer(b"junk", 0), None);
    }

    #[test]
    fn entries_read_as_the_feed_writes_them() {
        let e: CreditsEntry =
            serde_json::from_str(r#"{"balance": 5, "epoch": 3, "period": 20000, "refill": {"interval": "day", "amount": 9}}"#).unwrap();
        assert_eq!(e.refill, Some(Refill { interval: Interval::Day, amount: 9 }));
        let plain: CreditsEntry = serde_json::from_str(r#"{"balance": 5, "epoch": 3}"#).unwrap();
        assert_eq!((plain.period, plain.refill), (0, None));
        assert!(serde_json::from_str::<CreditsEntry>(r#"{"balance": 5, "epoch": 3, "refill": {"interval": "week", "amount": 1}}"#).is_err());
    }
}
