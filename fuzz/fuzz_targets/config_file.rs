//! The config file, parsed and checked as at start.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| mxfed_agent::fuzzing::config(data));
