//! Reply parser on arbitrary bytes, and dot-stuffing round-tripped through the DATA scanner.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    smtp_proto::fuzzing::client_side(data);
});
