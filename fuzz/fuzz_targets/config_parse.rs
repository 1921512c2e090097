//! `imds_agent::config::Config::parse` on arbitrary bytes: no panic; every error displays; a
//! config that parses builds an agent.
#![no_main]

use core::fmt::Write;
use imds_agent::config::Config;
use imds_agent::Agent;
use libfuzzer_sys::fuzz_target;

struct Sink(usize);

impl Write for Sink {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        self.0 += s.len();
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    match Config::parse(data) {
        Ok(config) => {
            let _ = write!(Sink(0), "{config:?}");
            let identities = config.identities.len();
            let agent = Agent::new(config);
            assert_eq!(agent.identities().len(), identities);
        }
        Err(e) => {
            let mut s = Sink(0);
            write!(s, "{e}").expect("error displays");
            assert!(s.0 > 0, "empty error text");
        }
    }
});
