#![no_main]
//! The server side of SCRAM-SHA-256 fed arbitrary client messages.
use libfuzzer_sys::fuzz_target;
use pgsluice::auth::scram::{ServerExchange, Verifier};

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|b| *b == 0).unwrap_or(data.len());
    let (first, last) = data.split_at(split);
    let verifier = Verifier::from_password("pencil", b"salt", 1);
    if let Ok((exchange, _)) = ServerExchange::start(verifier, first, "nonce") {
        let _ = exchange.finish(last);
    }
});
