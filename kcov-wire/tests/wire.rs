//! Round trips, golden bytes, truncation, corruption and limit checks.

mod common;

use std::io::Cursor;

use common::{fix_checksum, raw_frame, samples};
use kcov_wire::*;

fn enc(f: &Frame) -> Vec<u8> {
    encode(f).expect("sample encodes")
}

#[test]
fn round_trip_every_frame_type() {
    let mut seen = std::collections::HashSet::new();
    for f in samples() {
        seen.insert(f.frame_type());
        let bytes = enc(&f);
        let (back, used) = decode_one(&bytes).unwrap();
        assert_eq!(back, f);
        assert_eq!(used, bytes.len());
        // Re-encoding is byte-identical (canonical encoding).
        assert_eq!(enc(&back), bytes);
    }
    for t in 1..=6u8 {
        assert!(
            seen.contains(&FrameType::from_u8(t).unwrap()),
            "type {t} not sampled"
        );
    }
}

#[test]
fn round_trip_stream_through_decoder_and_reader() {
    let frames = samples();
    let mut stream = Vec::new();
    for f in &frames {
        let n = encode_into(f, &mut stream).unwrap();
        assert!(n >= HEADER_LEN);
    }
    // Decoder, fed in pieces of every size from 1 to 17 bytes.
    for piece in 1..=17 {
        let mut dec = Decoder::new();
        let mut got = Vec::new();
        for p in stream.chunks(piece) {
            dec.feed(p);
            while let Some(f) = dec.next_frame().unwrap() {
                got.push(f);
            }
        }
        dec.finish().unwrap();
        assert_eq!(got, frames, "piece size {piece}");
        assert_eq!(dec.frames_decoded(), frames.len() as u64);
        assert_eq!(dec.buffered(), 0);
    }
    // Blocking reader.
    let mut r = Cursor::new(&stream);
    let mut got = Vec::new();
    while let Some(f) = read_frame(&mut r).unwrap() {
        got.push(f);
    }
    assert_eq!(got, frames);
    // write_frame produces the same bytes.
    let mut w = Vec::new();
    for f in &frames {
        write_frame(&mut w, f).unwrap();
    }
    assert_eq!(w, stream);
    // decode_one walks the concatenation.
    let mut off = 0;
    for f in &frames {
        let (back, used) = decode_one(&stream[off..]).unwrap();
        assert_eq!(&back, f);
        off += used;
    }
    assert_eq!(off, stream.len());
}

