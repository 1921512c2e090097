//! Broker mode: tokens fetched from an OAuth2 authority, cached, and served through the same
//! IMDS endpoint.
//!
//! * [`assertion`] signs the RFC 7523 client assertion;
//! * [`upstream`] builds the token request and reads the answer (sans-IO);
//! * [`pipe`] is the byte pipe between the driver's socket and the TLS session;
//! * [`task`] is the async fetch (TLS 1.3 with embedded-tls, retries, timeouts) that the
//!   drivers poll;
//! * [`runner`] is the drivers' loop step: poll the tasks, serve the pipes;
//! * [`rng`] is the entropy source as the RNG the TLS session and the signatures take;
//! * [`JobQueue`] (here) is what the tasks need of the agent, [`JobSpec`] one fetch;
//! * [`Jobs`] (here) is what the router and the task share: which (identity, resource) pairs
//!   are queued, in flight, or failed a moment ago.
//!
//! The endpoint never stalls: a request that needs a fetch is parked by its connection and
//! retried on every loop turn; everything else is answered meanwhile.

pub mod assertion;
pub mod credential;
pub mod pin;
pub mod pipe;
pub mod rng;
pub mod runner;
pub mod task;
pub mod upstream;

use crate::config::{Credential, Guid};
use crate::limits::{MAX_PENDING_FETCHES, RESOURCE_MAX};
use upstream::TokenAnswer;

/// What the task needs of one job (copied out of the agent: no borrow across `await`).
pub struct JobSpec {
    /// Index of the identity.
    pub identity: u8,
    /// The resource the token is for.
    pub resource: heapless::String<RESOURCE_MAX>,
    /// The identity's client id (the assertion's `iss` and `sub`).
    pub client_id: Guid,
    /// How the identity proves itself to the authority.
    pub credential: Credential,
}

/// What the broker tasks need of the agent, which implements it (the broker never names the
/// agent): queued fetches out, results and log lines in.
pub trait JobQueue {
    /// The next fetch, with what it needs copied out (now in flight).
    fn start_job(&mut self) -> Option<JobSpec>;
    /// A fetch ended: a token goes into the cache; a failure is held for waiting requests.
    fn finish_job(
        &mut self,
        identity: u8,
        resource: &str,
        result: Result<TokenAnswer, FetchError>,
        now_us: u64,
    );
    /// Record a log line (kept until the driver drains it).
    fn event(&mut self, line: &str);
}

/// Why a fetch failed: what the clients that wait for it are answered (the router's wire
/// table, `imds::wire`, says how).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchError {
    /// The connection could not be made.
    Unreachable,
    /// No answer in time.
    Timeout,
    /// The connection broke.
    Broken,
    /// The authority answered 5xx or 429, with its `Retry-After` if it sent one.
    Unavailable {
        /// The authority's `Retry-After`, in seconds.
        retry_after_s: Option<u32>,
    },
    /// No entropy for the TLS handshake.
    Entropy,
    /// TLS failed (untrusted certificate or wrong name).
    Tls,
    /// The answer could not be read.
    Unreadable,
    /// The authority refused the token request.
    Refused,
    /// The identity has no credential for the authority.
    NoCredential,
}

/// State of one fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    /// Waiting for a task.
    Queued,
    /// A task is fetching it.
    InFlight,
    /// Failed; remembered until the monotonic time `until_us`.
    Failed {
        /// Why.
        error: FetchError,
        /// Until when the failure is answered to the clients that ask.
        until_us: u64,
    },
}

#[derive(Debug, Clone)]
/// One fetch of the job table.
pub struct Job {
    /// Index of the identity.
    pub identity: u8,
    /// The resource the token is for.
    pub resource: heapless::String<RESOURCE_MAX>,
    /// Where the fetch is.
    pub state: JobState,
    /// A background refresh of a token that is still served (nobody waits for it).
    pub background: bool,
}

/// The job table is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobsFull;

/// Fetches queued, in flight, or recently failed.
#[derive(Debug, Default)]
pub struct Jobs {
    entries: heapless::Vec<Job, MAX_PENDING_FETCHES>,
}

impl Jobs {
    /// The job of (identity, resource), if any.
    pub fn get(&self, identity: u8, resource: &str) -> Option<&Job> {
        self.entries
            .iter()
            .find(|j| j.identity == identity && j.resource == resource)
    }

