//! shoal patch: strings interned process-wide.
//!
//! Every member holds every other member's keys and values, and in the
//! simulator thousands of members in one process hold the same ones: a key
//! or a value is kept once, as an `Arc<str>` shared by every copy. Strings
//! no one holds any more are swept once the table has doubled since the
//! last sweep, so the table stays within twice what is live.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

struct Table {
    strings: HashSet<Arc<str>>,
    swept_at: usize,
}

static STRINGS: Mutex<Option<Table>> = Mutex::new(None);

/// The shared copy of `s`.
pub(crate) fn intern(s: &str) -> Arc<str> {
    // A poisoned table is still a consistent one: nothing panics halfway
    // through changing it.
    let mut guard = STRINGS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let table = guard.get_or_insert_with(|| Table {
        strings: HashSet::new(),
        swept_at: 0,
    });
    if let Some(shared) = table.strings.get(s) {
        return shared.clone();
    }
    if table.strings.len() >= 2 * table.swept_at.max(1024) {
        table.strings.retain(|s| Arc::strong_count(s) > 1);
        table.swept_at = table.strings.len();
    }
    let shared: Arc<str> = Arc::from(s);
    table.strings.insert(shared.clone());
    shared
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_strings_share_one_copy_and_dropped_ones_are_swept() {
        let a = intern("interned-test-key");
        let b = intern(&String::from("interned-test-key"));
        assert!(Arc::ptr_eq(&a, &b));
        // Enough distinct strings, dropped at once, to force sweeps.
        for i in 0..10_000 {
            let _ = intern(&format!("interned-test-{i}"));
        }
        let live = STRINGS
            .lock()
            .unwrap()
            .as_ref()
            .map_or(0, |t| t.strings.len());
        assert!(live < 4_000, "{live} strings kept after sweeps");
        assert!(Arc::ptr_eq(&a, &intern("interned-test-key")));
    }
}
