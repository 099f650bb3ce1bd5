#![no_main]
//! StartupMessage, SSLRequest, GSSENCRequest and CancelRequest from arbitrary bytes.
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use pgsluice::protocol::startup;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    while let Ok(Some(_)) = startup::decode(&mut buf) {}
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = startup::parse_options(text);
    }
});
