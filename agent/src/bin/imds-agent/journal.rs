//! The daemon's log on stderr, and systemd's view of it.
//!
//! Under systemd (`JOURNAL_STREAM` in the environment: stderr is connected to the journal),
//! every line starts with the sd-daemon priority prefix (`sd-daemon(3)`), so that journald
//! files it at its level: `<6>` info (requests answered, start, stop, fetched tokens), `<4>`
//! warning (4xx answers: refusals, rate limits, bad requests; a failed upstream attempt that
//! is retried), `<3>` error (5xx answers, a fetch that failed for good, fatal errors, bad
//! configuration). Without `JOURNAL_STREAM` the output is unchanged.
//!
//! Readiness goes to `$NOTIFY_SOCKET` (`sd_notify(3)`) through the `sd-notify` crate: nothing
//! is sent when the variable is not set.

use std::fmt;
use std::io::{self, Write};

/// sd-daemon priorities.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Err = 3,
    Warning = 4,
    Info = 6,
}

/// Whether stderr goes to the journal (`JOURNAL_STREAM` is set by systemd for services whose
/// stdout/stderr is connected to it).
pub fn under_journal() -> bool {
    std::env::var_os("JOURNAL_STREAM").is_some()
}

/// Write `msg` (one or more lines) to stderr at `level`, unbuffered.
pub fn say(level: Level, msg: &str) {
    let journal = under_journal();
    let mut s = String::with_capacity(msg.len() + 8);
    for line in msg.lines() {
        if journal {
            s.push_str(prefix(level));
        }
        s.push_str(line);
        s.push('\n');
    }
    let _ = io::stderr().write_all(s.as_bytes());
}

fn prefix(level: Level) -> &'static str {
    match level {
        Level::Err => "<3>",
        Level::Warning => "<4>",
        Level::Info => "<6>",
    }
}

/// The level of a line the core wrote: an access line (`PEER METHOD PATH STATUS CLIENT TIME`,
/// or `PEER - - STATUS - 0us (why)` for a request that could not be parsed) by its status; a
/// broker event (`upstream: ...`) by what happened.
pub fn classify(line: &str) -> Level {
    let mut words = line.split_whitespace();
    let first = words.next().unwrap_or("");
    if first.parse::<std::net::IpAddr>().is_ok() {
        return match words.nth(2).and_then(|s| s.parse::<u16>().ok()) {
            Some(500..) => Level::Err,
            Some(400..) => Level::Warning,
            _ => Level::Info,
        };
    }
    if line.contains(" failed after ") {
        Level::Err
    } else if line.contains(" failed") || line.contains("refus") {
        Level::Warning
    } else {
        Level::Info
    }
}

/// Log lines to stderr, buffered and flushed once per event-loop turn. Under the journal each
/// complete line gets its priority prefix ([`classify`] for the core's lines).
pub struct Log {
    out: io::BufWriter<io::Stderr>,
    journal: bool,
    /// The line being written (its level is known when it is complete). Journal only.
    line: String,
}

impl Log {
    pub fn new() -> Log {
        Log {
            out: io::BufWriter::with_capacity(64 * 1024, io::stderr()),
            journal: under_journal(),
            line: String::with_capacity(512),
        }
    }

    /// One line of the daemon's own, at `level`.
    pub fn line(&mut self, level: Level, args: fmt::Arguments<'_>) {
        if self.journal {
            let _ = self.out.write_all(prefix(level).as_bytes());
        }
        let _ = self.out.write_fmt(args);
        let _ = self.out.write_all(b"\n");
    }

    pub fn flush(&mut self) {
        let _ = self.out.flush();
    }
}

impl fmt::Write for Log {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if !self.journal {
            return self.out.write_all(s.as_bytes()).map_err(|_| fmt::Error);
        }
        let mut rest = s;
        while let Some(i) = rest.find('\n') {
            self.line.push_str(&rest[..i]);
            let level = classify(&self.line);
            let r = self
                .out
                .write_all(prefix(level).as_bytes())
                .and_then(|()| self.out.write_all(self.line.as_bytes()))
                .and_then(|()| self.out.write_all(b"\n"));
            self.line.clear();
            r.map_err(|_| fmt::Error)?;
            rest = &rest[i + 1..];
        }
        self.line.push_str(rest);
        Ok(())
    }
}

/// Tell the service manager (if any) something; errors are not fatal (systemd times out a
/// `Type=notify` service that never gets READY=1, which says more than a log line).
pub fn notify(states: &[sd_notify::NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        say(Level::Warning, &format!("imds-agent: sd_notify: {e}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels() {
        assert_eq!(
            classify("127.0.0.1 GET /metadata/identity/oauth2/token 200 abc 12us"),
            Level::Info
        );
        assert_eq!(
            classify("::1 GET /metadata/identity/oauth2/token 429 - 3us"),
            Level::Warning
        );
        assert_eq!(
            classify("10.0.0.1 - - 400 - 0us (bad request)"),
            Level::Warning
        );
        assert_eq!(classify("10.0.0.1 GET /x 503 - 1us"), Level::Err);
        assert_eq!(
            classify("upstream: c r: attempt 1 failed (timeout); retrying in 500 ms"),
            Level::Warning
        );
        assert_eq!(
            classify("upstream: c r: failed after 3 attempt(s) in 9 ms: x"),
            Level::Err
        );
        assert_eq!(
            classify("upstream: c r: token (expires in 3599 s) in 40 ms"),
            Level::Info
        );
    }
}
