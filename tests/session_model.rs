//! The `session` fuzz target's model check as ordinary tests: the committed
//! seed corpus (`fuzz/corpus/session/`) replayed, and random input
//! sequences from proptest. The harness is the fuzz target's own file.

#[path = "../fuzz/fuzz_targets/session_model.rs"]
#[allow(dead_code)]
mod session_model;

use std::path::Path;

use proptest::prelude::*;
use session_model::Harness;

// Each action is [op, slot, arg, extra]; see `session_model::Harness::step`.
const JOIN: u8 = 0;
const LEAVE: u8 = 1;
const LOGIN: u8 = 2;
const LOGOUT: u8 = 3;
const OFFER_ID: u8 = 4;
const OFFER_NAME: u8 = 5;
const HANG_UP: u8 = 6;
const TICK: u8 = 7;
const DISCONNECT: u8 = 8;
const PINGS: u8 = 9;
const PAIR: u8 = 1;
const MESH: u8 = 0;

/// Small stories for the fuzzer to mutate, each covering a rule.
fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        (
            "pair_switch.bin",
            vec![
                JOIN, 0, 0, PAIR, JOIN, 1, 0, PAIR, OFFER_ID, 1, 0, 0, JOIN, 2, 1, PAIR, JOIN, 3,
                1, PAIR, JOIN, 0, 1, PAIR, OFFER_ID, 0, 1, 0, JOIN, 0, 2, PAIR, OFFER_ID, 1, 0, 0,
            ],
        ),
        (
            "mesh_capacity.bin",
            vec![
                JOIN, 0, 0, 4, JOIN, 1, 0, MESH, JOIN, 2, 0, MESH, JOIN, 3, 0, MESH, LEAVE, 1, 0,
                0, JOIN, 3, 0, MESH, OFFER_ID, 3, 0, 0,
            ],
        ),
        (
            "named_call.bin",
            vec![
                LOGIN, 0, 0, 0, LOGIN, 1, 1, 0, LOGIN, 2, 0, 0, OFFER_NAME, 0, 1, 0, HANG_UP, 2, 1,
                0, HANG_UP, 1, 0, 0, OFFER_NAME, 0, 1, 0, DISCONNECT, 1, 0, 0, LOGOUT, 0, 0, 0,
                LOGIN, 2, 0, 0,
            ],
        ),
        (
            "flood_then_offer.bin",
            vec![
                JOIN, 0, 0, MESH, JOIN, 1, 0, MESH, PINGS, 0, 0, 200, OFFER_ID, 0, 1, 0, TICK, 0,
                0, 15, OFFER_ID, 0, 1, 0,
            ],
        ),
        (
            "heartbeat.bin",
            vec![
                JOIN, 0, 0, MESH, JOIN, 1, 0, MESH, TICK, 0, 0, 200, TICK, 0, 0, 255, TICK, 0, 0,
                255, JOIN, 2, 0, MESH,
            ],
        ),
    ]
}

#[test]
fn seeds_pass_and_are_committed() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/session");
    for (file, data) in seeds() {
        Harness::run(&data);
        let path = dir.join(file);
        let committed = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (run with WRITE_SEEDS=1)", path.display()));
        if std::env::var_os("WRITE_SEEDS").is_some() {
            std::fs::write(&path, &data).unwrap();
        } else {
            assert_eq!(committed, data, "{file} differs from the seed in this test");
        }
    }
}

#[test]
fn the_committed_corpus_passes() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/session");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let data = std::fs::read(entry.unwrap().path()).unwrap();
        Harness::run(&data);
        n += 1;
    }
    assert!(n >= 5, "only {n} corpus files");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_input_sequences_keep_the_invariants(data in proptest::collection::vec(any::<u8>(), 0..400)) {
        Harness::run(&data);
    }
}