    /// Queue a fetch unless one is queued or in flight. A remembered failure that is over is
    /// replaced. `background`: nobody waits for it.
    pub fn enqueue(
        &mut self,
        identity: u8,
        resource: &str,
        background: bool,
        now_us: u64,
    ) -> Result<(), JobsFull> {
        self.expire(now_us);
        if let Some(j) = self
            .entries
            .iter_mut()
            .find(|j| j.identity == identity && j.resource == resource)
        {
            if !background {
                j.background = false;
            }
            return Ok(());
        }
        let resource = heapless::String::try_from(resource).map_err(|_| JobsFull)?;
        self.entries
            .push(Job {
                identity,
                resource,
                state: JobState::Queued,
                background,
            })
            .map_err(|_| JobsFull)
    }

    /// Forget failures whose hold time is over.
    pub fn expire(&mut self, now_us: u64) {
        self.entries.retain(|j| match j.state {
            JobState::Failed { until_us, .. } => until_us > now_us,
            _ => true,
        });
    }

    /// The next queued job (now in flight). Waited-for jobs go before background refreshes.
    pub fn start_next(&mut self) -> Option<(u8, heapless::String<RESOURCE_MAX>)> {
        let pick = self
            .entries
            .iter()
            .position(|j| j.state == JobState::Queued && !j.background)
            .or_else(|| {
                self.entries
                    .iter()
                    .position(|j| j.state == JobState::Queued)
            })?;
        let j = &mut self.entries[pick];
        j.state = JobState::InFlight;
        Some((j.identity, j.resource.clone()))
    }

    /// A fetch ended: success forgets the job (the token is in the cache); a failure is
    /// remembered for `hold_us` so that waiting requests get its answer.
    pub fn finish(
        &mut self,
        identity: u8,
        resource: &str,
        result: Result<(), FetchError>,
        now_us: u64,
        hold_us: u64,
    ) {
        let Some(i) = self
            .entries
            .iter()
            .position(|j| j.identity == identity && j.resource == resource)
        else {
            return;
        };
        match result {
            Ok(()) => {
                self.entries.swap_remove(i);
            }
            Err(error) => {
                self.entries[i].state = JobState::Failed {
                    error,
                    until_us: now_us + hold_us,
                };
            }
        }
    }

    /// How many jobs the table holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether any fetch is queued or in flight (drivers poll faster then).
    pub fn busy(&self) -> bool {
        self.entries
            .iter()
            .any(|j| matches!(j.state, JobState::Queued | JobState::InFlight))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const F: FetchError = FetchError::Unavailable {
        retry_after_s: Some(2),
    };

    #[test]
    fn lifecycle() {
        let mut j = Jobs::default();
        j.enqueue(0, "r", true, 0).unwrap();
        j.enqueue(1, "r", false, 0).unwrap();
        j.enqueue(0, "r", true, 0).unwrap();
        assert_eq!(j.len(), 2, "no duplicate job for one key");
        assert_eq!(j.start_next().unwrap().0, 1, "waited-for jobs first");
        assert_eq!(j.start_next().unwrap().0, 0);
        assert!(j.start_next().is_none());
        j.finish(1, "r", Ok(()), 10, 100);
        assert!(j.get(1, "r").is_none());
        j.finish(0, "r", Err(F), 10, 100);
        assert!(matches!(
            j.get(0, "r").unwrap().state,
            JobState::Failed { .. }
        ));
        // While the failure is held, enqueue keeps it; after, a new job is queued.
        j.enqueue(0, "r", false, 50).unwrap();
        assert!(matches!(
            j.get(0, "r").unwrap().state,
            JobState::Failed { .. }
        ));
        j.enqueue(0, "r", false, 111).unwrap();
        assert_eq!(j.get(0, "r").unwrap().state, JobState::Queued);
    }

    #[test]
    fn full_table_is_an_error() {
        let mut j = Jobs::default();
        for i in 0..MAX_PENDING_FETCHES {
            j.enqueue(i as u8, "r", false, 0).unwrap();
        }
        assert_eq!(j.enqueue(200, "r", false, 0), Err(JobsFull));
        assert!(j.busy());
    }
}
