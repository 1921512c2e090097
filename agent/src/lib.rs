//! # imds-agent — an Azure-compatible IMDS managed-identity token endpoint
//!
//! The core is sans-IO and allocation-free (`no_std` without the `std` feature): the same
//! code answers in the host daemon (binary `imds-agent`, std sockets) and in the unikernel
//! image (`imds-unikernel`, smoltcp on virtio-net). Data flow of one request:
//!
//! 1. a driver moves bytes between its socket and a [`connection::Connection`];
//! 2. the connection frames the request ([`http`]) and asks the router ([`imds::handle`]);
//! 3. the router checks the request ([`query`], [`guard`]), selects the identity
//!    ([`identity`]) and takes a token from the [`Agent`]'s [`token::TokenSource`]: the cache,
//!    the issuer (ES256 JWTs, [`jose`]) or, with the cargo feature `broker`, a fetch from an
//!    OAuth2 authority (`broker`: TLS 1.3 tasks the drivers poll);
//! 4. every error is mapped to the wire in one table ([`imds::wire`]).
//!
//! Besides tokens the router answers `/metadata/attested/document` and
//! `/metadata/scheduledevents` from [`metadata`] (a CMS-signed identity document, configured
//! maintenance events played out in time).
//!
//! The configuration document ([`config`], with [`pem`] and [`secret`]) is parsed once at
//! start; capacities are constants in [`limits`]; the unikernel's network loop is [`net`].
//! Module dependencies point one way (`cargo xtask test` checks there is no cycle).
#![cfg_attr(not(feature = "std"), no_std)]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

// Only the `rsa` feature allocates (the rsa crate's big integers); the core does not.
#[cfg(feature = "rsa")]
extern crate alloc;
pub mod agent;
#[cfg(feature = "broker")]
pub mod broker;
#[cfg(feature = "std")]
pub mod challenge;
pub mod config;
pub mod connection;
pub mod fields;
pub mod guard;
#[cfg(feature = "std")]
pub mod hosts;
pub mod http;
pub mod identity;
pub mod imds;
pub mod jose;
pub mod limits;
pub mod metadata;
pub mod net;
pub mod oidc;
pub mod pem;
pub mod query;
pub mod secret;

pub mod token;

pub use agent::Agent;
