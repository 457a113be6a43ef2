//! The limiter against simulated endpoints: each step is one round trip in which the
//! endpoint receives `limit` attempts at once, with a seeded random source.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;

/// An endpoint's answer to one attempt: `(in_flight, index in the round trip, rng)`.
type Answer<'a> = &'a dyn Fn(usize, usize, &mut StdRng) -> Signal;

struct Sim {
    aimd: Aimd,
    now: Millis,
    rng: StdRng,
    changes: Vec<LimitChange>,
}

impl Sim {
    fn new(config: AimdConfig) -> Self {
        Self {
            aimd: Aimd::new(config),
            now: 1,
            rng: StdRng::seed_from_u64(7),
            changes: Vec::new(),
        }
    }

    /// One round trip; `answer(in_flight, index, rng)` is each attempt's signal.
    fn step(&mut self, answer: Answer) {
        let n = self.aimd.limit();
        let started = self.now;
        let mut signals: Vec<(Millis, Signal)> = (0..n)
            .map(|i| {
                let signal = answer(n, i, &mut self.rng);
                let ms = match signal {
                    Signal::Answered { latency } | Signal::Error { latency } => latency.as_millis() as Millis,
                    Signal::Overload(_) => 0,
                };
                (ms.max(1), signal)
            })
            .collect();
        signals.sort_by_key(|s| s.0);
        for &(ms, signal) in &signals {
            if let Some(change) = self.aimd.on_signal(signal, sent(started, n), n, started + ms) {
                self.changes.push(change);
            }
        }
        self.now = started + signals.last().map_or(1, |s| s.0);
    }

    fn run(&mut self, steps: usize, answer: Answer) -> Vec<usize> {
        (0..steps)
            .map(|_| {
                self.step(answer);
                self.aimd.limit()
            })
            .collect()
    }

    /// Every change but raises, for failure messages.
    fn verdicts(&self) -> Vec<String> {
        self.changes
            .iter()
            .filter(|c| c.reason != ChangeReason::Raise)
            .map(|c| format!("{}: {} -> {} {}", c.at, c.from, c.to, c.reason.explain()))
            .collect()
    }

    /// Whether the endpoint's usual errors were learned, by a trial or at low concurrency.
    fn learned_usual_errors(&self) -> bool {
        self.changes.iter().any(|c| {
            matches!(
                c.reason,
                ChangeReason::ErrorsNotOverload { .. }
                    | ChangeReason::Probed {
                        usual_errors: Some(_),
                        ..
                    }
            )
        })
    }

    fn count(&self, code: &str) -> usize {
        self.changes.iter().filter(|c| c.reason.code() == code).count()
    }
}

fn ms(value: f64) -> Duration {
    Duration::from_secs_f64(value.max(0.0) / 1000.0)
}

/// An attempt sent at `at` with `in_flight` attempts in flight.
fn sent(at: Millis, in_flight: usize) -> Sent {
    Sent { at, in_flight }
}

fn answered(value: f64) -> Signal {
    Signal::Answered { latency: ms(value) }
}

fn exponential(rng: &mut StdRng, mean: f64) -> f64 {
    -mean * (1.0 - rng.random::<f64>()).ln()
}

fn mean(values: &[usize]) -> f64 {
    values.iter().sum::<usize>() as f64 / values.len() as f64
}

#[test]
fn a_healthy_endpoint_is_used_up_to_the_max_within_a_few_dozen_round_trips() {
    let mut sim = Sim::new(AimdConfig::default());
    let limits = sim.run(40, &|_, _, _| answered(10.0));
    assert_eq!(*limits.last().unwrap(), 256, "{limits:?}");
    assert!(sim.changes.iter().all(|c| !c.reason.is_cut()), "{:#?}", sim.verdicts());
}

#[test]
fn an_idle_endpoint_does_not_inflate_its_limit() {
    let mut aimd = Aimd::new(AimdConfig::default());
    for now in 0..1000 {
        aimd.on_signal(answered(5.0), sent(now, 1), 1, now);
    }
    assert_eq!(aimd.limit(), 4, "one call at a time proves nothing about capacity");
}

