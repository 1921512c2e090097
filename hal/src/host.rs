//! Host backend: the agent as a Linux process.

use crate::{Clock, ConfigSource, ConfigSourceError, Entropy, EntropyError};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// `Instant` for the monotonic clock, `SystemTime` for the wall clock.
#[derive(Debug, Clone, Copy)]
pub struct HostClock {
    start: Instant,
}

impl HostClock {
    pub fn new() -> Self {
        HostClock {
            start: Instant::now(),
        }
    }
}

impl Default for HostClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for HostClock {
    fn monotonic_us(&self) -> u64 {
        self.start.elapsed().as_micros() as u64
    }
    fn unix_time_s(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }
}

/// The kernel's CSPRNG, through `/dev/urandom` (never blocks after boot-time seeding).
#[derive(Debug, Default)]
pub struct HostEntropy {
    file: Option<std::fs::File>,
}

impl Entropy for HostEntropy {
    fn fill(&mut self, buf: &mut [u8]) -> Result<(), EntropyError> {
        use std::io::Read;
        if self.file.is_none() {
            self.file =
                Some(std::fs::File::open("/dev/urandom").map_err(|_| EntropyError::Unavailable)?);
        }
        let f = self.file.as_mut().ok_or(EntropyError::Unavailable)?;
        f.read_exact(buf).map_err(|_| EntropyError::Failed)
    }
}

/// A configuration file on disk.
#[derive(Debug, Clone)]
pub struct FileConfig {
    pub path: std::path::PathBuf,
}

impl ConfigSource for FileConfig {
    fn read_config<'a>(&mut self, buf: &'a mut [u8]) -> Result<&'a [u8], ConfigSourceError> {
        let data = std::fs::read(&self.path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => ConfigSourceError::Missing,
            _ => ConfigSourceError::Io,
        })?;
        if data.len() > buf.len() {
            return Err(ConfigSourceError::TooLarge(data.len()));
        }
        buf[..data.len()].copy_from_slice(&data);
        Ok(&buf[..data.len()])
    }
}
