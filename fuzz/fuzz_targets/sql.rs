#![no_main]
//! The SQL text readers over arbitrary text: the read/write classifier (and its lexer), the
//! session-effects reader with its prefilter, and the pooler's own commands.
use libfuzzer_sys::fuzz_target;
use pgsluice::router::{classify, command, effects, WriteFunctions};

fuzz_target!(|data: &[u8]| {
    let functions = WriteFunctions::new(["nextval", "app_write"]);
    // The prefilter only skips text that has nothing to find.
    let fx = effects::read(data);
    assert_eq!(effects::of(data), fx, "the prefilter skipped effects");
    let _ = command::listen(data);
    if let Ok(sql) = std::str::from_utf8(data) {
        let _ = classify::analyze(sql, &functions);
        let _ = command::parse(sql);
    }
});
