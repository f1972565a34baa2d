//! The wire format, defined once for the server, the browser client and the simulator.
//!
//! # Layout
//!
//! * [`frame`]: binary tensor frames (fixed header + little-endian f32), with every limit a
//!   named constant checked before anything is allocated.
//!
//! Control messages (hello, train instructions, results, …) join this crate with the server.

// No unwrap outside tests: bad input gets an error, not a panic.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod frame;

/// Version of the wire protocol; a peer speaking another version is refused with a typed error.
pub const PROTOCOL_VERSION: u16 = 1;
