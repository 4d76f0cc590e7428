#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| proxyd_fuzz::config_loader(data));
