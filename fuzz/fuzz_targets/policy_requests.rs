//! Policy-service requests on one connection (and `mynetworks` values, the
//! other text the service reads).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    mxfed_agent::fuzzing::policy_requests(data);
    mxfed_agent::fuzzing::mynetworks(data);
});
