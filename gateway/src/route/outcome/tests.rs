use super::*;

fn config() -> ResilienceConfig {
    ResilienceConfig::default()
}

#[test]
fn breaker_opens_at_twenty_requests_and_half_errors() {
    let now = Instant::now();
    let b = Breaker::new(&config(), now);
    for i in 0..19 {
        let p = b.try_acquire(now).unwrap();
        b.record(p, i % 2 == 0, now);
    }
    assert_eq!(
        b.state(now),
        BreakerState::Closed,
        "19 requests are not enough"
    );
    let p = b.try_acquire(now).unwrap();
    b.record(p, false, now);
    assert_eq!(b.state(now), BreakerState::Open);
    assert!(b.try_acquire(now + Duration::from_secs(4)).is_none());
}

#[test]
fn breaker_stays_closed_below_the_error_rate() {
    let now = Instant::now();
    let b = Breaker::new(&config(), now);
    for i in 0..100 {
        let p = b.try_acquire(now).unwrap();
        b.record(p, i % 3 != 0, now);
    }
    assert_eq!(b.state(now), BreakerState::Closed);
}

#[test]
fn half_open_trial_closes_or_reopens() {
    let now = Instant::now();
    let b = Breaker::new(&config(), now);
    for _ in 0..20 {
        b.record(Permit::Normal, false, now);
    }
    let later = now + Duration::from_secs(5);
    assert_eq!(b.state(later), BreakerState::HalfOpen);
    let trial = b.try_acquire(later).unwrap();
    assert_eq!(trial, Permit::Trial);
    assert!(b.try_acquire(later).is_none(), "one trial at a time");
    b.record(trial, false, later);
    assert_eq!(b.state(later), BreakerState::Open);
    let later = later + Duration::from_secs(5);
    let trial = b.try_acquire(later).unwrap();
    b.record(trial, true, later);
    assert_eq!(b.state(later), BreakerState::Closed);
    assert_eq!(b.try_acquire(later), Some(Permit::Normal));
}

#[test]
fn old_errors_leave_the_window() {
    let now = Instant::now();
    let b = Breaker::new(&config(), now);
    for _ in 0..15 {
        b.record(Permit::Normal, false, now);
    }
    let later = now + Duration::from_secs(11);
    for _ in 0..10 {
        b.record(Permit::Normal, false, later);
    }
    assert_eq!(
        b.state(later),
        BreakerState::Closed,
        "only 10 requests in the window"
    );
}

#[tokio::test(start_paused = true)]
async fn retry_budget_allows_min_plus_ratio_over_ten_seconds() {
    use tower::retry::budget::Budget;
    let config = ResilienceConfig {
        retry_ratio: 0.2,
        retry_min_per_sec: 1,
        ..config()
    };
    let budget = retry_budget(&config);
    // 1/s over 10 s = 10 retries with no traffic at all.
    assert_eq!((0..50).filter(|_| budget.withdraw()).count(), 10);
    for _ in 0..100 {
        budget.deposit();
    }
    // 20 % of 100 requests.
    assert_eq!((0..50).filter(|_| budget.withdraw()).count(), 20);
    // The window slides: 11 s later deposits and retries are forgotten, and
    // only the 1/s floor is left.
    tokio::time::advance(Duration::from_secs(11)).await;
    assert_eq!((0..50).filter(|_| budget.withdraw()).count(), 10);
}
