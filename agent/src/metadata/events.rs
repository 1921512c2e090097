//! `/metadata/scheduledevents`: configured maintenance events, played out in time
//! (INSTANCE.md §2.2).
//!
//! Each configured event appears `appear_after_s` after the agent started (monotonic time 0:
//! process start for the daemon, boot for the image) as `Scheduled`, with `NotBefore` =
//! the wall-clock time then + `notice_s`; it turns `Started` at `NotBefore`, or earlier when a
//! `POST {"StartRequests":[{"EventId":…}]}` approves it; it disappears `DurationInSeconds`
//! after it started (never, for `-1`, Azure's "unknown").
//!
//! The state is a pure function of the monotonic clock and the approval times: the only
//! mutable state per event is when it was approved (and the `NotBefore` wall time, fixed
//! when first shown). `DocumentIncarnation` is 1 + the number of those transitions (appear,
//! start, gone) passed so far, so it increments exactly when `Events` changes, whoever asks.
//!
//! EventIds are stable GUIDs derived (SHA-256) from the tenant, the vmId and the event's
//! place and settings in the config: the same config gives the same ids after a restart.
//!
//! A `POST` must name events that are in the document now (`Scheduled` or `Started`): any
//! other EventId makes the whole request 400 and approves nothing (Azure: "200 … if it's
//! passed a valid event ID"). Approving a started event again is a no-op 200.

#![allow(clippy::result_large_err)]

use super::civil::{two, Civil};
use crate::limits::{EVENT_DESCRIPTION_MAX, MAX_SCHEDULED_EVENTS};
use core::fmt;
use imds_hal::text::Text;
use serde::Serialize;
use sha2::Digest;

/// The api-versions of `/metadata/scheduledevents` (its own list, newest first).
pub const API_VERSIONS: &[&str] = &[
    "2020-07-01",
    "2019-08-01",
    "2019-04-01",
    "2019-01-01",
    "2017-11-01",
    "2017-08-01",
    "2017-03-01",
];

/// What is going to happen to the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// Paused for a few seconds.
    Freeze,
    /// Rebooted.
    Reboot,
    /// Moved to another host.
    Redeploy,
    /// A spot VM is evicted.
    Preempt,
    /// Deleted.
    Terminate,
}

impl EventType {
    /// From its wire name.
    pub fn parse(s: &str) -> Option<EventType> {
        Some(match s {
            "Freeze" => EventType::Freeze,
            "Reboot" => EventType::Reboot,
            "Redeploy" => EventType::Redeploy,
            "Preempt" => EventType::Preempt,
            "Terminate" => EventType::Terminate,
            _ => return None,
        })
    }

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Freeze => "Freeze",
            EventType::Reboot => "Reboot",
            EventType::Redeploy => "Redeploy",
            EventType::Preempt => "Preempt",
            EventType::Terminate => "Terminate",
        }
    }

    /// Azure's minimum notice (INSTANCE.md §2.2): the default `notice_s`.
    pub fn default_notice_s(self) -> u32 {
        match self {
            EventType::Freeze | EventType::Reboot => 15 * 60,
            EventType::Redeploy => 10 * 60,
            EventType::Preempt => 30,
            EventType::Terminate => 5 * 60,
        }
    }
}

/// One configured event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventConfig {
    /// `EventType`.
    pub kind: EventType,
    /// Seconds after start at which it appears.
    pub appear_after_s: u32,
    /// Seconds between appearing and `NotBefore`.
    pub notice_s: u32,
    /// `DurationInSeconds` (`-1`: unknown; the event then stays once started).
    pub duration_s: i32,
    /// `Description`.
    pub description: heapless::String<EVENT_DESCRIPTION_MAX>,
    /// `EventSource`: `Platform` or `User`.
    pub user_source: bool,
}

/// A GUID in its 8-4-4-4-12 text form.
pub type Guid = heapless::String<36>;

/// A version 4 (random) GUID from 16 (hash) bytes.
fn guid(mut b: [u8; 16]) -> Guid {
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let mut g = Guid::new();
    for (i, x) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            g.put("-");
        }
        g.hex2(*x);
    }
    g
}

