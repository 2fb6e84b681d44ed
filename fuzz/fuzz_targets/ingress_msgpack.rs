//! The ingress decoder on MessagePack (declared, and sniffed without a Content-Type).
#![no_main]

use libfuzzer_sys::fuzz_target;
use paystream_fuzz::{SUBJECTS, check_ingress};

fuzz_target!(|data: &[u8]| {
    let Some((&pick, payload)) = data.split_first() else {
        return;
    };
    let subject = SUBJECTS[usize::from(pick) % SUBJECTS.len()];
    let content_type = (pick & 0x80 == 0).then_some("application/msgpack");
    check_ingress(subject, content_type, payload);
});
