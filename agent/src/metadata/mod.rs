//! The metadata endpoints besides identity: scheduled events and the attested document.

pub mod attested;
pub mod events;
