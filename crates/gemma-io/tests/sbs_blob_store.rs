//! gemma.cpp's `io/blob_store_test.cc` expectations (offsets 256 and 512, round trips of 1..=512 random-sized
//! blobs), the exact V2 layout, the older V1 layout, and writing through a temp file.

use gemma_io::sbs::blob_store::{
    encode_blob_store, encode_blob_store_v1, BlobFileWriter, BlobLayout, BlobStore, BLOB_ALIGN, BLOB_MAGIC, END_ALIGN,
};
use gemma_io::sbs::SbsError;

/// xorshift64*, so the test data is reproducible.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

#[test]
#[allow(clippy::approx_constant)] // gemma.cpp's test data, not meant as pi and e
fn read_write_matches_gemma_cpp_test() {
    let floats: [f32; 4] = [-1.0, 0.0, 3.14159, 2.71828];
    let float_bytes: Vec<u8> = floats.iter().flat_map(|f| f.to_le_bytes()).collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("blob_store_test.sbs");
    let mut w = BlobFileWriter::create(&path).unwrap();
    w.add("0123456789abcdef", b"DATA\0").unwrap(); // 16 characters: the longest key
    w.add("q", &float_bytes).unwrap();
    w.finish().unwrap();
    // Only the final file remains (the temp file was renamed).
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

    let store = BlobStore::open(&path).unwrap();
    assert_eq!(store.layout(), BlobLayout::V2);
    assert_eq!(store.keys(), ["0123456789abcdef", "q"]);
    let a = store.range("0123456789abcdef").unwrap();
    assert_eq!((a.offset, a.bytes), (256, 5));
    let b = store.range("q").unwrap();
    assert_eq!((b.offset, b.bytes), (a.offset + 256, 16));
    assert_eq!(store.blob("0123456789abcdef").unwrap(), b"DATA\0");
    assert_eq!(store.blob("q").unwrap(), &float_bytes[..]);
    assert_eq!(store.blob("missing"), None);
    assert_eq!(store.file_bytes(), END_ALIGN);

    // Zero copy: the blob is a view into the mapped file, at its offset.
    let whole = store.file_data();
    let blob = store.blob("q").unwrap();
    assert_eq!(blob.as_ptr() as usize - whole.as_ptr() as usize, 512);
}

#[test]
fn exact_v2_layout() {
    let bytes = encode_blob_store([("a", &b"xyz"[..]), ("bb", &[7u8; 300][..])]).unwrap();
    assert_eq!(bytes.len() as u64, END_ALIGN);
    // Placeholder header: magic, zero blobs, 65536, then zeros to 256.
    assert_eq!(&bytes[0..4], &BLOB_MAGIC.to_le_bytes());
    assert_eq!(&bytes[4..8], &[0, 0, 0, 0]);
    assert_eq!(&bytes[8..16], &END_ALIGN.to_le_bytes());
    assert!(bytes[16..256].iter().all(|&b| b == 0));
    // Blobs at 256 and 512, zero-padded.
    assert_eq!(&bytes[256..259], b"xyz");
    assert!(bytes[259..512].iter().all(|&b| b == 0));
    assert_eq!(&bytes[512..812], &[7u8; 300][..]);
    assert!(bytes[812..1024].iter().all(|&b| b == 0));
    // Directory (2 keys, 2 ranges) and header at the very end.
    let n = bytes.len();
    let tail = &bytes[n - 16 - 64..];
    assert_eq!(&tail[0..16], b"a\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0");
    assert_eq!(&tail[16..32], b"bb\0\0\0\0\0\0\0\0\0\0\0\0\0\0");
    assert_eq!(u64::from_le_bytes(tail[32..40].try_into().unwrap()), 256);
    assert_eq!(u64::from_le_bytes(tail[40..48].try_into().unwrap()), 3);
    assert_eq!(u64::from_le_bytes(tail[48..56].try_into().unwrap()), 512);
    assert_eq!(u64::from_le_bytes(tail[56..64].try_into().unwrap()), 300);
    assert_eq!(&tail[64..68], &BLOB_MAGIC.to_le_bytes());
    assert_eq!(u32::from_le_bytes(tail[68..72].try_into().unwrap()), 2);
    assert_eq!(u64::from_le_bytes(tail[72..80].try_into().unwrap()), END_ALIGN);
    // Everything between the last blob and the directory is zero.
    assert!(bytes[1024..n - 80].iter().all(|&b| b == 0));
}

