//! Credits: a key's balance (on the key record, so it reaches the filters in the feed) and
//! what each proxy spent of it (tree `credit_spend`, durable, never in the changelog).
//!
//! Setting a balance starts a new epoch (a number never used before for the key, kept in
//! the spend record even when credits are cleared), so spending reported against an older
//! balance is ignored. Each proxy reports its absolute spending per (epoch, period); the
//! store keeps the largest it has heard per proxy, so a retried, reordered or repeated
//! report changes nothing, and a restarted Envoy (a new proxy id) adds to what its earlier
//! self reported instead of replacing it.

use std::collections::BTreeMap;

use keygate_core::credits::{CreditsEntry, Refill, Spent, MAX_CREDITS};
use keygate_core::UnixTime;
use serde::{Deserialize, Serialize};

use super::{Change, Key, Store, StoreError, Ticket};
use crate::store::tx::abort;

/// Proxies remembered per key and period; a report from one more is counted under `"~"`
/// (the largest such report), never dropped.
pub const MAX_PROXIES: usize = 256;

/// What the proxies spent of one key's credits.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreditSpend {
    /// The key's latest epoch (also after its credits were cleared).
    pub epoch: u64,
    /// The refill period `proxies` count in.
    #[serde(default)]
    pub period: u64,
    /// Proxy id → its absolute spending in (epoch, period).
    #[serde(default)]
    pub proxies: BTreeMap<String, u64>,
    /// When a proxy's report last changed this record (repeats of what it holds write nothing).
    #[serde(default)]
    pub reconciled_at: Option<UnixTime>,
}

impl CreditSpend {
    /// Everything spent in (epoch, period).
    pub fn spent(&self, epoch: u64, period: u64) -> u64 {
        if self.epoch == epoch && self.period == period {
            self.proxies.values().fold(0u64, |a, b| a.saturating_add(*b))
        } else {
            0
        }
    }

    /// Takes one proxy's absolute report; answers what every other proxy spent. A report of
    /// an older epoch or period changes nothing (and hears 0).
    fn take(&mut self, proxy: &str, item: &Spent, now: UnixTime) -> (bool, u64) {
        if item.epoch != self.epoch || item.period < self.period {
            return (false, 0);
        }
        let mut changed = false;
        if item.period > self.period {
            self.period = item.period;
            self.proxies.clear();
            changed = true;
        }
        let name = if self.proxies.contains_key(proxy) || self.proxies.len() < MAX_PROXIES { proxy } else { "~" };
        let slot = self.proxies.entry(name.to_owned()).or_insert(0);
        changed |= item.spent > *slot;
        *slot = (*slot).max(item.spent);
        if changed {
            self.reconciled_at = Some(now);
        }
        let others = self.proxies.iter().filter(|(p, _)| p.as_str() != name).fold(0u64, |a, (_, n)| a.saturating_add(*n));
        (changed, others)
    }
}

/// A key's credits as admin knows them at `now`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreditsState {
    pub entry: CreditsEntry,
    /// The period in force now and its allowance (a refill applied).
    pub period: u64,
    pub allowance: u64,
    pub spent: u64,
    pub reconciled_at: Option<UnixTime>,
    pub next_refill: Option<UnixTime>,
}

impl CreditsState {
    pub fn remaining(&self) -> u64 {
        self.allowance.saturating_sub(self.spent)
    }
}

fn state_of(entry: CreditsEntry, spend: &CreditSpend, now: UnixTime) -> CreditsState {
    let (period, allowance) = entry.current(now);
    CreditsState {
        entry,
        period,
        allowance,
        spent: spend.spent(entry.epoch, period),
        reconciled_at: spend.reconciled_at,
        next_refill: entry.next_refill(now),
    }
}

/// A fresh key's credits: `balance` now, refilled by `refill`, under a new epoch.
pub fn fresh_entry(balance: u64, refill: Option<Refill>, now: UnixTime, after_epoch: u64) -> CreditsEntry {
    let epoch = after_epoch.saturating_add(1).max(now.saturating_mul(1000));
    let period = refill.map_or(0, |r| keygate_core::credits::period_of(r.interval, now));
    CreditsEntry { balance: balance.min(MAX_CREDITS), epoch, period, refill }
}

impl Store {
    /// Sets (`Some`) or clears (`None`: unlimited) key `key_id`'s credits. Setting starts a
    /// new epoch: what was spent before counts no more.
    pub fn set_credits(&self, key_id: &str, credits: Option<(u64, Option<Refill>)>) -> Result<(Key, Ticket), StoreError> {
        self.write(|tx| {
            let Some(mut key) = tx.keys.get::<Key>(key_id.as_bytes())? else {
                return abort(StoreError::UnknownKey);
            };
            let mut spend: CreditSpend = tx.credit_spend.get(key_id.as_bytes())?.unwrap_or_default();
            key.credits = match credits {
                Some((balance, refill)) => {
                    let last = spend.epoch.max(key.credits.map_or(0, |c| c.epoch));
                    let entry = fresh_entry(balance, refill, tx.now, last);
                    spend = CreditSpend { epoch: entry.epoch, period: entry.period, proxies: BTreeMap::new(), reconciled_at: None };
                    tx.credit_spend.put(key_id.as_bytes(), &spend)?;
                    Some(entry)
                }
                None => None,
            };
            tx.keys.put(key_id.as_bytes(), &key)?;
            for entry in key.entries(tx.now) {
                tx.append(Change::KeyUpsert { key: entry })?;
            }
            Ok(key)
        })
    }

