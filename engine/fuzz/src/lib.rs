//! The engine's protocol module compiled on its own for fuzzing.
//!
//! `engine::protocol` depends on nothing but `std` and `thiserror` (it does no IO), so the fuzz
//! build includes its source directly instead of building the whole engine, with its async
//! runtime and native dependencies, under sanitizer flags.

#[path = "../../src/protocol/mod.rs"]
pub mod protocol;
