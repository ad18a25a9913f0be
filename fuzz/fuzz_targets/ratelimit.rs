//! Rate-limit state from untrusted places: counter slots as read from Envoy's shared data
//! (`Slot::decode`), admin's answers to the count exchange (`fleet::parse_answer`,
//! `fleet::merge`) and limits as written in the plugin JSON (`Limit::parse`). Nothing may
//! panic, and merging the fleet's counts never changes this Envoy's own.
#![no_main]

use keygate_core::ratelimit::fleet::{self, FleetView};
use keygate_core::ratelimit::{self, Limit, LimitPolicy, Slot, Window, SLOT_BYTES};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (head, rest) = data.split_at(data.len().min(SLOT_BYTES + 16));
    let word = |at: usize| head.get(at..at + 8).and_then(|b| b.try_into().ok()).map_or(0, u64::from_le_bytes);
    let now_ms = word(SLOT_BYTES);
    let slot = Slot::decode(head.get(..SLOT_BYTES).unwrap_or(head));
    let limit = Limit { count: (word(SLOT_BYTES + 8) as u32).max(1), window: slot.window().unwrap_or(Window::Second) };
    let policy = LimitPolicy::default();
    let view = FleetView::decode(head.get(..24).unwrap_or(&[]));
    let share = view.share(&policy, limit, now_ms);
    let moved = slot.advanced(now_ms);
    let _ = ratelimit::fits(&moved, limit, share, now_ms);
    let _ = ratelimit::standing("key-1s".into(), &moved, limit, share, now_ms);
    let _ = moved.frees_in(word(0), false, now_ms);
    let _ = ratelimit::choose(slot.fingerprint | 1, limit.window, &[slot, moved], now_ms);
    if let Some(answer) = fleet::parse_answer(rest, 1) {
        for others in &answer.others {
            if let Some(merged) = fleet::merge(moved, others, now_ms) {
                assert_eq!(merged.local, moved.local, "merging changed this Envoy's own counts");
                assert_eq!(merged.head, moved.head);
            }
        }
    }
    if let Ok(text) = std::str::from_utf8(rest) {
        let _ = Limit::parse(text);
        let _ = fleet::parse_counter(text);
    }
});
