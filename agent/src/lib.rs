#![cfg_attr(not(feature = "std"), no_std)]
#![forbid(unsafe_code)]

// Only the `rsa` feature allocates (the rsa crate's big integers); the core does not.
#[cfg(feature = "rsa")]
extern crate alloc;
pub mod agent;
#[cfg(feature = "broker")]
pub mod broker;
pub mod config;
pub mod connection;
pub mod guard;
pub mod http;
pub mod identity;
pub mod imds;
pub mod jose;
pub mod limits;
pub mod net;
pub mod oidc;
pub mod pem;
pub mod query;
pub mod secret;

pub mod token;

pub use agent::Agent;
