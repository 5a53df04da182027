//! Bounded randomized fuzzing of the decoders (what CI runs; fuzz/ has the cargo-fuzz target).
//! Properties: no panic; a successful decode re-encodes to exactly the bytes consumed; the
//! Decoder, fed in random pieces, agrees with decode_one.

mod common;

use std::io::Cursor;

use common::{fix_checksum, samples, XorShift};
use kcov_wire::*;

const ITERATIONS: usize = 100_000;

fn mutate(rng: &mut XorShift, base: &[u8]) -> Vec<u8> {
    let mut b = base.to_vec();
    let n = 1 + rng.below(4);
    for _ in 0..n {
        match rng.below(9) {
            // Flip a bit.
            0 | 1 if !b.is_empty() => {
                let i = rng.below(b.len());
                b[i] ^= 1 << rng.below(8);
            }
            // Overwrite a byte with an interesting value.
            2 if !b.is_empty() => {
                let i = rng.below(b.len());
                b[i] = [0, 1, 2, 3, 4, 0x7f, 0x80, 0xfe, 0xff][rng.below(9)];
            }
            // Overwrite a u32 (length fields) with an interesting value.
            3 if b.len() >= 4 => {
                let i = rng.below(b.len() - 3);
                let v: u32 = [
                    0,
                    1,
                    3,
                    4,
                    8,
                    0xffff,
                    0x1_0000,
                    0x10_0000,
                    0x100_0000,
                    0x100_0001,
                    u32::MAX,
                ][rng.below(11)];
                b[i..i + 4].copy_from_slice(&v.to_le_bytes());
            }
            // Truncate.
            4 => {
                let k = rng.below(b.len() + 1);
                b.truncate(k);
            }
            // Insert random bytes.
            5 => {
                let i = rng.below(b.len() + 1);
                let n = 1 + rng.below(8);
                let extra = rng.bytes(n);
                b.splice(i..i, extra);
            }
            // Delete a range.
            6 if !b.is_empty() => {
                let i = rng.below(b.len());
                let j = (i + 1 + rng.below(8)).min(b.len());
                b.drain(i..j);
            }
            // Append another sample.
            7 => {
                let s = samples();
                let f = &s[rng.below(s.len())];
                b.extend_from_slice(&encode(f).unwrap());
            }
            _ => {}
        }
    }
    // Usually make the checksum right so the payload parser is exercised.
    if rng.below(4) != 0 {
        fix_checksum(&mut b);
    }
    b
}

fn check(rng: &mut XorShift, input: &[u8], stats: &mut [usize; 3]) {
    // decode_one: never panics; success is canonical.
    let one = decode_one(input);
    match &one {
        Ok((f, used)) => {
            stats[0] += 1;
            assert!(*used <= input.len());
            let re = encode(f).expect("decoded frame re-encodes");
            assert_eq!(&re[..], &input[..*used], "non-canonical accept");
        }
        Err(WireError::Truncated { needed, available }) => {
            stats[1] += 1;
            assert_eq!(*available, input.len());
            assert!(*needed > *available);
            assert!(*needed <= HEADER_LEN + MAX_PAYLOAD_LEN);
        }
        Err(_) => stats[2] += 1,
    }
    // Decoder fed in random pieces agrees on the first frame.
    let mut dec = Decoder::new();
    let mut first = None;
    let mut rest = input;
    while !rest.is_empty() && first.is_none() {
        let k = 1 + rng.below(rest.len().min(64));
        dec.feed(&rest[..k]);
        rest = &rest[k..];
        match dec.next_frame() {
            Ok(Some(f)) => first = Some(Ok(f)),
            Ok(None) => {}
            Err(e) => first = Some(Err(e)),
        }
    }
    match (&one, first) {
        (Ok((f, _)), Some(Ok(g))) => assert_eq!(f, &g),
        (Err(WireError::Truncated { .. }), None) => {}
        (Err(e), Some(Err(g))) => {
            // The decoder may see an error earlier from a prefix (e.g. bad magic), which is the
            // same kind of error.
            assert_eq!(
                std::mem::discriminant(e),
                std::mem::discriminant(&g),
                "{e:?} vs {g:?}"
            );
        }
        (a, b) => panic!("decode_one {a:?} vs Decoder {b:?}"),
    }
    // Drain the rest of the stream through the Decoder and read_frame: no panics.
    dec.feed(rest);
    while let Ok(Some(_)) = dec.next_frame() {}
    let _ = dec.finish();
    let mut r = Cursor::new(input);
    while let Ok(Some(_)) = read_frame(&mut r) {}
    // Payload parser directly, with every frame type.
    if let Some(&t) = input.first() {
        if let Some(ft) = FrameType::from_u8(t % 8) {
            if let Ok(f) = decode_payload(ft, &input[1..]) {
                let re = encode(&f).unwrap();
                assert_eq!(&re[HEADER_LEN..], &input[1..]);
            }
        }
    }
}

#[test]
fn fuzz_mutated_and_random_inputs() {
    let seeds: Vec<Vec<u8>> = samples().iter().map(|f| encode(f).unwrap()).collect();
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let mut stats = [0usize; 3];
    for i in 0..ITERATIONS {
        let input = if i % 10 == 0 {
            // Pure random bytes, sometimes behind a valid header prefix.
            let n = rng.below(96);
            let mut b = rng.bytes(n);
            if rng.below(2) == 0 {
                let mut h = seeds[rng.below(seeds.len())][..8].to_vec();
                h.append(&mut b);
                b = h;
                fix_checksum(&mut b);
            }
            b
        } else {
            let base = &seeds[rng.below(seeds.len())];
            mutate(&mut rng, base)
        };
        check(&mut rng, &input, &mut stats);
    }
    // The mutations must reach every outcome, or the fuzz loop tests little.
    assert!(
        stats.iter().all(|&n| n > 1000),
        "ok/truncated/error = {stats:?}"
    );
}
