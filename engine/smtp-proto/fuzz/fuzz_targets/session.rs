//! Server session over arbitrary bytes in arbitrary splits: no panic, bounded output, the
//! driver never has to keep more than one capped command line. The same harness runs as a
//! normal test over pseudo-random inputs (`smtp_proto::fuzzing` tests).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    smtp_proto::fuzzing::session(data);
});