    /// Adds `amount` to the balance of the period in force (after any refill); the epoch
    /// stays, so spending goes on counting. A key without credits is returned unchanged.
    pub fn add_credits(&self, key_id: &str, amount: u64) -> Result<(Key, Ticket), StoreError> {
        self.write(|tx| {
            let Some(mut key) = tx.keys.get::<Key>(key_id.as_bytes())? else {
                return abort(StoreError::UnknownKey);
            };
            let Some(credits) = key.credits else { return Ok(key) };
            let mut rolled = credits.rolled(tx.now);
            rolled.balance = rolled.balance.saturating_add(amount).min(MAX_CREDITS);
            key.credits = Some(rolled);
            tx.keys.put(key_id.as_bytes(), &key)?;
            for entry in key.entries(tx.now) {
                tx.append(Change::KeyUpsert { key: entry })?;
            }
            Ok(key)
        })
    }

    /// A key's credits as admin knows them now (`None`: unlimited), with the key.
    pub fn credits(&self, key_id: &str, now: UnixTime) -> Result<Option<(Key, Option<CreditsState>)>, StoreError> {
        let Some(key) = self.key(key_id)? else { return Ok(None) };
        let state = match key.credits {
            Some(entry) => {
                let spend: CreditSpend = self.trees().credit_spend.read(key_id.as_bytes())?.unwrap_or_default();
                Some(state_of(entry, &spend, now))
            }
            None => None,
        };
        Ok(Some((key, state)))
    }

