#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| proxyd_fuzz::static_path(data));
