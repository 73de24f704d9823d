//! Feeds arbitrary bytes to the wire protocol's decoder: it must return an error or a message,
//! never panic, and never allocate more than the frame limit. Run with
//! `cargo +nightly fuzz run protocol` from this directory. (The same property runs on every
//! `cargo test` as a proptest in `runtime/src/net/proto.rs`.)
#![no_main]

use ferry::protocol::{Request, Response, decode_body, decode_frame, encode_frame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // As a whole frame (length prefix included) and as a bare body.
    let _ = decode_frame::<Request>(data);
    let _ = decode_frame::<Response>(data);
    if let Ok(req) = decode_body::<Request>(data) {
        // Whatever decodes re-encodes and decodes to the same message.
        let again: Request = decode_frame(&encode_frame(&req)).expect("round trip");
        assert_eq!(again, req);
    }
    let _ = decode_body::<Response>(data);
});
