//! The statistics of the benchmark, the stress test and their reports: mean and standard
//! deviation, median, percentile, and the ratio of two engines' means with its 95% interval.
//! The mean, standard deviation, median and Student's t quantile are `statrs`'; the
//! engines' `auto` takes its median from `statrs` too.

#![forbid(unsafe_code)]

use serde::Serialize;
use statrs::distribution::{ContinuousCDF, StudentsT};
use statrs::statistics::{Data, Median as _, Statistics as _};

/// Mean and sample standard deviation (`n - 1`; 0 for a single value). `(NaN, 0)` for none.
pub fn mean_sd(v: &[f64]) -> (f64, f64) {
    let sd = if v.len() > 1 { v.std_dev() } else { 0.0 };
    (v.mean(), sd)
}

/// The median (the mean of the middle two for an even count); 0 for none.
pub fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    Data::new(v.to_vec()).median()
}

/// The `p` quantile (0..=1) of sorted values, nearest rank; 0 for none.
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// The 97.5% quantile of the standard normal distribution.
const Z975: f64 = 1.959_963_985;

/// The 97.5% quantile of Student's t with `df` degrees of freedom (at least 1; from 10⁵ on,
/// where t is the normal distribution within 10⁻⁵, the normal quantile: statrs' numerical
/// inversion does not converge for very large `df`).
pub fn t975(df: f64) -> f64 {
    if df.is_nan() || df >= 1e5 {
        return Z975;
    }
    StudentsT::new(0.0, 1.0, df.max(1.0))
        .map(|t| t.inverse_cdf(0.975))
        .unwrap_or(Z975)
}

/// One engine's mean throughput divided by another's, with an approximate 95% interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Ratio {
    /// The ratio of the two means.
    pub ratio: f64,
    /// The 95% interval, `[lo, hi]`; `None` with fewer than two runs on a side.
    pub interval: Option<[f64; 2]>,
}

impl Ratio {
    /// `mean(a) / mean(b)` for two sets of independent runs, with the 95% interval that
    /// their spread gives: the delta method on the ratio's logarithm (whose variance is
    /// about `cv_a²/n_a + cv_b²/n_b`, cv the coefficient of variation of one run) and
    /// Student's t with Welch's degrees of freedom. On the development machine a run's
    /// GB/s moves by ~10%, independently from run to run and from engine to engine, so
    /// the interval says how far a ratio from runs of this length can be trusted. `None`
    /// if either side is empty or its mean is not positive.
    pub fn of_runs(a: &[f64], b: &[f64]) -> Option<Ratio> {
        if a.is_empty() || b.is_empty() {
            return None;
        }
        let (ma, sa) = mean_sd(a);
        let (mb, sb) = mean_sd(b);
        if !(ma > 0.0 && mb > 0.0) {
            return None;
        }
        let ratio = ma / mb;
        let interval = (a.len() > 1 && b.len() > 1).then(|| {
            let (na, nb) = (a.len() as f64, b.len() as f64);
            let (va, vb) = ((sa / ma).powi(2) / na, (sb / mb).powi(2) / nb);
            let var = va + vb;
            if var == 0.0 {
                return [ratio, ratio];
            }
            let df = var * var / (va * va / (na - 1.0) + vb * vb / (nb - 1.0));
            let half = t975(df) * var.sqrt();
            [ratio * (-half).exp(), ratio * half.exp()]
        });
        Some(Ratio { ratio, interval })
    }

    /// `0.97 [0.92, 1.02]`, or the ratio alone without an interval.
    pub fn text(&self) -> String {
        match self.interval {
            Some([lo, hi]) => format!("{:.2} [{lo:.2}, {hi:.2}]", self.ratio),
            None => format!("{:.2}", self.ratio),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn centre_and_spread() {
        assert_eq!(mean_sd(&[1.0, 3.0]), (2.0, 2f64.sqrt()));
        assert_eq!(mean_sd(&[5.0]), (5.0, 0.0));
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
        assert_eq!(percentile(&[1, 2, 3, 4, 5], 0.5), 3);
        assert_eq!(percentile(&[1, 2, 3, 4, 5], 1.0), 5);
        assert_eq!(percentile(&[], 0.9), 0);
    }

    #[test]
    fn t_quantiles_match_the_tables() {
        // Student's t, 97.5%: df 1, 2, 3, 5, 10, 38, 120, and the normal limit.
        for (df, t) in [
            (1.0, 12.706),
            (2.0, 4.303),
            (3.0, 3.182),
            (5.0, 2.571),
            (10.0, 2.228),
            (38.0, 2.024),
            (120.0, 1.980),
        ] {
            assert!((t975(df) - t).abs() < 0.002, "df {df}: {} vs {t}", t975(df));
        }
        assert!((t975(1e9) - 1.960).abs() < 1e-3);
        assert!((t975(99_999.0) - t975(1e5)).abs() < 1e-4);
        assert_eq!(t975(f64::NAN), Z975);
    }

    #[test]
    fn ratio_intervals_cover_the_true_ratio_about_95_percent_of_the_time() {
        // Runs with 10% noise (as on the development machine), 20 a side, true ratio 0.97.
        let mut rng = crate::rng::Rng::new(0x2545_f491_4f6c_dd1d);
        let mut normal = move || {
            let (u, v) = (rng.next_f64().max(1e-12), rng.next_f64());
            (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
        };
        let trials = 4000;
        let (mut covered, mut width) = (0, 0.0);
        for _ in 0..trials {
            let a: Vec<f64> = (0..20).map(|_| 9.7 * (1.0 + 0.1 * normal())).collect();
            let b: Vec<f64> = (0..20).map(|_| 10.0 * (1.0 + 0.1 * normal())).collect();
            let r = Ratio::of_runs(&a, &b).unwrap();
            let [lo, hi] = r.interval.unwrap();
            assert!(lo < r.ratio && r.ratio < hi);
            covered += usize::from(lo <= 0.97 && 0.97 <= hi);
            width += (hi - lo) / trials as f64;
        }
        let coverage = covered as f64 / trials as f64;
        assert!((0.93..=0.97).contains(&coverage), "coverage {coverage}");
        // 2 × 2.02 × 0.97 × √(2 × 0.01 / 20): about ±0.062.
        assert!((0.11..0.14).contains(&width), "mean width {width}");
    }

    #[test]
    fn ratio_edge_cases() {
        let r = Ratio::of_runs(&[2.0, 2.0], &[4.0, 4.0]).unwrap();
        assert_eq!((r.ratio, r.interval), (0.5, Some([0.5, 0.5])));
        let r = Ratio::of_runs(&[3.0], &[2.0, 4.0]).unwrap();
        assert_eq!((r.ratio, r.interval), (1.0, None));
        assert_eq!(r.text(), "1.00");
        assert!(Ratio::of_runs(&[], &[1.0]).is_none());
        assert!(Ratio::of_runs(&[1.0, 2.0], &[0.0, 0.0]).is_none());
        let r = Ratio::of_runs(&[9.0, 11.0], &[10.0, 10.0]).unwrap();
        // One degree of freedom: a wide interval.
        let [lo, hi] = r.interval.unwrap();
        assert!(lo < 0.5 && hi > 2.0, "{lo} {hi}");
    }
}
