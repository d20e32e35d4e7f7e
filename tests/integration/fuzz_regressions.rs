//! The fuzz targets' kept inputs, replayed on stable Rust: the seeds
//! (`fuzz/seeds/<target>/`) and every finding (`fuzz/regressions/<target>/`)
//! go through the same entry points the fuzzers drive, plus a few thousand
//! deterministic mutations of the seeds. A panic fails the test.

use std::path::Path;

type Target = fn(&[u8]);

const TARGETS: [(&str, Target); 3] = [
    ("mqtt_decode", certmq::fuzzing::mqtt_decode),
    ("device_cert", certmq::fuzzing::device_cert),
    ("admin_request", certmq::fuzzing::admin_request),
];

fn inputs(target: &str) -> Vec<(String, Vec<u8>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut all = Vec::new();
    for kind in ["seeds", "regressions"] {
        let Ok(dir) = std::fs::read_dir(root.join(kind).join(target)) else {
            continue;
        };
        for entry in dir.flatten() {
            let path = entry.path();
            if path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            {
                continue;
            }
            all.push((path.display().to_string(), std::fs::read(&path).unwrap()));
        }
    }
    all
}

#[test]
fn kept_fuzz_inputs_do_not_panic() {
    for (target, run) in TARGETS {
        let inputs = inputs(target);
        assert!(!inputs.is_empty(), "{target}: no seeds");
        for (name, data) in &inputs {
            let result = std::panic::catch_unwind(|| run(data));
            assert!(result.is_ok(), "{target}: {name} panicked");
        }
    }
}

#[test]
fn mutated_seeds_do_not_panic() {
    // xorshift: the same mutations every run.
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for (target, run) in TARGETS {
        for (name, seed) in inputs(target) {
            for round in 0..300 {
                let mut data = seed.clone();
                let edits = 1 + next() % 4;
                for _ in 0..edits {
                    if data.is_empty() {
                        data.push(next() as u8);
                        continue;
                    }
                    let at = (next() as usize) % data.len();
                    match next() % 4 {
                        0 => data[at] ^= 1 << (next() % 8),
                        1 => data[at] = next() as u8,
                        2 => data.truncate(at),
                        _ => data.insert(at, next() as u8),
                    }
                }
                let result = std::panic::catch_unwind(|| run(&data));
                assert!(
                    result.is_ok(),
                    "{target}: mutation {round} of {name} panicked: {data:02x?}"
                );
            }
        }
    }
}
