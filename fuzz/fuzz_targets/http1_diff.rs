#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| proxyd_fuzz::http1_diff(data));
