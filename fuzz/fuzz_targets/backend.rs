#![no_main]
//! The server → client scanner over arbitrary bytes fed in two parts.
use libfuzzer_sys::fuzz_target;
use pgsluice::protocol::backend::{Action, Scanner};

fuzz_target!(|data: &[u8]| {
    let cut = data.first().map_or(0, |b| *b as usize).min(data.len());
    let mut s = Scanner::default();
    let mut buf = data[..cut].to_vec();
    for part in [&data[cut..], &[][..]] {
        match s.scan(&buf, |_| Action::Forward) {
            Ok(r) => {
                buf.drain(..r.forward);
            }
            Err(_) => return,
        }
        buf.extend_from_slice(part);
    }
});
