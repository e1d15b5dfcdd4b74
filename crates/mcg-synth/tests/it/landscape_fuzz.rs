//! Landscape files, mutated: never a panic, never an allocation beyond the input's size, and
//! every error names the file.

use mcg_synth::landscape::Landscape;
use proptest::prelude::*;

/// The built-in landscapes' JSON with a few bytes replaced, removed or numbers enlarged.
fn mutated_landscape() -> impl Strategy<Value = String> {
    let seeds = [
        mcg_synth::presets::hsp90_continuous().to_json_string(),
        mcg_synth::presets::hsp90_discrete().to_json_string(),
    ];
    (
        0..seeds.len(),
        prop::collection::vec(
            (
                0usize..4000,
                prop::sample::select(b"{}[]\",:0123456789e-.9 nx".to_vec()),
            ),
            0..8,
        ),
        0usize..5000,
    )
        .prop_map(move |(i, edits, cut)| {
            let mut b = seeds[i].clone().into_bytes();
            for (at, v) in edits {
                let at = at % b.len();
                b[at] = v;
            }
            b.truncate(cut.max(1).min(b.len()));
            String::from_utf8_lossy(&b).into_owned()
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn landscape_reader_never_panics(text in mutated_landscape()) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fuzz.json");
        std::fs::write(&path, &text).unwrap();
        let (result, largest) =
            mcg_testdata::alloc::measured(|| Landscape::from_json_file(&path));
        prop_assert!(largest <= mcg_testdata::alloc::bound(text.len()), "{largest} bytes");
        if let Err(e) = result {
            prop_assert!(e.to_string().contains("fuzz.json"), "{e}");
        }
    }
}

/// The measuring allocator is installed in this binary (else the bounds above hold vacuously).
#[test]
fn allocations_are_measured() {
    let (v, largest) = mcg_testdata::alloc::measured(|| vec![0u8; 5_000_000]);
    assert_eq!(v.len(), 5_000_000);
    assert!(largest >= 5_000_000, "{largest}");
}
