//! The house's rules, checked on every run: no import cycle between files
//! or folders in any crate; the gateway's layers import only the layers
//! beneath them (ARCHITECTURE.md draws the same picture); and only the
//! simulator, fuzz targets and tests open node's gossip (`testing`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use shoal_tests::layout::{Graph, cycles};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The crates whose house the rules hold, and whether they are shipped
/// (and so may not open node's gossip). Not `node/chitchat`: our fork keeps
/// upstream's layout (every module reaches the others through `lib.rs`), so
/// that taking a new release stays re-applying its listed patches.
const CRATES: &[(&str, bool)] = &[
    ("gateway/src", true),
    ("node/src", true),
    ("node/cli/src", true),
    ("http/src", true),
    ("apps/common/src", true),
    ("apps/story-service/src", true),
    ("apps/notice-service/src", true),
    ("tests/src", false),
];

#[test]
fn no_import_cycle_between_files_or_folders() {
    let mut found = Vec::new();
    for (krate, _) in CRATES {
        let graph = Graph::of_crate(&root().join(krate)).expect("read the crate's sources");
        assert!(!graph.files.is_empty(), "{krate}: no modules read");
        for cycle in graph.module_cycles() {
            found.push(format!("{krate}: files {}", cycle.join(" ↔ ")));
        }
        for cycle in cycles(&graph.folders()) {
            found.push(format!("{krate}: folders {}", cycle.join(" ↔ ")));
        }
    }
    assert!(found.is_empty(), "import cycles:\n  {}", found.join("\n  "));
}

/// Each gateway folder and what it may import (the root, `crate`, wires
/// them all together).
const GATEWAY_LAYERS: &[(&str, &[&str])] = &[
    ("edge", &["forward", "meter", "config"]),
    (
        "report",
        &["edge", "forward", "route", "meter", "eureka", "config"],
    ),
    ("forward", &["route", "meter", "config"]),
    ("route", &["meter", "config"]),
    ("meter", &["config"]),
    ("config", &["eureka"]),
    ("eureka", &[]),
];

#[test]
fn the_gateways_layers_import_only_layers_beneath_them() {
    let graph = Graph::of_crate(&root().join("gateway/src")).expect("read the gateway");
    let allowed: BTreeMap<&str, &[&str]> = GATEWAY_LAYERS.iter().copied().collect();
    let folders = graph.folders();
    let mut wrong = Vec::new();
    for (from, tos) in &folders {
        if from == "crate" || from == "main" {
            continue;
        }
        let Some(may) = allowed.get(from.as_str()) else {
            wrong.push(format!("{from}: a folder the layer table does not know"));
            continue;
        };
        for to in tos {
            if !may.contains(&to.as_str()) {
                wrong.push(format!("{from} imports {to}"));
            }
        }
    }
    for (layer, _) in GATEWAY_LAYERS {
        assert!(
            folders.contains_key(*layer),
            "no layer {layer} in gateway/src"
        );
    }
    assert!(
        wrong.is_empty(),
        "against the layers:\n  {}",
        wrong.join("\n  ")
    );
}

#[test]
fn only_tests_open_nodes_gossip() {
    let mut wrong = Vec::new();
    for (krate, shipped) in CRATES {
        if !shipped {
            continue;
        }
        let graph = Graph::of_crate(&root().join(krate)).expect("read the crate's sources");
        for rel in graph.files.values() {
            let text = std::fs::read_to_string(root().join(krate).join(rel)).expect("read");
            if text.contains("shoal_node::testing")
                || text.contains("chitchat::") && !krate.starts_with("node/src")
            {
                wrong.push(format!("{krate}/{}", rel.display()));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "gossip opened outside node/ and the tests: {wrong:?}"
    );
}
