//! A one-line invite token as `mxfed join` reads it.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mxfed_proto::token::InviteToken;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(t) = s.parse::<InviteToken>() {
            let _ = t.is_expired(0);
            let _ = t.to_string();
        }
    }
});
