//! Fuzz the kcov-wire decoders: no panic, canonical accepts, Decoder agrees with decode_one.
#![no_main]

use kcov_wire::{decode_one, decode_payload, encode, read_frame, Decoder, FrameType, WireError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // One-shot decode: a success must re-encode to exactly the bytes it consumed.
    let one = decode_one(data);
    if let Ok((frame, used)) = &one {
        let re = encode(frame).expect("decoded frame re-encodes");
        assert_eq!(&re[..], &data[..*used]);
    }

    // Streaming decode, fed in pieces whose sizes come from the input itself.
    let mut dec = Decoder::new();
    let mut first = None;
    let mut rest = data;
    let mut step = 1usize;
    while !rest.is_empty() {
        let k = step.min(rest.len());
        dec.feed(&rest[..k]);
        rest = &rest[k..];
        step = (step * 3 + 1) % 61 + 1;
        loop {
            match dec.next_frame() {
                Ok(Some(f)) => {
                    first.get_or_insert(Ok(f));
                }
                Ok(None) => break,
                Err(e) => {
                    first.get_or_insert(Err(e));
                    break;
                }
            }
        }
    }
    let _ = dec.finish();
    match (&one, &first) {
        (Ok((f, _)), Some(Ok(g))) => assert_eq!(f, g),
        (Err(WireError::Truncated { .. }), None) => {}
        (Err(e), Some(Err(g))) => {
            assert_eq!(std::mem::discriminant(e), std::mem::discriminant(g))
        }
        (a, b) => panic!("decode_one {a:?} vs Decoder {b:?}"),
    }

    // Blocking reader over the whole input.
    let mut r = std::io::Cursor::new(data);
    while let Ok(Some(_)) = read_frame(&mut r) {}

    // Payload parser on its own (skips the checksum gate): first byte picks the type.
    if let Some((&t, payload)) = data.split_first() {
        if let Some(ft) = FrameType::from_u8(t % 8) {
            if let Ok(f) = decode_payload(ft, payload) {
                let re = encode(&f).expect("decoded payload re-encodes");
                assert_eq!(&re[kcov_wire::HEADER_LEN..], payload);
            }
        }
    }
});