#[test]
fn golden_bytes_pin_the_layout() {
    let done = enc(&Frame::Done(Done { status: -1 }));
    assert_eq!(
        hex(&done),
        "4b43565701000600040000002524e224ffffffff",
        "Done{{-1}}: KCVW, v1, type 6, flags 0, len 4, crc32 0x24e22425, payload"
    );
    let chunk = enc(&Frame::CoverageChunk(CoverageChunk {
        workload: "w".into(),
        source: CoverageSource::Remote,
        mode: KcovMode::Pc,
        seq: 7,
        overflow: true,
        words: vec![0xffff_ffff_8100_0000, 0xffff_ffff_8100_0010],
    }));
    assert_eq!(
        hex(&chunk),
        "4b43565701000400200000007f226110\
         0100000077\
         000001\
         0700000002000000\
         00000081ffffffff10000081ffffffff"
    );
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn truncated_at_every_offset() {
    for f in samples() {
        let bytes = enc(&f);
        for k in 0..bytes.len() {
            let part = &bytes[..k];
            match decode_one(part) {
                Err(WireError::Truncated { needed, available }) => {
                    assert_eq!(available, k);
                    let expect = if k < HEADER_LEN {
                        HEADER_LEN
                    } else {
                        bytes.len()
                    };
                    assert_eq!(needed, expect);
                }
                other => panic!("{f:?} cut at {k}: {other:?}"),
            }
            let mut dec = Decoder::new();
            dec.feed(part);
            assert_eq!(dec.next_frame(), Ok(None));
            if k == 0 {
                assert_eq!(dec.finish(), Ok(()));
                assert_eq!(dec.bytes_wanted(), 0);
                assert!(read_frame(&mut Cursor::new(part)).unwrap().is_none());
            } else {
                assert!(matches!(dec.finish(), Err(WireError::Truncated { .. })));
                assert_eq!(
                    dec.bytes_wanted(),
                    if k < HEADER_LEN {
                        HEADER_LEN - k
                    } else {
                        bytes.len() - k
                    }
                );
                match read_frame(&mut Cursor::new(part)) {
                    Err(StreamError::UnexpectedEof { buffered }) => assert_eq!(buffered, k),
                    other => panic!("read_frame cut at {k}: {other:?}"),
                }
            }
        }
    }
}

#[test]
fn corrupted_checksum_or_payload_is_detected() {
    for f in samples() {
        let bytes = enc(&f);
        // Any single bit flip in the checksum or the payload, and in the bytes of the header
        // that parse.
        for i in 0..bytes.len() {
            for bit in [0u8, 3, 7] {
                let mut b = bytes.clone();
                b[i] ^= 1 << bit;
                let r = decode_one(&b);
                assert!(r.is_err(), "flip byte {i} bit {bit} of {f:?} accepted");
                if i >= 12 {
                    assert!(
                        matches!(r, Err(WireError::ChecksumMismatch { .. })),
                        "byte {i}: {r:?}"
                    );
                }
            }
        }
    }
    let mut b = enc(&Frame::Done(Done { status: 1 }));
    b[12] ^= 0xff;
    let mut dec = Decoder::new();
    dec.feed(&b);
    let e = dec.next_frame().unwrap_err();
    assert!(matches!(e, WireError::ChecksumMismatch { .. }));
    // Sticky.
    dec.feed(&enc(&Frame::Done(Done { status: 1 })));
    assert_eq!(dec.next_frame(), Err(e.clone()));
    assert_eq!(dec.finish(), Err(e));
    assert!(matches!(
        read_frame(&mut Cursor::new(&b)),
        Err(StreamError::Wire(WireError::ChecksumMismatch { .. }))
    ));
}

#[test]
fn bad_magic_version_type_flags() {
    let good = enc(&Frame::Done(Done { status: 0 }));

    let mut b = good.clone();
    b[0] = b'X';
    assert_eq!(decode_one(&b), Err(WireError::BadMagic { found: *b"XCVW" }));
    // Detected from the first wrong byte on, without waiting for a full header.
    assert!(matches!(
        decode_one(&b[..1]),
        Err(WireError::BadMagic { .. })
    ));
    assert!(matches!(
        decode_one(b"KCX"),
        Err(WireError::BadMagic { .. })
    ));
    assert!(matches!(
        decode_one(b"GET / HTTP/1.1\r\n"),
        Err(WireError::BadMagic { .. })
    ));

    let mut b = good.clone();
    b[4] = 2;
    fix_checksum(&mut b);
    assert_eq!(
        decode_one(&b),
        Err(WireError::UnsupportedVersion { found: 2 })
    );
    assert_eq!(
        decode_one(&b[..6]),
        Err(WireError::UnsupportedVersion { found: 2 })
    );
    let mut b = good.clone();
    b[5] = 1;
    assert_eq!(
        decode_one(&b),
        Err(WireError::UnsupportedVersion { found: 0x0101 })
    );

    for t in [0u8, 9, 0x42, 255] {
        let mut b = good.clone();
        b[6] = t;
        fix_checksum(&mut b);
        assert_eq!(
            decode_one(&b),
            Err(WireError::UnknownFrameType { found: t })
        );
        assert_eq!(
            decode_one(&b[..7]),
            Err(WireError::UnknownFrameType { found: t })
        );
        assert!(FrameType::from_u8(t).is_none());
    }

    let mut b = good.clone();
    b[7] = 0x80;
    fix_checksum(&mut b);
    assert_eq!(
        decode_one(&b),
        Err(WireError::ReservedFlags { found: 0x80 })
    );

    let mut dec = Decoder::new();
    dec.feed(b"KCVW\x09");
    assert_eq!(dec.next_frame(), Ok(None));
    dec.feed(b"\x00");
    assert_eq!(
        dec.next_frame(),
        Err(WireError::UnsupportedVersion { found: 9 })
    );

    let mut r = Cursor::new(b"KCVQ".to_vec());
    assert!(matches!(
        read_frame(&mut r),
        Err(StreamError::Wire(WireError::BadMagic { .. }))
    ));
}

#[test]
fn oversize_payload_length_is_rejected_from_the_header_alone() {
    for len in [MAX_PAYLOAD_LEN as u32 + 1, u32::MAX, 0x8000_0000] {
        let mut h = Vec::new();
        h.extend_from_slice(&MAGIC);
        h.extend_from_slice(&VERSION.to_le_bytes());
        h.push(FrameType::CoverageChunk as u8);
        h.push(0);
        h.extend_from_slice(&len.to_le_bytes());
        h.extend_from_slice(&[0; 4]);
        let want = WireError::PayloadTooLarge {
            len: len as usize,
            max: MAX_PAYLOAD_LEN,
        };
        assert_eq!(decode_one(&h), Err(want.clone()));
        let mut dec = Decoder::new();
        dec.feed(&h);
        assert_eq!(dec.next_frame(), Err(want));
        assert!(matches!(
            read_frame(&mut Cursor::new(&h)),
            Err(StreamError::Wire(WireError::PayloadTooLarge { .. }))
        ));
    }
    // Exactly the limit is accepted as far as the header goes (then wants the payload).
    let mut h = raw_frame(FrameType::Error as u8, &[]);
    h[8..12].copy_from_slice(&(MAX_PAYLOAD_LEN as u32).to_le_bytes());
    assert!(matches!(
        decode_one(&h),
        Err(WireError::Truncated { needed, .. }) if needed == HEADER_LEN + MAX_PAYLOAD_LEN
    ));
}

fn le32(v: u32) -> [u8; 4] {
    v.to_le_bytes()
}

fn payload_err(t: FrameType, payload: &[u8]) -> WireError {
    let b = raw_frame(t as u8, payload);
    let e = decode_one(&b).unwrap_err();
    assert_eq!(decode_payload(t, payload), Err(e.clone()));
    e
}

#[test]
fn malformed_payloads_are_typed_errors() {
    use FrameType as T;
    // String length over the limit, and over the bytes present.
    let e = payload_err(T::Error, &le32(MAX_STRING_LEN as u32 + 1));
    assert!(
        matches!(
            e,
            WireError::TooLong {
                field: "message",
                ..
            }
        ),
        "{e:?}"
    );
    let e = payload_err(T::Error, &le32(u32::MAX));
    assert!(matches!(e, WireError::TooLong { .. }), "{e:?}");
    let e = payload_err(T::Error, &[&le32(10)[..], b"abc"].concat());
    assert!(
        matches!(
            e,
            WireError::PayloadTruncated {
                field: "message",
                ..
            }
        ),
        "{e:?}"
    );
    // Empty payload where fields are expected.
    for t in [
        T::Hello,
        T::WorkloadStart,
        T::WorkloadResult,
        T::CoverageChunk,
        T::Error,
        T::Done,
    ] {
        assert!(matches!(
            payload_err(t, &[]),
            WireError::PayloadTruncated { .. }
        ));
    }
    // Invalid UTF-8.
    let e = payload_err(T::WorkloadStart, &[&le32(2)[..], &[0xc3, 0x28]].concat());
    assert_eq!(
        e,
        WireError::InvalidUtf8 {
            frame: "WorkloadStart",
            field: "name"
        }
    );
    // Trailing bytes.
    let e = payload_err(T::Done, &[0, 0, 0, 0, 9]);
    assert_eq!(
        e,
        WireError::TrailingBytes {
            frame: "Done",
            count: 1
        }
    );
    // Bad enum tag in Hello.
    let mut p = Vec::new();
    p.extend_from_slice(&le32(0));
    p.extend_from_slice(&le32(0));
    p.push(2); // kcov_mode
    p.extend_from_slice(&le32(64));
    p.extend_from_slice(&0u64.to_le_bytes());
    let e = payload_err(T::Hello, &p);
    assert_eq!(
        e,
        WireError::InvalidValue {
            frame: "Hello",
            field: "kcov_mode",
            value: 2
        }
    );
    // Bad option tag in WorkloadResult.
    let mut p = Vec::new();
    p.extend_from_slice(&le32(1));
    p.push(b'n');
    p.extend_from_slice(&0i32.to_le_bytes());
    p.extend_from_slice(&0u64.to_le_bytes());
    p.extend_from_slice(&le32(0));
    p.push(3);
    assert!(matches!(
        payload_err(T::WorkloadResult, &p),
        WireError::InvalidValue {
            field: "error",
            value: 3,
            ..
        }
    ));
    // Counter count over the limit / over the bytes present (must not allocate for it).
    let mut p2 = p[..p.len() - 5].to_vec();
    p2.extend_from_slice(&le32(MAX_COUNTERS as u32 + 1));
    assert!(matches!(
        payload_err(T::WorkloadResult, &p2),
        WireError::TooLong {
            field: "counters",
            ..
        }
    ));
    let mut p3 = p[..p.len() - 5].to_vec();
    p3.extend_from_slice(&le32(MAX_COUNTERS as u32));
    assert!(matches!(
        payload_err(T::WorkloadResult, &p3),
        WireError::PayloadTruncated {
            field: "counters",
            ..
        }
    ));

    // CoverageChunk: source, mode, overflow tags; word count limits; CMP alignment.
    let chunk = |source: u8, mode: u8, overflow: u8, n: u32, words: usize| {
        let mut p = Vec::new();
        p.extend_from_slice(&le32(1));
        p.push(b'w');
        p.extend_from_slice(&[source, mode, overflow]);
        p.extend_from_slice(&le32(0));
        p.extend_from_slice(&le32(n));
        p.extend(std::iter::repeat_n(0xabu8, words * 8));
        p
    };
    assert!(decode_payload(T::CoverageChunk, &chunk(0, 0, 0, 3, 3)).is_ok());
    // Source 2 (host) is a known value: it decodes, and the collector refuses it from a guest.
    assert!(matches!(
        decode_payload(T::CoverageChunk, &chunk(2, 0, 0, 0, 0)),
        Ok(Frame::CoverageChunk(CoverageChunk {
            source: CoverageSource::Host,
            ..
        }))
    ));
    let host = Frame::CoverageChunk(CoverageChunk {
        workload: "w".into(),
        source: CoverageSource::Host,
        mode: KcovMode::Pc,
        seq: 0,
        overflow: false,
        words: vec![7],
    });
    let bytes = encode(&host).unwrap();
    assert_eq!(bytes[HEADER_LEN + 4 + 1], 2, "host source byte");
    assert_eq!(decode_one(&bytes).unwrap(), (host, bytes.len()));
    assert!(matches!(
        payload_err(T::CoverageChunk, &chunk(3, 0, 0, 0, 0)),
        WireError::InvalidValue {
            field: "source",
            ..
        }
    ));
    assert!(matches!(
        payload_err(T::CoverageChunk, &chunk(0, 9, 0, 0, 0)),
        WireError::InvalidValue { field: "mode", .. }
    ));
    assert!(matches!(
        payload_err(T::CoverageChunk, &chunk(0, 0, 2, 0, 0)),
        WireError::InvalidValue {
            field: "overflow",
            ..
        }
    ));
    assert!(matches!(
        payload_err(
            T::CoverageChunk,
            &chunk(0, 0, 0, MAX_CHUNK_WORDS as u32 + 1, 0)
        ),
        WireError::TooLong { field: "words", .. }
    ));
    assert!(matches!(
        payload_err(T::CoverageChunk, &chunk(0, 0, 0, u32::MAX, 0)),
        WireError::TooLong { field: "words", .. }
    ));
    assert!(matches!(
        payload_err(T::CoverageChunk, &chunk(0, 0, 0, 4, 3)),
        WireError::PayloadTruncated { field: "words", .. }
    ));
    assert!(matches!(
        payload_err(T::CoverageChunk, &chunk(0, 0, 0, 2, 3)),
        WireError::TrailingBytes { count: 8, .. }
    ));
    assert_eq!(
        payload_err(T::CoverageChunk, &chunk(0, 1, 0, 6, 6)),
        WireError::MisalignedEntries {
            words: 6,
            words_per_entry: 4
        }
    );
}

#[test]
fn encoder_enforces_the_limits() {
    let long = "x".repeat(MAX_STRING_LEN + 1);
    let max = "y".repeat(MAX_STRING_LEN);
    let mut out = vec![1, 2, 3];
    let e = encode_into(
        &Frame::Error(ErrorReport {
            message: long.clone(),
        }),
        &mut out,
    );
    assert!(matches!(
        e,
        Err(WireError::TooLong {
            field: "message",
            ..
        })
    ));
    assert_eq!(out, [1, 2, 3], "failed encode leaves the buffer alone");
    let f = Frame::Error(ErrorReport { message: max });
    assert_eq!(decode_one(&enc(&f)).unwrap().0, f);

    let r = WorkloadResult {
        name: "n".into(),
        status: 0,
        duration_us: 0,
        counters: vec![("c".into(), 1); MAX_COUNTERS + 1],
        error: None,
    };
    assert!(matches!(
        encode(&r.clone().into()),
        Err(WireError::TooLong {
            field: "counters",
            ..
        })
    ));
    let ok = WorkloadResult {
        counters: vec![("c".into(), 1); MAX_COUNTERS],
        ..r.clone()
    };
    assert_eq!(
        decode_one(&enc(&ok.clone().into())).unwrap().0,
        Frame::from(ok)
    );
    let bad = WorkloadResult {
        error: Some(long.clone()),
        counters: vec![],
        ..r
    };
    assert!(matches!(
        encode(&bad.into()),
        Err(WireError::TooLong { field: "error", .. })
    ));

    let c = CoverageChunk {
        workload: "w".into(),
        source: CoverageSource::Remote,
        mode: KcovMode::Cmp,
        seq: 0,
        overflow: false,
        words: vec![0; 5],
    };
    assert_eq!(
        encode(&c.clone().into()),
        Err(WireError::MisalignedEntries {
            words: 5,
            words_per_entry: 4
        })
    );
    let big = CoverageChunk {
        mode: KcovMode::Pc,
        words: vec![0; MAX_CHUNK_WORDS + 1],
        ..c.clone()
    };
    assert!(matches!(
        encode(&big.into()),
        Err(WireError::TooLong { field: "words", .. })
    ));
}

#[test]
fn largest_chunk_fits_the_payload_limit_and_round_trips() {
    let words: Vec<u64> = (0..MAX_CHUNK_WORDS as u64)
        .map(|i| 0xffff_ffff_8000_0000 + i * 4)
        .collect();
    let c = Frame::CoverageChunk(CoverageChunk {
        workload: "w".repeat(MAX_STRING_LEN),
        source: CoverageSource::Remote,
        mode: KcovMode::Pc,
        seq: 1,
        overflow: false,
        words,
    });
    let bytes = enc(&c);
    assert!(bytes.len() - HEADER_LEN <= MAX_PAYLOAD_LEN);
    let (back, used) = decode_one(&bytes).unwrap();
    assert_eq!(used, bytes.len());
    assert_eq!(back, c);
}

#[test]
fn chunking_splits_under_the_limit() {
    let words: Vec<u64> = (0..1000).collect();
    let chunks: Vec<_> = chunk_coverage(
        "w",
        CoverageSource::Remote,
        KcovMode::Pc,
        true,
        &words,
        10,
        300,
    )
    .unwrap()
    .collect();
    assert_eq!(chunks.len(), 4);
    assert_eq!(
        chunks.iter().map(|c| c.seq).collect::<Vec<_>>(),
        [10, 11, 12, 13]
    );
    assert_eq!(
        chunks.iter().map(|c| c.words.len()).collect::<Vec<_>>(),
        [300, 300, 300, 100]
    );
    assert!(chunks.iter().all(|c| c.overflow && c.workload == "w"));
    let joined: Vec<u64> = chunks.iter().flat_map(|c| c.words.clone()).collect();
    assert_eq!(joined, words);
    for c in chunks {
        let f = Frame::CoverageChunk(c);
        assert_eq!(decode_one(&enc(&f)).unwrap().0, f);
    }

    // CMP: max_words rounded down to whole entries.
    let cmp: Vec<u64> = (0..40).collect();
    let it = chunk_coverage(
        "w",
        CoverageSource::Local,
        KcovMode::Cmp,
        false,
        &cmp,
        0,
        10,
    )
    .unwrap();
    assert_eq!(it.len(), 5);
    let chunks: Vec<_> = it.collect();
    assert!(chunks
        .iter()
        .all(|c| c.words.len() == 8 && c.entry_count() == 2));
    // max_words below one entry still makes progress.
    let chunks: Vec<_> =
        chunk_coverage("w", CoverageSource::Local, KcovMode::Cmp, false, &cmp, 0, 0)
            .unwrap()
            .collect();
    assert_eq!(chunks.len(), 10);
    // Misaligned CMP input and over-long names are refused up front.
    assert!(chunk_coverage(
        "w",
        CoverageSource::Local,
        KcovMode::Cmp,
        false,
        &cmp[..7],
        0,
        10
    )
    .is_err());
    let long = "n".repeat(MAX_STRING_LEN + 1);
    assert!(chunk_coverage(
        &long,
        CoverageSource::Local,
        KcovMode::Pc,
        false,
        &cmp,
        0,
        10
    )
    .is_err());
    // Empty input: exactly one empty chunk carrying the overflow flag.
    let mut it =
        chunk_coverage("w", CoverageSource::Remote, KcovMode::Pc, true, &[], 7, 10).unwrap();
    assert_eq!(it.len(), 1);
    let c = it.next().unwrap();
    assert!(c.words.is_empty() && c.overflow && c.seq == 7);
    assert!(it.next().is_none());
    assert_eq!(it.next_seq(), 8);
    // Huge max_words is clamped to MAX_CHUNK_WORDS.
    let many = vec![1u64; MAX_CHUNK_WORDS + 5];
    let lens: Vec<_> = chunk_coverage(
        "w",
        CoverageSource::Remote,
        KcovMode::Pc,
        false,
        &many,
        0,
        usize::MAX,
    )
    .unwrap()
    .map(|c| c.words.len())
    .collect();
    assert_eq!(lens, [MAX_CHUNK_WORDS, 5]);
}

#[test]
fn decoder_compacts_and_reports_progress() {
    let f = Frame::Done(Done { status: 3 });
    let b = enc(&f);
    let mut dec = Decoder::new();
    for _ in 0..1000 {
        dec.feed(&b[..5]);
        assert_eq!(dec.next_frame(), Ok(None));
        assert_eq!(dec.bytes_wanted(), HEADER_LEN - 5);
        dec.feed(&b[5..]);
        assert_eq!(dec.next_frame(), Ok(Some(f.clone())));
        assert_eq!(dec.buffered(), 0);
    }
    // Two frames buffered, finish before reading the second one: unread bytes are reported.
    dec.feed(&b);
    dec.feed(&b);
    assert_eq!(dec.next_frame(), Ok(Some(f.clone())));
    assert!(matches!(dec.finish(), Err(WireError::TrailingBytes { .. })));
    assert_eq!(dec.next_frame(), Ok(Some(f)));
    assert_eq!(dec.finish(), Ok(()));
}

#[test]
fn errors_have_helpful_messages() {
    let e = WireError::UnsupportedVersion { found: 2 };
    assert!(e.to_string().contains("rebuild"), "{e}");
    let e = WireError::BadMagic { found: *b"HTTP" };
    assert!(e.to_string().contains("not a kcov-wire stream"), "{e}");
}
