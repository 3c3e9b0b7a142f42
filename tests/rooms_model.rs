//! The `rooms` fuzz target's model check as ordinary tests: the committed
//! seed corpus (`fuzz/corpus/rooms/`) replayed, and random action
//! sequences from proptest. The harness is the fuzz target's own file.

#[path = "../fuzz/fuzz_targets/rooms_model.rs"]
#[allow(dead_code)]
mod rooms_model;

use std::path::Path;

use proptest::prelude::*;
use rooms_model::Harness;

/// Seeds written by [`seeds`]: each a small story the fuzzer can mutate.
fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    // Each action is [op, peer, room/name, extra]; see `rooms_model::actions`.
    const JOIN: u8 = 0;
    const LEAVE: u8 = 1;
    const DISCONNECT: u8 = 2;
    const LOGIN: u8 = 3;
    const LOGOUT: u8 = 4;
    const ROUTE: u8 = 5;
    const PAIR: u8 = 1;
    const NO_CREATE: u8 = 0x80;
    vec![
        (
            "pair_call.bin",
            vec![
                JOIN, 0, 0, PAIR, JOIN, 1, 0, PAIR, ROUTE, 0, 0, 1, JOIN, 2, 0, PAIR, LEAVE, 0, 0,
                0, ROUTE, 1, 0, 0,
            ],
        ),
        (
            "mesh_fill.bin",
            // Capacity 3 (byte 3 >> 1 = 4 → Some(3)), four joiners.
            vec![
                JOIN, 0, 1, 8, JOIN, 1, 1, 8, JOIN, 2, 1, 8, JOIN, 3, 1, 8, DISCONNECT, 1, 0, 0,
                JOIN, 3, 1, 0,
            ],
        ),
        (
            "names.bin",
            vec![
                LOGIN, 0, 0, 0, LOGIN, 1, 0, 0, LOGOUT, 1, 0, 0, LOGOUT, 0, 0, 0, LOGIN, 1, 0, 0,
                DISCONNECT, 1, 0, 0,
            ],
        ),
        (
            "no_create.bin",
            vec![
                JOIN, 0, 2, NO_CREATE, JOIN, 0, 2, 0, JOIN, 1, 2, NO_CREATE, LEAVE, 0, 2, 0, LEAVE,
                1, 2, 0, JOIN, 2, 2, NO_CREATE,
            ],
        ),
        (
            "mode_and_capacity.bin",
            vec![
                JOIN, 0, 3, 0, JOIN, 1, 3, PAIR, JOIN, 1, 3, 2, JOIN, 2, 3, 12, JOIN, 0, 3, 0,
            ],
        ),
    ]
}

/// The corpus directory; with `UPDATE_FUZZ_CORPUS` set, the seeds are
/// (re)written first, whichever test asks first.
fn corpus_dir() -> std::path::PathBuf {
    static WRITE_SEEDS: std::sync::Once = std::sync::Once::new();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/rooms");
    WRITE_SEEDS.call_once(|| {
        if std::env::var_os("UPDATE_FUZZ_CORPUS").is_some() {
            std::fs::create_dir_all(&dir).unwrap();
            for (name, data) in seeds() {
                std::fs::write(dir.join(name), data).unwrap();
            }
        }
    });
    dir
}

#[test]
fn seeds_are_committed() {
    let dir = corpus_dir();
    for (name, data) in seeds() {
        let path = dir.join(name);
        assert_eq!(
            std::fs::read(&path).unwrap_or_default(),
            data,
            "{name} differs; run UPDATE_FUZZ_CORPUS=1 cargo test --test rooms_model"
        );
    }
}

#[test]
fn rooms_corpus() {
    let mut files: Vec<_> = std::fs::read_dir(corpus_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(files.len() >= seeds().len());
    for path in files {
        let data = std::fs::read(&path).unwrap();
        let result = std::panic::catch_unwind(|| Harness::run(&data));
        assert!(result.is_ok(), "{} fails the model check", path.display());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_action_sequences_keep_the_invariants(data in proptest::collection::vec(any::<u8>(), 0..800)) {
        Harness::run(&data);
    }
}
