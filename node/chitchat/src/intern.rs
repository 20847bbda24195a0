//! shoal patch: what the members of a process hold in common, held once.
//!
//! Every member holds every other member's id, keys and values, and in the
//! simulator thousands of members in one process hold the same ones. A
//! [`WeakTable`] maps a key to the one shared copy while anyone holds it;
//! what no one holds any more is swept once the table has doubled since
//! the last sweep, so it stays within twice what is live. Used for strings
//! ([`intern`]), ids (`ChitchatId`) and key-values (`KeyValues::share`).

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

pub(crate) struct WeakTable<K, T: ?Sized> {
    table: HashMap<K, Weak<T>>,
    swept_at: usize,
}

impl<K: Eq + Hash, T: ?Sized> WeakTable<K, T> {
    /// The shared copy under `key`, if anyone holds it.
    pub(crate) fn get<Q>(&self, key: &Q) -> Option<Arc<T>>
    where
        K: Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        self.table.get(key).and_then(Weak::upgrade)
    }

    /// `value` is the shared copy under `key` from now on.
    pub(crate) fn insert(&mut self, key: K, value: &Arc<T>) {
        if self.table.len() >= 2 * self.swept_at.max(1024) {
            self.table.retain(|_, held| held.strong_count() > 0);
            self.swept_at = self.table.len();
        }
        self.table.insert(key, Arc::downgrade(value));
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.table.len()
    }
}

/// `f` on the table behind `lock`, made on first use. A poisoned table is
/// still a consistent one: nothing panics halfway through changing it.
pub(crate) fn with_table<K, T: ?Sized, R>(
    lock: &Mutex<Option<WeakTable<K, T>>>,
    f: impl FnOnce(&mut WeakTable<K, T>) -> R,
) -> R {
    let mut guard = lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    f(guard.get_or_insert_with(|| WeakTable {
        table: HashMap::new(),
        swept_at: 0,
    }))
}

/// How many members (cluster states) live in this process.
static MEMBERS: AtomicUsize = AtomicUsize::new(0);

/// Counts a member of this process for its life (held by its cluster
/// state).
pub(crate) struct Member(());

impl Member {
    pub(crate) fn new() -> Member {
        MEMBERS.fetch_add(1, Ordering::Relaxed);
        Member(())
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        MEMBERS.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Whether another member lives in this process to share with: in a real
/// process there is one, and sharing key-values would only cost a lock and
/// a copy per write.
pub(crate) fn members_share() -> bool {
    MEMBERS.load(Ordering::Relaxed) > 1
}

static STRINGS: Mutex<Option<WeakTable<Box<str>, str>>> = Mutex::new(None);

/// The shared copy of `s`.
pub(crate) fn intern(s: &str) -> Arc<str> {
    with_table(&STRINGS, |table| {
        table.get(s).unwrap_or_else(|| {
            let shared: Arc<str> = Arc::from(s);
            table.insert(Box::from(s), &shared);
            shared
        })
    })
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
        let kept = with_table(&STRINGS, |table| table.len());
        assert!(kept < 4_000, "{kept} strings kept after sweeps");
        assert!(Arc::ptr_eq(&a, &intern("interned-test-key")));
    }
}
