//! The leader lease in Envoy's shared data, and the fence on the leader's writes.
//!
//! One VM per Envoy holds the lease (holder, expiry, term), taken and renewed with
//! compare-and-swap. The term grows by one at every takeover, so two leaders never share
//! one. A leader writes only under its own term: right before it applies a feed answer it
//! renews the lease (a CAS that fails if anyone else took it), and then writes only until
//! [`WRITE_MARGIN_MS`] before that renewed lease ends. No other VM can take the lease
//! before it ends (all VMs of an Envoy read one clock), so every write of a leader lands
//! inside its term; a VM that lost the lease drops the answers still in flight.

/// How long a lease lasts without renewal, and how long before its end it is renewed.
pub const LEASE_MS: u64 = 3_000;
pub const RENEW_BEFORE_MS: u64 = 2_000;
/// The leader stops writing this long before its lease ends: room for the last host call.
pub const WRITE_MARGIN_MS: u64 = 1_000;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Lease {
    pub holder: u64,
    pub until_ms: u64,
    /// Grows by one at every takeover.
    pub term: u64,
}

/// What a VM does with the lease on a tick (or right before applying an answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseStep {
    /// Ours, and not yet due for renewal.
    Hold(Lease),
    /// Compare-and-swap this in: a renewal of our term, or a takeover with the next term.
    Write(Lease),
    /// Another VM holds it.
    Follow,
}

impl Lease {
    pub fn encode(&self) -> [u8; 24] {
        let mut out = [0u8; 24];
        out[..16].copy_from_slice(&crate::pair::pack(self.holder, self.until_ms));
        out[16..].copy_from_slice(&self.term.to_le_bytes());
        out
    }

    /// 24 bytes; the 16-byte lease of an older filter reads as term 0.
    pub fn decode(bytes: &[u8]) -> Option<Lease> {
        let (pair, term) = match bytes.len() {
            16 => (bytes, 0),
            24 => {
                let (pair, term) = bytes.split_at(16);
                (pair, u64::from_le_bytes(term.try_into().ok()?))
            }
            _ => return None,
        };
        let (holder, until_ms) = crate::pair::unpack(pair)?;
        Some(Lease { holder, until_ms, term })
    }

    /// Whether this is `mine` (same holder and term) and still running at `now_ms`.
    pub fn is(&self, mine: &Lease, now_ms: u64) -> bool {
        self.holder == mine.holder && self.term == mine.term && self.until_ms > now_ms
    }

    /// The next step for VM `me`; `renew` asks for a renewal even when not yet due (the
    /// leader does so right before it writes).
    pub fn next(current: Option<Lease>, me: u64, now_ms: u64, renew: bool) -> LeaseStep {
        let current = current.unwrap_or_default();
        let running = current.until_ms > now_ms;
        let mine = current.holder == me && running;
        if mine && !renew && current.until_ms - now_ms > RENEW_BEFORE_MS {
            return LeaseStep::Hold(current);
        }
        if !mine && running {
            return LeaseStep::Follow;
        }
        let term = if mine { current.term } else { current.term.wrapping_add(1) };
        LeaseStep::Write(Lease { holder: me, until_ms: now_ms.saturating_add(LEASE_MS), term })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takeovers_bump_the_term_and_renewals_keep_it() {
        let LeaseStep::Write(a) = Lease::next(None, 1, 1000, false) else { panic!() };
        assert_eq!((a.holder, a.term), (1, 1));
        assert_eq!(Lease::decode(&a.encode()), Some(a));
        assert_eq!(Lease::next(Some(a), 1, 1500, false), LeaseStep::Hold(a));
        assert!(matches!(Lease::next(Some(a), 1, 1500, true), LeaseStep::Write(l) if l.term == 1 && l.until_ms == 4500));
        assert_eq!(Lease::next(Some(a), 2, 1500, false), LeaseStep::Follow);
        let LeaseStep::Write(b) = Lease::next(Some(a), 2, 4000, false) else { panic!() };
        assert_eq!((b.holder, b.term), (2, 2));
        assert!(!a.is(&b, 4000) && b.is(&b, 4000));
        // A lapsed holder coming back takes a new term too.
        assert!(matches!(Lease::next(Some(b), 2, 9000, false), LeaseStep::Write(l) if l.term == 3));
        assert_eq!(Lease::decode(&crate::pair::pack(5, 6)), Some(Lease { holder: 5, until_ms: 6, term: 0 }));
        assert_eq!(Lease::decode(&[0; 20]), None);
    }
}