    /// Takes a proxy's spending report in one durable write; answers, per item, what every
    /// other proxy spent of that key in the same epoch and period (0 for a key without
    /// credits, an unknown key, or a stale epoch or period).
    pub fn record_credit_spend(&self, proxy: &str, items: &[Spent]) -> Result<(Vec<u64>, Ticket), StoreError> {
        let ids: Vec<Vec<u8>> = items.iter().map(|i| i.key_id.as_bytes().to_vec()).collect();
        self.write(|tx| {
            let keys = tx.keys.get_many::<Key>(&ids)?;
            let mut spends: BTreeMap<&[u8], CreditSpend> = BTreeMap::new();
            for (id, spend) in ids.iter().zip(tx.credit_spend.get_many::<CreditSpend>(&ids)?) {
                spends.insert(id.as_slice(), spend.unwrap_or_default());
            }
            let mut changed: std::collections::BTreeSet<&[u8]> = std::collections::BTreeSet::new();
            let mut others = Vec::with_capacity(items.len());
            for ((item, id), key) in items.iter().zip(&ids).zip(&keys) {
                let entry = key.as_ref().and_then(|k| k.credits);
                let (Some(entry), Some(spend)) = (entry, spends.get_mut(id.as_slice())) else {
                    others.push(0);
                    continue;
                };
                if spend.epoch < entry.epoch {
                    // A key created with credits has no spend record until its first report.
                    *spend = CreditSpend { epoch: entry.epoch, period: entry.period, ..CreditSpend::default() };
                    changed.insert(id.as_slice());
                }
                // A period more than one ahead of admin's clock is not believed.
                let (now_period, _) = entry.current(tx.now);
                if item.period > now_period.saturating_add(1) {
                    others.push(0);
                    continue;
                }
                let (taken, heard) = spend.take(proxy, item, tx.now);
                if taken {
                    changed.insert(id.as_slice());
                }
                others.push(heard);
            }
            tx.credit_spend.put_many(changed.iter().filter_map(|id| Some((*id, spends.get(id)?))))?;
            Ok(others)
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::store::testing::{key, with_business};
    use keygate_core::credits::Interval;

    fn spent(key_id: &str, entry: &CreditsEntry, n: u64) -> Spent {
        Spent { key_id: key_id.into(), epoch: entry.epoch, period: entry.period, spent: n }
    }

    #[test]
    fn spending_is_summed_over_proxies_max_merged_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::testing::open(dir.path(), 100);
        crate::store::testing::add_business(&store, "biz_a");
        let _ = store.create_key(&key("key_1", "biz_a", 1)).unwrap();
        let (k, _) = store.set_credits("key_1", Some((100, None))).unwrap();
        let entry = k.credits.unwrap();
        let (others, _) = store.record_credit_spend("p1", &[spent("key_1", &entry, 10)]).unwrap();
        assert_eq!(others, vec![0]);
        let (others, _) = store.record_credit_spend("p2", &[spent("key_1", &entry, 7)]).unwrap();
        assert_eq!(others, vec![10]);
        // A repeated or older report changes nothing.
        let (others, _) = store.record_credit_spend("p1", &[spent("key_1", &entry, 4)]).unwrap();
        assert_eq!(others, vec![7]);
        let state = store.credits("key_1", crate::clock::now()).unwrap().unwrap().1.unwrap();
        assert_eq!((state.spent, state.remaining()), (17, 83));
        assert!(state.reconciled_at.is_some());
        // Unknown keys and keys without credits hear 0.
        let _ = store.create_key(&key("key_2", "biz_a", 2)).unwrap();
        let (others, _) = store.record_credit_spend("p1", &[spent("key_2", &entry, 4), spent("key_9", &entry, 1)]).unwrap();
        assert_eq!(others, vec![0, 0]);
        drop(store);
        let store = crate::store::testing::open(dir.path(), 100);
        let state = store.credits("key_1", crate::clock::now()).unwrap().unwrap().1.unwrap();
        assert_eq!(state.remaining(), 83, "acknowledged spending is durable");
    }

    #[test]
    fn a_new_balance_is_a_new_epoch_and_old_spending_no_longer_counts() {
        let (_dir, store) = with_business(100);
        let _ = store.create_key(&key("key_1", "biz_a", 1)).unwrap();
        let (k, _) = store.set_credits("key_1", Some((10, None))).unwrap();
        let old = k.credits.unwrap();
        let _ = store.record_credit_spend("p1", &[spent("key_1", &old, 9)]).unwrap();
        let (k, _) = store.set_credits("key_1", Some((5, None))).unwrap();
        let new = k.credits.unwrap();
        assert!(new.epoch > old.epoch);
        // A report still in flight against the old balance is ignored.
        let (others, _) = store.record_credit_spend("p2", &[spent("key_1", &old, 3)]).unwrap();
        assert_eq!(others, vec![0]);
        let state = store.credits("key_1", crate::clock::now()).unwrap().unwrap().1.unwrap();
        assert_eq!((state.allowance, state.spent), (5, 0));
        // Adding keeps the epoch and what was spent in it.
        let _ = store.record_credit_spend("p1", &[spent("key_1", &new, 4)]).unwrap();
        let (k, _) = store.add_credits("key_1", 10).unwrap();
        assert_eq!(k.credits.unwrap().epoch, new.epoch);
        let state = store.credits("key_1", crate::clock::now()).unwrap().unwrap().1.unwrap();
        assert_eq!((state.allowance, state.spent, state.remaining()), (15, 4, 11));
        // Cleared, then set again: still a newer epoch (kept in the spend record).
        let (k, _) = store.set_credits("key_1", None).unwrap();
        assert!(k.credits.is_none());
        assert!(store.credits("key_1", 0).unwrap().unwrap().1.is_none());
        let (k, _) = store.set_credits("key_1", Some((1, None))).unwrap();
        assert!(k.credits.unwrap().epoch > new.epoch);
        // The feed carries the credits.
        let full = store.full_snapshot(crate::clock::now()).unwrap();
        assert_eq!(full.keys[0].credits, k.credits);
    }

    #[test]
    fn a_refill_period_starts_spending_from_zero() {
        let (_dir, store) = with_business(100);
        let _ = store.create_key(&key("key_1", "biz_a", 1)).unwrap();
        let refill = Refill { interval: Interval::Day, amount: 50 };
        let (k, _) = store.set_credits("key_1", Some((3, Some(refill)))).unwrap();
        let entry = k.credits.unwrap();
        let _ = store.record_credit_spend("p1", &[spent("key_1", &entry, 3)]).unwrap();
        let today = crate::clock::now();
        let state = store.credits("key_1", today).unwrap().unwrap().1.unwrap();
        assert_eq!(state.remaining(), 0);
        assert_eq!(state.next_refill, Some((today / 86_400 + 1) * 86_400));
        let tomorrow = state.next_refill.unwrap();
        let state = store.credits("key_1", tomorrow).unwrap().unwrap().1.unwrap();
        assert_eq!((state.allowance, state.spent), (50, 0), "refilled to the amount");
        // A report of a period far ahead of admin's clock is not believed.
        let ahead = Spent { period: entry.period + 5, ..spent("key_1", &entry, 1) };
        assert_eq!(store.record_credit_spend("p2", &[ahead]).unwrap().0, vec![0]);
    }

    #[test]
    fn one_proxy_too_many_is_counted_not_dropped() {
        let mut spend = CreditSpend { epoch: 1, ..CreditSpend::default() };
        let item = |n| Spent { key_id: "k".into(), epoch: 1, period: 0, spent: n };
        for p in 0..MAX_PROXIES {
            let _ = spend.take(&format!("p{p}"), &item(1), 5);
        }
        let _ = spend.take("late", &item(9), 5);
        assert_eq!(spend.proxies.len(), MAX_PROXIES + 1);
        assert_eq!(spend.spent(1, 0), MAX_PROXIES as u64 + 9);
    }
}
