use super::*;
use shoal_node::Weight;
use shoal_node::{Health, MemberId};

fn eligible<'a>(
    exclude: &'a [SocketAddr],
    max_in_flight: u32,
    label: Option<&'a str>,
    now: Instant,
) -> Eligible<'a> {
    Eligible {
        exclude,
        max_in_flight,
        label,
        now,
    }
}

fn endpoint(i: u8) -> Arc<Endpoint> {
    weighted(i, Weight::default(), None)
}

fn weighted(i: u8, weight: Weight, label: Option<&str>) -> Arc<Endpoint> {
    Arc::new(Endpoint::new(
        Arc::new(Member {
            id: MemberId {
                node: format!("s{i}"),
                generation: 1,
            },
            service: "s".into(),
            addr: SocketAddr::from(([127, 0, 1, i], 8768)),
            health: Health::Up,
            routes: vec![],
            host: String::new(),
            version: String::new(),
            started_ms: 0,
            gossip_addr: SocketAddr::from(([127, 0, 1, i], 7950)),
            lease: None,
            policy: shoal_node::Policy {
                weight,
                label: label.map(str::to_string),
                ..Default::default()
            },
        }),
        &crate::route::sticky::StickyKeys::new(None, "shoal"),
    ))
}

fn counts(
    endpoints: &[Arc<Endpoint>],
    rounds: usize,
    latency_of: impl Fn(usize) -> Duration,
) -> Vec<usize> {
    let mut counts = vec![0; endpoints.len()];
    let mut now = Instant::now();
    let clock = Clock::default();
    for _ in 0..rounds {
        let e = pick(endpoints, &clock, eligible(&[], 100, None, now)).unwrap();
        let i = endpoints.iter().position(|x| Arc::ptr_eq(x, &e)).unwrap();
        counts[i] += 1;
        let latency = latency_of(i);
        now += latency;
        e.observe(latency, now);
    }
    counts
}

#[test]
fn equal_idle_replicas_share_sequential_requests_evenly() {
    let endpoints: Vec<_> = (1..=3).map(endpoint).collect();
    // Slightly different but equal-enough latencies, as on a real host.
    let c = counts(&endpoints, 300, |i| {
        Duration::from_micros(300 + 40 * i as u64)
    });
    for n in &c {
        assert!((70..=130).contains(n), "uneven spread {c:?}");
    }
}

#[test]
fn a_slow_replica_gets_far_fewer_requests() {
    let endpoints: Vec<_> = (1..=3).map(endpoint).collect();
    let c = counts(&endpoints, 300, |i| {
        if i == 0 {
            Duration::from_millis(200)
        } else {
            Duration::from_millis(1)
        }
    });
    assert!(
        c[0] * 10 < c[1].min(c[2]),
        "slow replica not avoided: {c:?}"
    );
}

#[test]
fn busy_instance_costs_more() {
    let endpoints: Vec<_> = (1..=2).map(endpoint).collect();
    let now = Instant::now();
    for e in &endpoints {
        e.observe(Duration::from_millis(10), now);
    }
    let _busy: Vec<_> = (0..5).map(|_| endpoints[0].start()).collect();
    for _ in 0..20 {
        let e = pick(&endpoints, &Clock::default(), eligible(&[], 100, None, now)).unwrap();
        assert_eq!(e.addr(), endpoints[1].addr());
    }
}

#[test]
fn ejected_excluded_and_saturated_instances_are_skipped() {
    let endpoints: Vec<_> = (1..=3).map(endpoint).collect();
    let now = Instant::now();
    let t = endpoints[0].eject(Duration::from_secs(30), now);
    assert_eq!(t, Duration::from_secs(30));
    let _full = endpoints[1].start();
    for _ in 0..20 {
        assert_eq!(
            pick(&endpoints, &Clock::default(), eligible(&[], 1, None, now))
                .unwrap()
                .addr(),
            endpoints[2].addr()
        );
    }
    assert!(
        pick(
            &endpoints,
            &Clock::default(),
            eligible(&[endpoints[2].addr()], 1, None, now)
        )
        .is_none()
    );
    // The second ejection lasts twice as long; both end.
    assert!(endpoints[0].is_ejected(now + Duration::from_secs(29)));
    assert!(!endpoints[0].is_ejected(now + Duration::from_secs(31)));
    assert_eq!(
        endpoints[0].eject(Duration::from_secs(30), now),
        Duration::from_secs(60)
    );
}

#[test]
fn a_slow_replica_is_probed_again_after_its_cost_decays() {
    let e = endpoint(1);
    let now = Instant::now();
    e.observe(Duration::from_millis(200), now);
    assert!(e.cost(now) > 0.19);
    assert!(e.cost(now + Duration::from_secs(60)) < 0.001);
}

