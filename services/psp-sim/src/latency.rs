//! How long each `/v1` answer is held: a fixed delay, or a log-normal one with a given median and
//! 99th percentile, the long tail of a real PSP (most answers near the median, one in a hundred
//! several times slower).

use rand::Rng;

use crate::config::LATENCY_MS_MAX;

/// The standard normal distribution's 99th percentile: ln(p99 / median) = sigma × Z_P99.
const Z_P99: f64 = 2.3263;

/// The latency added to each answer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Latency {
    /// Every answer waits exactly this long; draws nothing from the dice.
    Fixed { ms: u64 },
    /// ln(latency) is normal with mean ln(`median_ms`) and standard deviation `sigma`.
    LogNormal { median_ms: f64, sigma: f64 },
}

impl Latency {
    /// Fixed `median_ms` without a p99; log-normal with that median and p99 otherwise. The
    /// configuration is validated first: a p99 comes with a median of at least 1 ms below it.
    pub(crate) fn new(median_ms: u64, p99_ms: Option<u64>) -> Self {
        match p99_ms {
            None => Self::Fixed { ms: median_ms },
            Some(p99_ms) => {
                assert!(
                    median_ms >= 1 && p99_ms >= median_ms,
                    "validated: 1 <= median ({median_ms}) <= p99 ({p99_ms})"
                );
                // Millisecond counts of a validated configuration are far below 2^52: exact.
                let (median, p99) = (median_ms as f64, p99_ms as f64);
                Self::LogNormal {
                    median_ms: median,
                    sigma: (p99 / median).ln() / Z_P99,
                }
            }
        }
    }

    /// One request's latency in whole milliseconds, at most [`LATENCY_MS_MAX`].
    pub(crate) fn sample_ms(&self, rng: &mut impl Rng) -> u64 {
        match *self {
            Self::Fixed { ms } => ms,
            Self::LogNormal { median_ms, sigma } => {
                let ms = (median_ms * (sigma * standard_normal(rng)).exp()).round();
                // The float-to-int cast saturates; the cap keeps a far tail draw within bounds.
                (ms as u64).min(LATENCY_MS_MAX)
            }
        }
    }
}

/// A standard normal draw by the Box–Muller transform (two uniform draws).
fn standard_normal(rng: &mut impl Rng) -> f64 {
    // `random` is in [0, 1); 1 - u is in (0, 1], so the logarithm is finite.
    let u1 = 1.0 - rng.random::<f64>();
    let u2 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::{ProptestConfig, any, prop_assert, proptest};
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    /// The `q`-quantile (0–1) of sorted samples, nearest rank.
    fn quantile(sorted: &[u64], q: f64) -> f64 {
        let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
        sorted[rank - 1] as f64
    }

    /// Whether `observed` is within `relative` of `expected`, give or take the 1 ms of rounding
    /// to whole milliseconds.
    fn near(observed: f64, expected: f64, relative: f64) -> bool {
        (observed - expected).abs() <= expected * relative + 1.0
    }

    #[test]
    fn fixed_latency_draws_nothing() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut untouched = rng.clone();
        assert_eq!(Latency::new(300, None).sample_ms(&mut rng), 300);
        assert_eq!(rng.random::<u64>(), untouched.random::<u64>());
    }

    #[test]
    fn equal_median_and_p99_is_fixed_in_effect() {
        let latency = Latency::new(250, Some(250));
        let mut rng = StdRng::seed_from_u64(3);
        assert!((0..1_000).all(|_| latency.sample_ms(&mut rng) == 250));
    }

    #[test]
    fn draws_are_capped() {
        let latency = Latency::new(LATENCY_MS_MAX / 2, Some(LATENCY_MS_MAX));
        let mut rng = StdRng::seed_from_u64(5);
        let max = (0..10_000).map(|_| latency.sample_ms(&mut rng)).max();
        assert_eq!(max, Some(LATENCY_MS_MAX), "the 1% above p99 hit the cap");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// Over 40,000 draws the sample median and p99 land on the configured ones: the
        /// standard error is under 1% for the median and under 3% for the p99 at the widest
        /// spread tried, so 5% and 10% leave room without hiding a wrong sigma.
        #[test]
        fn sampled_median_and_p99_match_the_configuration(
            median_ms in 1u64..=2_000,
            spread in 1.0f64..=20.0,
            seed in any::<u64>(),
        ) {
            let p99_ms = ((median_ms as f64 * spread) as u64).min(LATENCY_MS_MAX);
            let latency = Latency::new(median_ms, Some(p99_ms));
            let mut rng = StdRng::seed_from_u64(seed);
            let mut draws: Vec<u64> = (0..40_000).map(|_| latency.sample_ms(&mut rng)).collect();
            draws.sort_unstable();
            let (median, p99) = (quantile(&draws, 0.5), quantile(&draws, 0.99));
            prop_assert!(near(median, median_ms as f64, 0.05), "median {median} for {median_ms}");
            prop_assert!(near(p99, p99_ms as f64, 0.10), "p99 {p99} for {p99_ms}");
        }
    }
}
