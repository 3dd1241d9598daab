//! A frame from a peer, as either side of a session reads it: every
//! request and response type, within the size limits.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mxfed_proto::codec::decode_message;
use mxfed_proto::msg::{Request, Response};

fuzz_target!(|data: &[u8]| {
    let _ = decode_message::<Request>(data);
    let _ = decode_message::<Response>(data);
});