/// RFC 1123 time as Azure writes `NotBefore`: `Mon, 11 Apr 2026 22:26:58 GMT`.
pub fn http_date(unix_s: u64) -> heapless::String<29> {
    const DAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let c = Civil::of(unix_s);
    let mut s = heapless::String::new();
    s.put(DAYS[usize::from(c.weekday % 7)]).put(", ");
    two(&mut s, c.day);
    s.put(" ")
        .put(MONTHS[usize::from((c.month + 11) % 12)])
        .put(" ")
        .dec(u64::from(c.year))
        .put(" ");
    two(&mut s, c.hour);
    s.put(":");
    two(&mut s, c.minute);
    s.put(":");
    two(&mut s, c.second);
    s.put(" GMT");
    s
}

// ---- the schedule ---------------------------------------------------------------------------

/// An event's state at a given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Not in the document yet.
    Pending,
    /// `Scheduled`.
    Scheduled,
    /// `Started`.
    Started,
    /// Finished: not in the document any more.
    Gone,
}

struct Slot {
    config: EventConfig,
    id: Guid,
    /// Monotonic time of the approval, if one came while the event was `Scheduled`.
    approved_us: Option<u64>,
    /// The `NotBefore` wall time, fixed when the event was first shown.
    not_before_unix: Option<u64>,
}

impl Slot {
    fn appear_us(&self) -> u64 {
        u64::from(self.config.appear_after_s) * 1_000_000
    }
    fn natural_start_us(&self) -> u64 {
        self.appear_us() + u64::from(self.config.notice_s) * 1_000_000
    }
    fn start_us(&self) -> u64 {
        match self.approved_us {
            Some(a) => a.min(self.natural_start_us()),
            None => self.natural_start_us(),
        }
    }
    fn gone_us(&self) -> Option<u64> {
        (self.config.duration_s >= 0)
            .then(|| self.start_us() + self.config.duration_s as u64 * 1_000_000)
    }
    fn status(&self, mono_us: u64) -> Status {
        if mono_us < self.appear_us() {
            Status::Pending
        } else if mono_us < self.start_us() {
            Status::Scheduled
        } else if self.gone_us().is_some_and(|g| mono_us >= g) {
            Status::Gone
        } else {
            Status::Started
        }
    }
    /// Transitions passed by `mono_us` (0..=3).
    fn transitions(&self, mono_us: u64) -> u64 {
        match self.status(mono_us) {
            Status::Pending => 0,
            Status::Scheduled => 1,
            Status::Started => 2,
            Status::Gone => 3,
        }
    }
}

/// The configured events and what happened to them.
pub struct Schedule {
    slots: heapless::Vec<Slot, MAX_SCHEDULED_EVENTS>,
}

impl fmt::Debug for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Schedule")
    }
}

/// Why a `POST` is refused (400).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartError {
    /// Not `{"StartRequests":[{"EventId":"…"}, …]}` (or more entries than events).
    Malformed,
    /// An EventId that is not in the document now.
    UnknownEvent,
}

#[derive(serde::Deserialize)]
struct StartRequest<'a> {
    #[serde(rename = "EventId", borrow)]
    event_id: &'a str,
}

#[derive(serde::Deserialize)]
struct StartRequests<'a> {
    #[serde(rename = "StartRequests", borrow)]
    start_requests: heapless::Vec<StartRequest<'a>, MAX_SCHEDULED_EVENTS>,
}

/// The EventIds of a `POST` body `{"StartRequests":[{"EventId":"…"}, …]}` (unknown keys are
/// ignored; at most [`MAX_SCHEDULED_EVENTS`] entries).
pub fn parse_start_requests(
    body: &[u8],
) -> Result<heapless::Vec<&str, MAX_SCHEDULED_EVENTS>, StartError> {
    let (r, _) = serde_json_core::from_slice::<StartRequests<'_>>(body)
        .map_err(|_| StartError::Malformed)?;
    Ok(r.start_requests.iter().map(|s| s.event_id).collect())
}