#[test]
fn a_canary_at_ten_percent_gets_ten_percent() {
    let endpoints: Vec<_> = (1..=3)
        .map(endpoint)
        .chain([weighted(4, Weight::Share(100), Some("v2"))])
        .collect();
    set_weights(&endpoints);
    let c = counts(&endpoints, 10_000, |i| {
        Duration::from_micros(300 + 40 * i as u64)
    });
    assert!((900..=1100).contains(&c[3]), "canary got {c:?}");
    for n in &c[..3] {
        assert!((2800..=3200).contains(n), "{c:?}");
    }
}

#[test]
fn relative_weights_share_in_proportion() {
    let endpoints = vec![
        weighted(1, Weight::Relative(100), None),
        weighted(2, Weight::Relative(300), None),
    ];
    set_weights(&endpoints);
    let c = counts(&endpoints, 4_000, |_| Duration::from_micros(300));
    assert!((900..=1100).contains(&c[0]), "{c:?}");
}

#[test]
fn a_newcomer_is_not_flooded_while_it_catches_up() {
    let mut endpoints: Vec<_> = (1..=3).map(endpoint).collect();
    set_weights(&endpoints);
    counts(&endpoints, 3_000, |_| Duration::from_micros(300));
    endpoints.push(endpoint(4));
    set_weights(&endpoints);
    let c = counts(&endpoints, 400, |_| Duration::from_micros(300));
    assert!((70..=130).contains(&c[3]), "newcomer got {c:?}");
}

#[test]
fn a_slow_canary_is_avoided_and_a_label_is_honoured() {
    let endpoints: Vec<_> = (1..=3)
        .map(endpoint)
        .chain([weighted(4, Weight::Share(500), Some("v2"))])
        .collect();
    set_weights(&endpoints);
    let c = counts(&endpoints, 1_000, |i| {
        Duration::from_millis(if i == 3 { 200 } else { 1 })
    });
    assert!(c[3] * 20 < 1_000, "slow canary got {c:?}");
    let now = Instant::now();
    for _ in 0..20 {
        let e = pick(
            &endpoints,
            &Clock::default(),
            eligible(&[], 100, Some("v2"), now),
        )
        .unwrap();
        assert!(e.has_label("v2"));
    }
    assert!(
        pick(
            &endpoints,
            &Clock::default(),
            eligible(&[], 100, Some("v3"), now)
        )
        .is_none()
    );
}

#[test]
fn a_replica_back_from_slowness_is_not_flooded() {
    let endpoints: Vec<_> = (1..=3).map(endpoint).collect();
    set_weights(&endpoints);
    let clock = Clock::default();
    let mut now = Instant::now();
    let mut run = |n: usize, slow: bool, pause: Duration| {
        now += pause;
        let mut c = [0usize; 3];
        for _ in 0..n {
            let e = pick(&endpoints, &clock, eligible(&[], 100, None, now)).unwrap();
            let i = endpoints.iter().position(|x| Arc::ptr_eq(x, &e)).unwrap();
            c[i] += 1;
            let latency = Duration::from_micros(if slow && i == 0 { 200_000 } else { 300 });
            now += latency;
            e.observe(latency, now);
        }
        c
    };
    let avoided = run(600, true, Duration::ZERO);
    assert!(avoided[0] < 60, "{avoided:?}");
    // Its latency average decays; then it gets its share again, plus a few
    // picks of credit, not the hundreds it missed.
    let after = run(300, false, Duration::from_secs(60));
    assert!(
        (80..=125).contains(&after[0]),
        "back from slowness: {after:?}"
    );
}

#[test]
fn sticky_pins_follow_shares_whatever_the_moments_latency() {
    let endpoints: Vec<_> = (1..=3).map(endpoint).collect();
    set_weights(&endpoints);
    let clock = Clock::default();
    let now = Instant::now();
    // One replica is slow right now: P2C would avoid it; pins do not.
    endpoints[0].observe(Duration::from_millis(500), now);
    let mut c = [0usize; 3];
    for _ in 0..99 {
        let e = pick_fair(&endpoints, &clock, eligible(&[], 100, None, now)).unwrap();
        c[endpoints.iter().position(|x| Arc::ptr_eq(x, &e)).unwrap()] += 1;
    }
    assert_eq!(c, [33, 33, 33]);
    // Excluded (tried, ejected) ones are still skipped.
    let e = pick_fair(
        &endpoints,
        &clock,
        eligible(&[endpoints[0].addr()], 100, None, now),
    )
    .unwrap();
    assert!(!Arc::ptr_eq(&e, &endpoints[0]));
}