#[test]
fn a_burst_of_429_cuts_once_per_round_trip() {
    let mut sim = Sim::new(AimdConfig::default());
    sim.run(40, &|_, _, _| answered(5.0));
    let (mut aimd, mut now) = (sim.aimd, sim.now);
    let before_cut = now;
    now += 10;
    let change = aimd
        .on_signal(
            Signal::Overload(OverloadCause::TooManyRequests),
            sent(before_cut, 256),
            256,
            now,
        )
        .unwrap();
    assert_eq!((change.from, change.to), (256, 230));
    assert_eq!(change.reason.explain(), "cut: 429 Too Many Requests (overload)");
    for _ in 0..50 {
        now += 1;
        let again = aimd.on_signal(
            Signal::Overload(OverloadCause::Timeout),
            sent(before_cut, 230),
            230,
            now,
        );
        assert_eq!(again, None, "sent before the cut");
    }
    let change = aimd
        .on_signal(Signal::Overload(OverloadCause::Refused), sent(now, 230), 230, now + 10)
        .unwrap();
    assert_eq!(change.to, 207, "230.4 * 0.9, from an attempt sent after the cut");
}

#[test]
fn random_application_errors_do_not_hold_the_limit_down() {
    for rate in [0.2, 0.5] {
        for latency in [1.0, 20.0] {
            let mut sim = Sim::new(AimdConfig::default());
            let limits = sim.run(300, &|_, _, rng| {
                if rng.random::<f64>() < rate {
                    Signal::Error { latency: ms(latency) }
                } else {
                    answered(latency)
                }
            });
            let label = format!("{rate} errors at {latency} ms: {:#?}", sim.verdicts());
            assert!(mean(&limits[100..]) > 240.0, "{label}");
            assert!(sim.learned_usual_errors(), "{label}");
            assert!(sim.count("error_trial") <= 2, "a futile trial is not repeated: {label}");
            assert_eq!(sim.count("latency") + sim.count("overload"), 0, "{label}");
        }
    }
}

#[test]
fn known_application_errors_count_for_growth_like_successes() {
    // Half the answers are the application's errors, already at low concurrency: the
    // probe that measures the reference says so, and the limit climbs as fast as on a
    // healthy endpoint (seeded: 26 round trips both; 41 when a trial cut had to show it,
    // 48 when errors did not count for growth).
    let climb = |rate: f64| {
        let mut sim = Sim::new(AimdConfig::default());
        let limits = sim.run(200, &|_, _, rng| {
            if rng.random::<f64>() < rate {
                Signal::Error { latency: ms(20.0) }
            } else {
                answered(20.0)
            }
        });
        (limits.iter().position(|&l| l >= 256).expect("reaches the max"), sim)
    };
    let (healthy, _) = climb(0.0);
    let (failing, sim) = climb(0.5);
    assert!(
        failing <= healthy + 4,
        "256 after {failing} round trips with 50% errors, {healthy} without: {:#?}",
        sim.verdicts()
    );
}

#[test]
fn errors_that_grow_with_concurrency_are_overload() {
    // A server that answers 503 (without Retry-After) to what is above 16 in flight.
    let mut sim = Sim::new(AimdConfig::default());
    let limits = sim.run(600, &|_, index, _| {
        if index >= 16 {
            Signal::Error { latency: ms(1.0) }
        } else {
            answered(10.0)
        }
    });
    let settled = mean(&limits[300..]);
    assert!(
        (12.0..=20.0).contains(&settled),
        "mean limit {settled}: {:#?}",
        sim.verdicts()
    );
    assert!(sim.count("errors_were_overload") >= 1, "{:#?}", sim.verdicts());
}