#[derive(Serialize)]
struct EventBody<'a> {
    #[serde(rename = "EventId")]
    event_id: &'a str,
    #[serde(rename = "EventType")]
    event_type: &'a str,
    #[serde(rename = "ResourceType")]
    resource_type: &'a str,
    #[serde(rename = "Resources")]
    resources: &'a [&'a str],
    #[serde(rename = "EventStatus")]
    event_status: &'a str,
    #[serde(rename = "NotBefore")]
    not_before: &'a str,
    #[serde(rename = "Description")]
    description: &'a str,
    #[serde(rename = "EventSource")]
    event_source: &'a str,
    #[serde(rename = "DurationInSeconds")]
    duration_s: i32,
}

/// One event as shown (a serializable view).
struct Shown<'a> {
    slot: &'a Slot,
    started: bool,
    not_before: heapless::String<29>,
    resources: &'a [&'a str],
}

impl Serialize for Shown<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let c = &self.slot.config;
        EventBody {
            event_id: &self.slot.id,
            event_type: c.kind.as_str(),
            resource_type: "VirtualMachine",
            resources: self.resources,
            event_status: if self.started { "Started" } else { "Scheduled" },
            not_before: if self.started { "" } else { &self.not_before },
            description: &c.description,
            event_source: if c.user_source { "User" } else { "Platform" },
            duration_s: c.duration_s,
        }
        .serialize(s)
    }
}

/// The document: `{"DocumentIncarnation": n, "Events": [...]}`.
#[derive(Serialize)]
pub struct Document<'a> {
    #[serde(rename = "DocumentIncarnation")]
    incarnation: u64,
    #[serde(rename = "Events")]
    events: heapless::Vec<ShownRef<'a>, MAX_SCHEDULED_EVENTS>,
}

/// A serializable event of a [`Document`].
pub struct ShownRef<'a>(Shown<'a>);

impl Serialize for ShownRef<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl Schedule {
    /// The schedule of `events`; their ids are derived from `seed` (tenant, vmId).
    pub fn new(events: &[EventConfig], seed: &[&str]) -> Schedule {
        let mut slots = heapless::Vec::new();
        for (i, e) in events.iter().enumerate() {
            let mut h = sha2::Sha256::new();
            h.update(b"imds-agent scheduled event\0");
            for s in seed {
                h.update(s.as_bytes());
                h.update([0]);
            }
            h.update((i as u64).to_be_bytes());
            h.update(e.kind.as_str().as_bytes());
            h.update(e.appear_after_s.to_be_bytes());
            h.update(e.notice_s.to_be_bytes());
            let d = h.finalize();
            let mut b = [0u8; 16];
            b.copy_from_slice(&d[..16]);
            let _ = slots.push(Slot {
                config: e.clone(),
                id: guid(b),
                approved_us: None,
                not_before_unix: None,
            });
        }
        Schedule { slots }
    }

    /// Whether any event is configured.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// `DocumentIncarnation` at `mono_us`: 1 + every transition passed.
    pub fn incarnation(&self, mono_us: u64) -> u64 {
        1 + self
            .slots
            .iter()
            .map(|s| s.transitions(mono_us))
            .sum::<u64>()
    }

    /// The status of the `i`-th configured event at `mono_us` (tests, logs).
    pub fn status(&self, i: usize, mono_us: u64) -> Option<Status> {
        self.slots.get(i).map(|s| s.status(mono_us))
    }

    /// The id of the `i`-th configured event.
    pub fn id(&self, i: usize) -> Option<&str> {
        self.slots.get(i).map(|s| s.id.as_str())
    }