#[test]
fn any_number_of_random_sized_blobs() {
    let mut rng = Rng(0x1234_5678_9abc_def1);
    for num_blobs in 1..=512usize {
        let blobs: Vec<Vec<u8>> = (0..num_blobs)
            .map(|i| {
                // Never empty, sometimes a single byte.
                let len = (rng.next() & 8191) as usize + 1;
                let mut b = vec![0u8; len];
                for (j, x) in b.iter_mut().enumerate() {
                    *x = (j as u64 ^ rng.next()) as u8;
                }
                b[0] = (i & 255) as u8;
                b
            })
            .collect();
        let keys: Vec<String> = (0..num_blobs).map(|i| i.to_string()).collect();
        let bytes = encode_blob_store(keys.iter().map(String::as_str).zip(blobs.iter().map(Vec::as_slice))).unwrap();
        assert_eq!(bytes.len() as u64 % END_ALIGN, 0);
        let store = BlobStore::from_bytes(bytes, "mem.sbs").unwrap();
        assert_eq!(store.keys(), &keys[..]);
        for (i, blob) in blobs.iter().enumerate() {
            let r = store.range(&keys[i]).unwrap();
            assert_eq!(r.offset % BLOB_ALIGN, 0);
            assert_eq!(r.bytes as usize, blob.len());
            assert_eq!(store.blob(&keys[i]).unwrap(), &blob[..], "{num_blobs} blobs, blob {i}");
        }
    }
}

#[test]
fn reads_the_older_v1_layout() {
    let blobs = [("first", &b"hello"[..]), ("second", &[9u8; 1000][..]), ("third", &[1u8][..])];
    for pad_end in [false, true] {
        let bytes = encode_blob_store_v1(blobs, pad_end).unwrap();
        // V1 starts with the real header: magic and the blob count.
        assert_eq!(&bytes[0..4], &BLOB_MAGIC.to_le_bytes());
        assert_eq!(u32::from_le_bytes(bytes[4..8].try_into().unwrap()), 3);
        let store = BlobStore::from_bytes(bytes, "v1.sbs").unwrap();
        assert_eq!(store.layout(), BlobLayout::V1);
        assert_eq!(store.range("first").unwrap().offset, 256, "16 + 3 * 32 bytes of header round up to 256");
        for (k, d) in blobs {
            assert_eq!(store.blob(k).unwrap(), d);
        }
    }
}

#[test]
fn writer_rejects_what_gemma_cpp_would() {
    assert!(matches!(encode_blob_store([("", &b"x"[..])]), Err(SbsError::InvalidWrite { .. })));
    assert!(matches!(encode_blob_store([("0123456789abcdefg", &b"x"[..])]), Err(SbsError::InvalidWrite { .. })));
    assert!(matches!(encode_blob_store([("a", &b""[..])]), Err(SbsError::InvalidWrite { .. })));
    assert!(matches!(encode_blob_store([("a", &b"x"[..]), ("a", &b"y"[..])]), Err(SbsError::InvalidWrite { .. })));
    assert!(matches!(encode_blob_store([]), Err(SbsError::InvalidWrite { .. })));
}

#[test]
fn failed_write_leaves_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("never.sbs");
    {
        let mut w = BlobFileWriter::create(&path).unwrap();
        w.add("a", b"data").unwrap();
        // Dropped without finish: the temp file goes away, nothing at `path`.
    }
    assert!(!path.exists());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}
