//! Fuzz target: the WebSocket upload chunk frame header. A frame that parses has exactly the
//! header that encoding its upload id and offset gives; anything else is a typed error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use outlast_protocol::upload::{DATA_HEADER_LEN, encode_data_header, parse_data_header};

fuzz_target!(|data: &[u8]| {
    if let Ok((upload, offset)) = parse_data_header(data) {
        let header = encode_data_header(upload, offset);
        assert_eq!(&data[..DATA_HEADER_LEN], &header[..]);
    }
});