    /// The document at (`mono_us`, `unix_s`); `resources` is the VM's name (or none).
    pub fn document<'a>(
        &'a mut self,
        mono_us: u64,
        unix_s: u64,
        resources: &'a [&'a str],
    ) -> Document<'a> {
        let incarnation = self.incarnation(mono_us);
        let mut events = heapless::Vec::new();
        for slot in self.slots.iter_mut() {
            let status = slot.status(mono_us);
            if matches!(status, Status::Scheduled | Status::Started)
                && slot.not_before_unix.is_none()
            {
                // The wall time of the natural start, fixed when first shown.
                let ahead_s = slot.natural_start_us().saturating_sub(mono_us) / 1_000_000;
                let behind_s = mono_us.saturating_sub(slot.natural_start_us()) / 1_000_000;
                slot.not_before_unix = Some((unix_s + ahead_s).saturating_sub(behind_s));
            }
        }
        for slot in self.slots.iter() {
            let status = slot.status(mono_us);
            if !matches!(status, Status::Scheduled | Status::Started) {
                continue;
            }
            let _ = events.push(ShownRef(Shown {
                slot,
                started: status == Status::Started,
                not_before: http_date(slot.not_before_unix.unwrap_or(unix_s)),
                resources,
            }));
        }
        Document {
            incarnation,
            events,
        }
    }

    /// Approve the events a `POST` body names, at `mono_us`: all or none.
    pub fn start(&mut self, body: &[u8], mono_us: u64) -> Result<(), StartError> {
        let ids = parse_start_requests(body)?;
        let find = |slots: &heapless::Vec<Slot, MAX_SCHEDULED_EVENTS>, id: &str| {
            slots.iter().position(|s| {
                s.id.eq_ignore_ascii_case(id)
                    && matches!(s.status(mono_us), Status::Scheduled | Status::Started)
            })
        };
        if ids.iter().any(|id| find(&self.slots, id).is_none()) {
            return Err(StartError::UnknownEvent);
        }
        for id in &ids {
            if let Some(i) = find(&self.slots, id) {
                let slot = &mut self.slots[i];
                if slot.status(mono_us) == Status::Scheduled {
                    slot.approved_us = Some(mono_us);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::imds::tests::ask_at;

    #[test]
    fn civil_and_http_date() {
        assert_eq!(http_date(0).as_str(), "Thu, 01 Jan 1970 00:00:00 GMT");
        // 2026-04-11 22:26:58 UTC (the doc's sample), a Saturday.
        assert_eq!(
            http_date(1_775_946_418).as_str(),
            "Sat, 11 Apr 2026 22:26:58 GMT"
        );
        assert_eq!(
            http_date(951_782_400).as_str(),
            "Tue, 29 Feb 2000 00:00:00 GMT"
        );
        assert_eq!(
            http_date(4_102_444_799).as_str(),
            "Thu, 31 Dec 2099 23:59:59 GMT"
        );
    }

    use crate::agent::Agent;
    use crate::config::tests::SYS;
    use crate::config::{Config, ConfigError};
    use crate::imds::Now;

    /// The test config with `extra` top-level fields.
    fn config_with(extra: serde_json::Value) -> Result<Config, ConfigError> {
        let mut v: serde_json::Value =
            serde_json::from_str(&crate::config::tests::doc("", SYS)).unwrap();
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        Config::parse(serde_json::to_string(&v).unwrap().as_bytes())
    }

    use std::string::String;

    fn ev(kind: EventType, appear: u32, notice: u32, duration: i32) -> EventConfig {
        EventConfig {
            kind,
            appear_after_s: appear,
            notice_s: notice,
            duration_s: duration,
            description: heapless::String::try_from("Host maintenance").unwrap(),
            user_source: false,
        }
    }

    const S: u64 = 1_000_000;
    const T0: u64 = 1_775_946_418;

    fn doc(s: &mut Schedule, mono_s: u64) -> serde_json::Value {
        let mut buf = [0u8; 4096];
        let d = s.document(mono_s * S, T0 + mono_s, &["vm-one"]);
        let n = serde_json_core::to_slice(&d, &mut buf).unwrap();
        serde_json::from_slice(&buf[..n]).unwrap()
    }

    fn body(id: &str) -> String {
        std::format!(r#"{{"StartRequests":[{{"EventId":"{id}"}}]}}"#)
    }

    #[test]
    fn schedule_appear_approve_start_gone() {
        let mut s = Schedule::new(&[ev(EventType::Reboot, 10, 900, 5)], &["t", "vm"]);
        let id = String::from(s.id(0).unwrap());
        assert!(crate::config::is_guid(&id));
        // Before it appears: no events, incarnation 1; an approval is refused.
        assert_eq!(
            doc(&mut s, 0),
            serde_json::json!({"DocumentIncarnation": 1, "Events": []})
        );
        assert_eq!(
            s.start(body(&id).as_bytes(), 5 * S),
            Err(StartError::UnknownEvent)
        );
        // Appears at 10 s, Scheduled, NotBefore = then + 900 s.
        let d = doc(&mut s, 10);
        assert_eq!(
            d,
            serde_json::json!({"DocumentIncarnation": 2, "Events": [{
                "EventId": id, "EventType": "Reboot", "ResourceType": "VirtualMachine",
                "Resources": ["vm-one"], "EventStatus": "Scheduled",
                "NotBefore": http_date(T0 + 910).as_str(), "Description": "Host maintenance",
                "EventSource": "Platform", "DurationInSeconds": 5
            }]})
        );
        // Asking again changes nothing; NotBefore stays what it was.
        assert_eq!(doc(&mut s, 20), d);
        // Approved at 30 s: Started, NotBefore "".
        assert_eq!(s.start(body(&id.to_uppercase()).as_bytes(), 30 * S), Ok(()));
        let d = doc(&mut s, 31);
        assert_eq!(d["DocumentIncarnation"], 3);
        assert_eq!(d["Events"][0]["EventStatus"], "Started");
        assert_eq!(d["Events"][0]["NotBefore"], "");
        // Approving a started event again: accepted, nothing changes.
        assert_eq!(s.start(body(&id).as_bytes(), 32 * S), Ok(()));
        assert_eq!(doc(&mut s, 34), d);
        // Gone DurationInSeconds after it started.
        assert_eq!(
            doc(&mut s, 35),
            serde_json::json!({"DocumentIncarnation": 4, "Events": []})
        );
        assert_eq!(
            s.start(body(&id).as_bytes(), 36 * S),
            Err(StartError::UnknownEvent)
        );
        assert_eq!(doc(&mut s, 10_000)["DocumentIncarnation"], 4);
    }

    #[test]
    fn schedule_starts_at_not_before_without_approval() {
        let mut s = Schedule::new(
            &[
                ev(EventType::Preempt, 0, 30, -1),
                ev(EventType::Freeze, 5, 10, 2),
            ],
            &["t", "vm"],
        );
        assert_ne!(s.id(0), s.id(1));
        let d = doc(&mut s, 0);
        assert_eq!(d["DocumentIncarnation"], 2);
        assert_eq!(d["Events"][0]["EventStatus"], "Scheduled");
        assert_eq!(d["Events"][0]["NotBefore"], http_date(T0 + 30).as_str());
        let d = doc(&mut s, 5);
        assert_eq!(d["DocumentIncarnation"], 3);
        assert_eq!(d["Events"].as_array().unwrap().len(), 2);
        assert_eq!(d["Events"][1]["NotBefore"], http_date(T0 + 15).as_str());
        // The freeze starts at its NotBefore (15 s) and is gone at 17 s.
        assert_eq!(s.status(1, 14 * S), Some(Status::Scheduled));
        assert_eq!(doc(&mut s, 15)["Events"][1]["EventStatus"], "Started");
        assert_eq!(doc(&mut s, 15)["DocumentIncarnation"], 4);
        let d = doc(&mut s, 17);
        assert_eq!(d["DocumentIncarnation"], 5);
        assert_eq!(d["Events"].as_array().unwrap().len(), 1);
        // The preemption starts at 30 s and, with DurationInSeconds -1, stays.
        let d = doc(&mut s, 30);
        assert_eq!(d["Events"][0]["EventStatus"], "Started");
        assert_eq!(d["Events"][0]["DurationInSeconds"], -1);
        assert_eq!(d["DocumentIncarnation"], 6);
        assert_eq!(doc(&mut s, 1_000_000)["DocumentIncarnation"], 6);
        // Incarnation counts transitions whoever asks (a late first reader sees the same).
        let late = Schedule::new(
            &[
                ev(EventType::Preempt, 0, 30, -1),
                ev(EventType::Freeze, 5, 10, 2),
            ],
            &["t", "vm"],
        );
        assert_eq!(late.incarnation(30 * S), 6);
        assert_eq!(late.id(0), s.id(0));
    }

    #[test]
    fn start_request_bodies() {
        assert_eq!(
            parse_start_requests(br#"{"StartRequests":[{"EventId":"a"},{"EventId":"b","x":1}]}"#)
                .unwrap()
                .as_slice(),
            ["a", "b"]
        );
        assert_eq!(
            parse_start_requests(br#"{"StartRequests":[]}"#)
                .unwrap()
                .len(),
            0
        );
        for bad in [
            &b""[..],
            b"{}",
            b"[]",
            b"{\"StartRequests\":{}}",
            b"{\"StartRequests\":[{}]}",
            b"{\"StartRequests\":[{\"EventId\":1}]}",
            b"{\"StartRequests\":[{\"EventId\":\"a\"}]",
            b"{\"StartRequests\":[1,2,3,4,5,6,7]}",
        ] {
            assert_eq!(
                parse_start_requests(bad),
                Err(StartError::Malformed),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let seven = std::format!(
            r#"{{"StartRequests":[{}]}}"#,
            [r#"{"EventId":"a"}"#; 7].join(",")
        );
        assert_eq!(
            parse_start_requests(seven.as_bytes()),
            Err(StartError::Malformed)
        );
    }

    #[test]
    fn scheduled_events_config() {
        let c = config_with(serde_json::json!({"scheduled_events": [
            {"EventType": "Terminate"},
            {"EventType": "Freeze", "appear_after_s": 3, "notice_s": 1, "DurationInSeconds": 9,
             "Description": "d", "EventSource": "User"}
        ]}))
        .unwrap();
        assert_eq!(c.scheduled_events.len(), 2);
        let e = &c.scheduled_events[0];
        assert_eq!(
            (e.kind, e.appear_after_s, e.notice_s, e.duration_s),
            (EventType::Terminate, 0, 300, -1)
        );
        assert!(!e.user_source);
        let e = &c.scheduled_events[1];
        assert_eq!(
            (e.kind, e.appear_after_s, e.notice_s, e.duration_s),
            (EventType::Freeze, 3, 1, 9)
        );
        assert!(e.user_source);
        assert_eq!(e.description.as_str(), "d");
        for (kind, notice) in [
            ("Freeze", 900),
            ("Reboot", 900),
            ("Redeploy", 600),
            ("Preempt", 30),
        ] {
            let c = config_with(serde_json::json!({"scheduled_events": [{"EventType": kind}]}))
                .unwrap();
            assert_eq!(c.scheduled_events[0].notice_s, notice);
        }
        let err = |v: serde_json::Value| {
            let mut s = String::new();
            config_with(v).unwrap_err().describe(&mut s);
            s
        };
        assert_eq!(
            err(serde_json::json!({"scheduled_events": [{"EventType": "Freeze"}, {"EventType": "Nap"}]})),
            "config: field `scheduled_events[1].EventType`: must be \"Freeze\", \"Reboot\", \"Redeploy\", \"Preempt\" or \"Terminate\""
        );
        assert_eq!(
            err(serde_json::json!({"scheduled_events": [{"notice_s": 1}]})),
            "config: field `scheduled_events[0].EventType` is required"
        );
        assert_eq!(
            err(serde_json::json!({"scheduled_events": [{"EventType": "Freeze", "DurationInSeconds": -2}]})),
            "config: field `scheduled_events[0].DurationInSeconds`: must be -1 (unknown) or a number of seconds"
        );
        assert_eq!(
            err(
                serde_json::json!({"scheduled_events": [{"EventType": "Freeze", "EventSource": "Me"}]})
            ),
            "config: field `scheduled_events[0].EventSource`: must be \"Platform\" or \"User\""
        );
        assert_eq!(
            err(serde_json::json!({"scheduled_events": [{"EventType": "Freeze", "notice": 1}]})),
            "config: unknown field `scheduled_events[0].notice`"
        );
        assert_eq!(
            err(serde_json::json!({"scheduled_events": [{"EventType": "Freeze", "notice_s": -1}]})),
            "config: field `scheduled_events[0].notice_s`: is not a valid number"
        );
        let seven: std::vec::Vec<_> = (0..7)
            .map(|_| serde_json::json!({"EventType": "Freeze"}))
            .collect();
        assert_eq!(
            err(serde_json::json!({"scheduled_events": seven})),
            "config: field `scheduled_events`: too many events: at most 6 (MAX_SCHEDULED_EVENTS)"
        );
        let long = "x".repeat(EVENT_DESCRIPTION_MAX + 1);
        assert!(err(
            serde_json::json!({"scheduled_events": [{"EventType": "Freeze", "Description": long}]})
        )
        .starts_with("config: field `scheduled_events[0].Description`"));
    }

    #[test]
    fn scheduled_events_route() {
        let mut agent = Agent::new(
            config_with(serde_json::json!({
                "scheduled_events": [{"EventType": "Reboot", "appear_after_s": 1, "DurationInSeconds": 2}],
                "instance": {"compute": {"name": "vm-one", "vmId": "x"}, "network": {}},
            }))
            .unwrap(),
        );
        let at = |s: u64| Now {
            unix_s: T0 + s,
            mono_us: s * S,
        };
        let get = |agent: &mut Agent, q: &str, s: u64| {
            ask_at(
                agent,
                &std::format!("GET /metadata/scheduledevents{q} HTTP/1.1\r\nHost: x\r\nMetadata: true\r\n\r\n"),
                at(s),
            )
        };
        let post = |agent: &mut Agent, body: &str, s: u64| {
            ask_at(
                agent,
                &std::format!(
                    "POST /metadata/scheduledevents?api-version=2020-07-01 HTTP/1.1\r\nHost: x\r\nMetadata: true\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                ),
                at(s),
            )
        };
        let json = |r: &crate::imds::Reply| -> serde_json::Value {
            serde_json::from_slice(&r.body).unwrap()
        };
        let r = get(&mut agent, "?api-version=2020-07-01", 0);
        assert_eq!(r.status, 200);
        assert_eq!(
            json(&r),
            serde_json::json!({"DocumentIncarnation": 1, "Events": []})
        );
        let r = get(&mut agent, "?api-version=2017-11-01", 1);
        assert_eq!(r.status, 200);
        let d = json(&r);
        assert_eq!(d["DocumentIncarnation"], 2);
        assert_eq!(d["Events"][0]["Resources"], serde_json::json!(["vm-one"]));
        let id = d["Events"][0]["EventId"].as_str().unwrap().to_owned();
        for q in [
            "",
            "?api-version=2021-02-01",
            "?api-version=2020-07-01&api-version=2020-07-01",
        ] {
            assert_eq!(get(&mut agent, q, 1).status, 400, "{q}");
        }
        let r = ask_at(
            &mut agent,
            "GET /metadata/scheduledevents?api-version=2020-07-01 HTTP/1.1\r\nHost: x\r\n\r\n",
            at(1),
        );
        assert_eq!(r.status, 400);
        let r = ask_at(
            &mut agent,
            "DELETE /metadata/scheduledevents?api-version=2020-07-01 HTTP/1.1\r\nHost: x\r\nMetadata: true\r\n\r\n",
            at(1),
        );
        assert_eq!((r.status, r.allow), (405, Some("GET, HEAD, POST")));
        assert_eq!(post(&mut agent, "{\"StartRequests\":", 2).status, 400);
        assert_eq!(
            post(&mut agent, &body("00000000-0000-4000-8000-000000000000"), 2).status,
            400
        );
        // Refused POSTs changed nothing.
        assert_eq!(json(&get(&mut agent, "?api-version=2020-07-01", 2)), d);
        let r = post(&mut agent, &body(&id), 3);
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let d = json(&get(&mut agent, "?api-version=2020-07-01", 3));
        assert_eq!(d["DocumentIncarnation"], 3);
        assert_eq!(d["Events"][0]["EventStatus"], "Started");
        let d = json(&get(&mut agent, "?api-version=2020-07-01", 5));
        assert_eq!(
            d,
            serde_json::json!({"DocumentIncarnation": 4, "Events": []})
        );
    }
}
