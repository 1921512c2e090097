//! The scheduled-events `POST` body (`{"StartRequests":[{"EventId":…}]}`) on arbitrary bytes,
//! against a schedule with events in every state: no panic; a refused body changes nothing;
//! an accepted one only starts events (the incarnation never goes back), and the document
//! still serializes.
#![no_main]

use imds_agent::metadata::events::{parse_start_requests, EventConfig, EventType, Schedule};
use libfuzzer_sys::fuzz_target;

const S: u64 = 1_000_000;

fn schedule() -> Schedule {
    let ev = |kind, appear_after_s, notice_s, duration_s| EventConfig {
        kind,
        appear_after_s,
        notice_s,
        duration_s,
        description: heapless::String::new(),
        user_source: false,
    };
    Schedule::new(
        &[
            ev(EventType::Reboot, 0, 900, 5),   // Scheduled at 10 s
            ev(EventType::Freeze, 0, 5, -1),    // Started at 10 s
            ev(EventType::Preempt, 0, 1, 2),    // gone at 10 s
            ev(EventType::Terminate, 60, 1, 1), // not yet there at 10 s
        ],
        &["fuzz"],
    )
}

fuzz_target!(|data: &[u8]| {
    let mut s = schedule();
    let now = 10 * S;
    let before = s.incarnation(now);
    let states: Vec<_> = (0..4).map(|i| s.status(i, now)).collect();
    // Ids from the schedule itself, so that bodies can name real events.
    let mut body = data.to_vec();
    if let Some(at) = body.windows(4).position(|w| w == b"$ID$") {
        let id = s.id(usize::from(data[0] % 4)).unwrap().as_bytes().to_vec();
        body.splice(at..at + 4, id);
    }
    let parsed = parse_start_requests(&body).map(|ids| ids.len());
    let result = s.start(&body, now);
    if parsed.is_err() {
        assert!(result.is_err());
    }
    if result.is_err() {
        assert_eq!(s.incarnation(now), before);
        let after: Vec<_> = (0..4).map(|i| s.status(i, now)).collect();
        assert_eq!(after, states);
    } else {
        assert!(s.incarnation(now) >= before);
    }
    // Later, the incarnation only grows.
    let mut last = s.incarnation(now);
    for t in [11, 20, 61, 100, 10_000] {
        let n = s.incarnation(t * S);
        assert!(n >= last);
        last = n;
    }
    let mut out = [0u8; 4096];
    let doc = s.document(now, 1_775_946_418, &["vm"]);
    serde_json_core::to_slice(&doc, &mut out).expect("the document fits");
});
