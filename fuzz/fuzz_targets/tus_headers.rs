//! Fuzz target: tus request headers (creation and PATCH rules, Upload-Metadata, Upload-Concat,
//! Upload-Checksum, lengths and offsets) from arbitrary text. Input: lines `name: value`.
//! Nothing may panic; parsed metadata encodes and parses back to the same pairs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use outlast_protocol::tus::{self, exchange};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let pairs: Vec<(&str, &str)> = text
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim(), v.trim()))
        .collect();
    let limits = exchange::Limits {
        max_size: 1 << 30,
        max_chunk_bytes: 8 << 20,
        target_chunk_ms: 4000,
    };
    let _ = exchange::parse_creation(pairs.as_slice(), &limits);
    let _ = exchange::parse_patch(pairs.as_slice(), &limits);
    for (name, value) in &pairs {
        let _ = tus::parse_concat(value);
        let _ = tus::parse_checksum(value);
        let _ = tus::parse_u64("Upload-Offset", value);
        let _ = tus::parse_creation_length(Some(value), None);
        let _ = tus::parse_sha256_hex(value);
        if name.eq_ignore_ascii_case("upload-metadata")
            && let Ok(meta) = tus::parse_metadata(value)
        {
            let again = tus::parse_metadata(&meta.encode()).expect("encoded metadata parses");
            assert_eq!(
                again.encode(),
                meta.encode(),
                "metadata round trip changed it"
            );
        }
    }
});
