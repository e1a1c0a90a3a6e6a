//! Arbitrary bytes through the line framing, the IRC parser, tag unescaping and a session
//! driven by a simulated engine; `exercise` asserts the protocol's invariants.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    twitchy_engine_fuzz::protocol::fuzzing::exercise(data);
});
