//! Memory given back after a burst of connections.
//!
//! Each client connection costs hyper ~16 KiB of buffers, and 1,000 of them
//! leave tens of MiB in the workers' malloc arenas once they close: glibc
//! returns an arena's memory to the system only from its top, so the pages
//! freed in between stay in the process (`scripts/bench gateway` measured
//! 56 MiB held after a 1,000-connection run, where haproxy holds 27). Once
//! the client connections open have fallen to half their peak or less,
//! `malloc_trim` hands every free page back.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tracing::debug;

/// Fewer connections than this at the peak: nothing worth trimming.
const MIN_PEAK: usize = 64;

/// How often the count of open connections is looked at.
const EVERY: Duration = Duration::from_secs(1);

/// Watches the client connections open (`max` minus the permits left in
/// `connections`) and trims the heap after each fall from a peak.
pub fn spawn(connections: Arc<Semaphore>, max: usize) {
    tokio::spawn(async move {
        let mut peak = 0;
        let mut tick = tokio::time::interval(EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let open = max.saturating_sub(connections.available_permits());
            peak = peak.max(open);
            if should_trim(peak, open) {
                debug!(peak, open, "client connections fell: returning free memory");
                peak = open;
                let _ = tokio::task::spawn_blocking(trim).await;
            }
        }
    });
}

/// After a peak of at least [`MIN_PEAK`] connections, once at most half
/// of them are still open.
fn should_trim(peak: usize, open: usize) -> bool {
    peak >= MIN_PEAK && open <= peak / 2
}

/// Returns the heap's free pages to the system.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn trim() {
    // SAFETY: `malloc_trim` takes no pointer and only releases memory that
    // is free; glibc makes it safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Other allocators return memory on their own terms.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_once_a_real_peak_has_halved() {
        assert!(!should_trim(10, 0), "a small peak is not worth it");
        assert!(!should_trim(1000, 600), "still most of the peak");
        assert!(should_trim(1000, 500));
        assert!(should_trim(64, 0));
    }
}