#[test]
fn jittery_latency_that_does_not_depend_on_load_does_not_cut() {
    // 2 ms + an exponential tail of mean 10 ms; and a heavy tail with p99 = 20x the median.
    let tails: [Answer; 2] = [&|_, _, rng| answered(2.0 + exponential(rng, 10.0)), &|_, _, rng| {
        let z = (-2.0 * (1.0 - rng.random::<f64>()).ln()).sqrt() * (std::f64::consts::TAU * rng.random::<f64>()).cos();
        answered(5.0 * (1.288 * z).exp())
    }];
    for answer in tails {
        let mut sim = Sim::new(AimdConfig::default());
        let mut limits = sim.run(400, answer);
        limits.sort_unstable();
        assert_eq!(
            limits[200],
            256,
            "the limit stays at the max but for probes: {:#?}",
            sim.verdicts()
        );
        assert!(sim.count("latency") <= 1, "{:#?}", sim.verdicts());
    }
}

#[test]
fn latency_rising_with_concurrency_settles_near_the_knee() {
    // latency = 10 ms + 0.25 ms per attempt in flight: 2x the unloaded latency at 42.
    let mut sim = Sim::new(AimdConfig::default());
    let limits = sim.run(1500, &|n, _, _| answered(10.0 + 0.25 * n as f64));
    let settled = mean(&limits[500..]);
    let unloaded = 10.25;
    let latency_at = |n: f64| 10.0 + 0.25 * n;
    let mut settled_limits = limits[500..].to_vec();
    settled_limits.sort_unstable();
    let p99 = settled_limits[settled_limits.len() * 99 / 100] as f64;
    assert!(
        latency_at(p99) <= 2.0 * unloaded,
        "p99 limit {p99}: {:#?}",
        sim.verdicts()
    );
    let throughput = |n: f64| n / latency_at(n);
    assert!(
        throughput(settled) >= 0.9 * throughput(42.0),
        "mean limit {settled}: {:.0}% of the knee's throughput: {:#?}",
        100.0 * throughput(settled) / throughput(42.0),
        sim.verdicts()
    );
    assert!(sim.count("latency") >= 1);
}

#[test]
fn after_a_latency_cut_the_limit_does_not_grow_while_latency_stays_high() {
    // The endpoint saturates from one moment on, with the limit at the max: on the way
    // down every round stays over the threshold, so nothing may be added back between
    // the cuts.
    let mut sim = Sim::new(AimdConfig::default());
    sim.run(40, &|_, _, _| answered(10.0));
    assert_eq!(sim.aimd.limit(), 256);
    sim.run(200, &|n, _, _| answered(10.0 + 0.25 * n as f64));
    let cuts: Vec<usize> = (0..sim.changes.len())
        .filter(|&i| ["latency", "knee"].contains(&sim.changes[i].reason.code()))
        .collect();
    assert!(cuts.len() >= 2, "{:#?}", sim.verdicts());
    let raises_between = sim.changes[cuts[0]..cuts[1]]
        .iter()
        .filter(|c| c.reason == ChangeReason::Raise)
        .count();
    assert_eq!(
        raises_between,
        0,
        "raised between the first two latency cuts: {:#?}",
        &sim.changes[cuts[0]..=cuts[1]]
    );
}

#[test]
fn the_reference_latency_is_measured_again_at_low_concurrency() {
    let mut sim = Sim::new(AimdConfig::default());
    sim.run(40, &|_, _, _| answered(10.0));
    assert_eq!(sim.aimd.limit(), 256);
    let probes = sim.count("probe");
    // 30 s of 10 ms round trips later, a probe holds the limit at 2 for one round.
    let limits = sim.run(3100, &|_, _, _| answered(10.0));
    assert!(limits.contains(&2), "a probe ran");
    assert!(sim.count("probe") > probes && sim.count("probed") > probes);
    assert_eq!(*limits.last().unwrap(), 256);
    let probed = sim.changes.iter().rev().find(|c| c.reason.code() == "probed").unwrap();
    assert_eq!((probed.from, probed.to), (2, 256));
}

