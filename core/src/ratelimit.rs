//! Fixed-window rate limiting ("1000 requests per hour", as the seed APIs state it): the
//! count for a bucket resets at the top of each window. The state is 16 bytes so the
//! filter can keep it in Envoy's shared data and update it with compare-and-swap, which
//! makes one limit hold across all worker VMs.

use crate::UnixTime;

pub const WINDOW_SECS: u64 = 3600;

/// One bucket's window: when it started and how many requests it admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Window {
    pub start: UnixTime,
    pub count: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Admitted; store `next` (with CAS) before letting the request through.
    Admit { next: Window },
    /// Over the limit until the window ends.
    Reject { retry_after: u64 },
}

impl Window {
    pub fn encode(&self) -> [u8; 16] {
        crate::pair::pack(self.start, self.count)
    }

    /// Decodes stored state; anything malformed reads as an empty window.
    pub fn decode(bytes: &[u8]) -> Window {
        crate::pair::unpack(bytes).map_or_else(Window::default, |(start, count)| Window { start, count })
    }

    /// Decides one request against `per_hour` at `now`.
    pub fn admit(self, per_hour: u32, now: UnixTime) -> Admission {
        let start = now - now % WINDOW_SECS;
        let count = if self.start == start { self.count } else { 0 };
        if count >= u64::from(per_hour) {
            Admission::Reject { retry_after: (start + WINDOW_SECS).saturating_sub(now).max(1) }
        } else {
            Admission::Admit { next: Window { start, count: count + 1 } }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_up_to_the_limit_then_rejects_until_the_window_ends() {
        let now = 7 * WINDOW_SECS + 100;
        let mut w = Window::default();
        for _ in 0..3 {
            match w.admit(3, now) {
                Admission::Admit { next } => w = next,
                Admission::Reject { .. } => panic!("rejected early"),
            }
        }
        assert_eq!(w.admit(3, now + 5), Admission::Reject { retry_after: WINDOW_SECS - 105 });
        assert!(matches!(w.admit(3, 8 * WINDOW_SECS), Admission::Admit { next: Window { count: 1, .. } }));
    }

    #[test]
    fn state_round_trips_and_junk_reads_as_empty() {
        let w = Window { start: 3600, count: 42 };
        assert_eq!(Window::decode(&w.encode()), w);
        assert_eq!(Window::decode(b"short"), Window::default());
        assert_eq!(Window::decode(&[1u8; 17]), Window::default());
    }
}
