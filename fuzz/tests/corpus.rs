//! Every file the fuzzer kept (`fuzz/corpus/<target>/`), and every input
//! that once broke something (`fuzz/regressions/<target>/`), replayed
//! through its target as an ordinary test.

use std::path::Path;

#[test]
fn every_corpus_file_passes_its_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut replayed = 0;
    for (name, target) in shoal_fuzz::TARGETS {
        let before = replayed;
        for folder in ["corpus", "regressions"] {
            let Ok(dir) = std::fs::read_dir(root.join(folder).join(name)) else {
                continue;
            };
            for entry in dir.flatten() {
                let data = std::fs::read(entry.path()).expect("corpus file");
                let result = std::panic::catch_unwind(|| target(&data));
                assert!(result.is_ok(), "{name}: {} fails", entry.path().display());
                replayed += 1;
            }
        }
        assert!(
            replayed > before,
            "fuzz/corpus/{name}/ holds nothing to replay: run scripts/fuzz 60 {name}"
        );
        // A few inputs of every target, whatever the corpus holds.
        for data in [&b""[..], b"\0", b"=\n", b"{\"instance\":{}}", &[0xff; 64]] {
            target(data);
        }
    }
    eprintln!("{replayed} corpus files replayed");
}
