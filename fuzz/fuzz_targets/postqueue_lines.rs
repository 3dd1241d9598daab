//! `postqueue -j` output (one JSON object per line), tallied per friend.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| mxfed_agent::fuzzing::postqueue_lines(data));
