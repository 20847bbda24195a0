//! The soak, short: `soak` (what `scripts/bench soak-local` runs for 30
//! minutes) for one minute — `shoal local` under steady mixed load with a
//! story-service replica killed every 10 s: no GET failed, no write lost or
//! duplicated, no process that lived through it grew by more than 16 MiB,
//! `shoal local` stopped cleanly.

use shoal_tests::{Net, bin};

#[test]
fn a_minute_of_soak_under_kills_fails_nothing_and_leaks_nothing() {
    let net = Net::new(66);
    let data = net.dir().join("data");
    let csv = net.dir().join("soak.csv");
    let out = std::process::Command::new(bin("soak"))
        .args([
            "--for",
            "60s",
            "--warm-up",
            "20s",
            "--net",
            "127.66",
            "--data",
        ])
        .arg(&data)
        .arg("--csv")
        .arg(&csv)
        .output()
        .expect("soak runs");
    let report = String::from_utf8_lossy(&out.stdout);
    eprintln!("{report}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the soak failed:\n{report}");
    // The report says what happened, not just that the soak exited 0: load
    // ran, nothing failed, and replicas were killed under it.
    let requests = report
        .lines()
        .find_map(|l| l.strip_prefix("requests: "))
        .expect("a requests line");
    let mut words = requests.split([' ', ',']).filter(|w| !w.is_empty());
    let gets: u64 = words
        .next()
        .and_then(|n| n.parse().ok())
        .expect("a GET count");
    assert!(gets > 1_000, "only {gets} GETs in a minute: {report}");
    assert!(requests.contains(", 0 failed"), "{report}");
    // `shoal local`'s own summary: "chaos report: 6 kills in 65.4 s (…)".
    let kills: u32 = report
        .lines()
        .find_map(|l| l.trim().strip_prefix("chaos report: "))
        .and_then(|l| l.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no chaos report in: {report}"));
    assert!(
        kills >= 5,
        "{kills} kills in a minute (one every 10 s): {report}"
    );
    let samples = std::fs::read_to_string(&csv).expect("samples written");
    assert!(samples.lines().count() > 30, "too few samples: {samples}");
}