#[test]
fn a_latency_cut_that_did_not_lower_latency_is_not_repeated() {
    let mut sim = Sim::new(AimdConfig::default());
    sim.run(40, &|_, _, _| answered(10.0));
    // The service becomes four times slower at every concurrency (a slow dependency).
    let limits = sim.run(300, &|_, _, _| answered(40.0));
    // Cuts stop once they have taken a fifth off (two of the gentlest, at 0.85 each).
    assert!(sim.count("latency") <= 2, "{:#?}", sim.verdicts());
    let futile = sim
        .changes
        .iter()
        .any(|c| c.reason == ChangeReason::Probe { after_futile_cut: true });
    assert!(futile, "{:#?}", sim.verdicts());
    assert_eq!(*limits.last().unwrap(), 256, "{:#?}", sim.verdicts());
}

#[test]
fn latency_that_cuts_do_not_lower_is_a_plateau_not_overload() {
    // A CPU-bound service sharing its host: 1 ms alone, 4 ms with jitter as soon as a few
    // requests run at once (at any concurrency up to 40), then rising 0.3 ms per request.
    let latency = |n: usize, rng: &mut StdRng| {
        let loaded = 4.0 + 0.3 * n.saturating_sub(40) as f64;
        answered(if n <= 2 { 1.0 } else { loaded + exponential(rng, 0.3) })
    };
    let mut sim = Sim::new(AimdConfig::default());
    let limits = sim.run(3000, &|n, _, rng| latency(n, rng));
    let plateaus: Vec<f64> = sim
        .changes
        .iter()
        .filter_map(|c| match c.reason {
            ChangeReason::Probed { plateau_ms, .. } => plateau_ms,
            _ => None,
        })
        .collect();
    assert!(
        plateaus.len() == 1 && (4.0..6.0).contains(&plateaus[0]),
        "one plateau, not ratcheted up: {plateaus:?}: {:#?}",
        sim.verdicts()
    );
    // Held near where latency starts to rise again (the threshold, 1.25x the plateau, is
    // crossed at 40 + 4 in flight), not cut towards the reference over and over.
    let settled = mean(&limits[1000..]);
    assert!(
        (30.0..=60.0).contains(&settled),
        "mean limit {settled}: {:#?}",
        sim.verdicts()
    );
    let futile = sim
        .changes
        .iter()
        .filter(|c| c.reason == ChangeReason::Probe { after_futile_cut: true })
        .count();
    assert!(futile <= 2, "{futile} futile descents: {:#?}", sim.verdicts());
}

#[test]
fn a_plateau_is_forgotten_once_latency_rises_with_concurrency_again() {
    // First a service sharing its host: 10.5 ms alone, a plateau of 40 ms under any load.
    // Then its neighbour leaves and it saturates like any other: 10 ms + 0.25 ms per
    // request in flight (2x the unloaded latency at 42).
    let mut sim = Sim::new(AimdConfig::default());
    sim.run(1000, &|n, _, rng| {
        answered(if n <= 2 { 10.5 } else { 40.0 + exponential(rng, 1.0) })
    });
    assert!(sim.changes.iter().any(|c| matches!(
        c.reason,
        ChangeReason::Probed {
            plateau_ms: Some(_),
            ..
        }
    )));
    let saturating = |n: usize| 10.0 + 0.25 * n as f64;
    let start = sim.now;
    let limits = sim.run(8000, &|n, _, _| answered(saturating(n)));
    assert!(sim.now - start > 60_000, "the run covers two probe intervals");
    // After the plateau is forgotten (at the first probe 30 s after it was found), the
    // limit settles where latency is under 2x the unloaded (10.5 ms at 2 in flight).
    let mut settled = limits[limits.len() - 2000..].to_vec();
    settled.sort_unstable();
    let p99 = settled[settled.len() * 99 / 100];
    assert!(
        saturating(p99) <= 2.0 * saturating(2),
        "p99 limit {p99}, latency {} ms: {:#?}",
        saturating(p99),
        &sim.verdicts()[sim.verdicts().len().saturating_sub(12)..]
    );
}

