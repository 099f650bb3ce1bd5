#![no_main]
//! Client → pooler messages: framing and parsing of arbitrary bytes.
use libfuzzer_sys::fuzz_target;
use pgsluice::protocol::frontend;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok(Some(h)) = frontend::header(rest, 1 << 20) {
        if rest.len() < h.len {
            break;
        }
        let _ = frontend::parse(h.tag, &rest[5..h.len]);
        let _ = frontend::sasl_initial_response(&rest[5..h.len]);
        let _ = frontend::password(&rest[5..h.len]);
        rest = &rest[h.len..];
    }
});
