//! A list transfer as a friend sends it: length-prefixed frames, a header
//! and then chunks (domain lists, their changes, recipient lists), fed to
//! the receivers that check bounds, order and the signature.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mxfed_proto::codec::{check_frame, decode_message, MAX_FRAME};
use mxfed_proto::list::{ChangesReceiver, ListReceiver};
use mxfed_proto::msg::Response;
use mxfed_proto::recipients::RecipientReceiver;

const NOW: u64 = 1_800_000_000;

fuzz_target!(|data: &[u8]| {
    let mut frames = Vec::new();
    let mut rest = data;
    // Each frame: a 4-byte length, then that many bytes.
    while let Ok(Some(len)) = check_frame(rest, MAX_FRAME) {
        let Some(body) = rest.get(4..4 + len) else { break };
        if let Ok(r) = decode_message::<Response>(body) {
            frames.push(r);
        }
        rest = &rest[4 + len..];
    }
    let mut frames = frames.into_iter();
    match frames.next() {
        Some(Response::ListHeader(h)) => {
            let signer = h.signer;
            let Ok(mut r) = ListReceiver::start(h, signer, None, NOW) else { return };
            for f in frames {
                if let Response::ListChunk(c) = f {
                    if r.push(c).is_err() {
                        return;
                    }
                }
            }
            if r.is_complete() {
                let _ = r.finish();
            }
        }
        Some(Response::ChangesHeader(h)) => {
            let (signer, base) = (h.list.signer, h.base);
            let Ok(mut r) = ChangesReceiver::start(h, signer, base, NOW) else { return };
            for f in frames {
                if let Response::ListChanges(c) = f {
                    if r.push(c).is_err() {
                        return;
                    }
                }
            }
            if r.is_complete() {
                let _ = r.finish_encoded(&Default::default());
            }
        }
        Some(Response::RecipientHeader(h)) => {
            let signer = h.list.signer;
            let Ok(mut r) = RecipientReceiver::start(h, signer, None, NOW) else { return };
            for f in frames {
                if let Response::RecipientChunk(c) = f {
                    if r.push(c).is_err() {
                        return;
                    }
                }
            }
            if r.is_complete() {
                let _ = r.finish();
            }
        }
        _ => {}
    }
});