#[test]
fn capacity_that_returns_is_used_again_within_seconds() {
    let mut sim = Sim::new(AimdConfig::default());
    let capacity_8 = |_: usize, index: usize, _: &mut StdRng| {
        if index >= 8 {
            Signal::Overload(OverloadCause::TooManyRequests)
        } else {
            answered(20.0)
        }
    };
    let limits = sim.run(300, &capacity_8);
    let settled = mean(&limits[100..]);
    assert!((6.0..=9.5).contains(&settled), "mean limit {settled}");
    // 100 round trips of 20 ms: two seconds.
    let limits = sim.run(100, &|_, _, _| answered(20.0));
    assert_eq!(*limits.last().unwrap(), 256, "{limits:?}");
}

#[test]
fn never_below_min_and_a_fixed_limit_never_moves() {
    let mut aimd = Aimd::new(AimdConfig {
        min: 2,
        ..AimdConfig::default()
    });
    for n in 0..100 {
        aimd.on_signal(Signal::Overload(OverloadCause::Timeout), sent(n * 10, 1), 1, n * 10 + 5);
    }
    assert_eq!(aimd.limit(), 2);
    let mut fixed = Aimd::new(AimdConfig {
        adaptive: false,
        ..AimdConfig::default()
    });
    assert_eq!(fixed.limit(), 256);
    assert_eq!(
        fixed.on_signal(Signal::Overload(OverloadCause::Timeout), sent(0, 256), 256, 0),
        None
    );
    assert_eq!(fixed.limit(), 256);
}

#[test]
fn a_flat_latency_doubles_the_limit_per_round_trip_once_rounds_are_one_round_trip() {
    let mut sim = Sim::new(AimdConfig::default());
    let limits = sim.run(60, &|_, _, _| answered(20.0));
    let at = |limit: usize| limits.iter().position(|&l| l >= limit).expect("reached");
    // x1.3 per round trip below 32 (a round spans several round trips there), then x2.
    assert!(
        at(256) - at(32) <= 4,
        "32 -> 256 in {} round trips: {limits:?}",
        at(256) - at(32)
    );
    assert!(
        at(32) - at(8) >= 4,
        "8 -> 32 in {} round trips: {limits:?}",
        at(32) - at(8)
    );
}

#[test]
fn slow_start_stops_at_the_knee_instead_of_overshooting_it() {
    // latency = base + k x in flight: 2x the unloaded latency at base / k in flight.
    for (base, k) in [(50.0, 1.0), (10.0, 0.25), (100.0, 0.5)] {
        let mut sim = Sim::new(AimdConfig::default());
        let limits = sim.run(300, &|n, _, _| answered(base + k * n as f64));
        let highest = *limits.iter().max().unwrap() as f64;
        let unloaded = base + k;
        assert!(
            base + k * highest <= 2.0 * unloaded,
            "base {base} ms, {k} ms per attempt: the limit reached {highest}: {:?} {:#?}",
            &limits[..40],
            sim.verdicts()
        );
        assert_eq!(sim.count("knee"), 1, "{:#?}", sim.verdicts());
    }
}

#[test]
fn jitter_that_does_not_depend_on_load_does_not_end_slow_start_early() {
    // 2 ms + an exponential tail of mean 10 ms: a 16-answer median is off by a quarter
    // now and then, and so is the reference.
    for seed in 0..50 {
        let mut sim = Sim::new(AimdConfig::default());
        sim.rng = StdRng::seed_from_u64(seed);
        let limits = sim.run(150, &|_, _, rng| answered(2.0 + exponential(rng, 10.0)));
        let reached = limits.iter().position(|&l| l == 256);
        assert!(
            sim.count("knee") == 0 && reached.is_some_and(|at| at <= 100),
            "seed {seed}: the max after {reached:?} round trips: {limits:?} {:#?}",
            sim.verdicts()
        );
    }
}
