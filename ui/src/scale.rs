//! Axis scales and ticks for the SVG charts.

/// Maps a value range onto a pixel range.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scale {
    pub domain: (f64, f64),
    pub range: (f64, f64),
}

impl Scale {
    pub fn new(domain: (f64, f64), range: (f64, f64)) -> Scale {
        let (lo, hi) = domain;
        let domain = if !(lo.is_finite() && hi.is_finite()) {
            (0.0, 1.0)
        } else if hi > lo {
            (lo, hi)
        } else {
            // One value: centre it in a domain wide enough to stay distinct in f64 (nanosecond
            // timestamps are ~1e18).
            let pad = (lo.abs() * 1e-9).max(0.5);
            (lo - pad, lo + pad)
        };
        Scale { domain, range }
    }

    pub fn map(&self, v: f64) -> f64 {
        let (d0, d1) = self.domain;
        let (r0, r1) = self.range;
        r0 + (v - d0) / (d1 - d0) * (r1 - r0)
    }
}

/// About `count` round tick values covering `lo..=hi` (1, 2 or 5 times a power of ten apart).
pub fn nice_ticks(lo: f64, hi: f64, count: usize) -> Vec<f64> {
    if !(lo.is_finite() && hi.is_finite()) || hi <= lo || count == 0 {
        return if lo.is_finite() { vec![lo] } else { Vec::new() };
    }
    let raw = (hi - lo) / count as f64;
    let power = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * power)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * power);
    let first = (lo / step).ceil() * step;
    let mut ticks = Vec::new();
    let mut t = first;
    while t <= hi + step * 1e-9 && ticks.len() <= count * 2 + 2 {
        ticks.push(if t.abs() < step * 1e-9 { 0.0 } else { t });
        t += step;
    }
    ticks
}

/// Time ticks on round wall-clock steps (1s ... 1d) for a range in unix nanoseconds.
pub fn time_ticks(lo_ns: i64, hi_ns: i64, count: usize) -> Vec<i64> {
    if hi_ns <= lo_ns || count == 0 {
        return vec![lo_ns];
    }
    const STEPS_S: [i64; 16] = [
        1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21_600, 86_400,
    ];
    let span_s = (hi_ns - lo_ns) as f64 / 1e9;
    let step_s = STEPS_S
        .iter()
        .copied()
        .find(|s| span_s / *s as f64 <= count as f64)
        .unwrap_or(86_400 * ((span_s / count as f64 / 86_400.0).ceil() as i64).max(1));
    let step = step_s * 1_000_000_000;
    let mut t = lo_ns.div_euclid(step) * step;
    if t < lo_ns {
        t += step;
    }
    let mut out = Vec::new();
    while t <= hi_ns && out.len() <= count * 2 {
        out.push(t);
        t += step;
    }
    out
}

/// Upper end of a y axis that starts at 0: the data's maximum with a little headroom.
pub fn y_max(values: impl Iterator<Item = f64>) -> f64 {
    let max = values.filter(|v| v.is_finite()).fold(0.0f64, f64::max);
    if max <= 0.0 { 1.0 } else { max * 1.1 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scales_map_linearly_and_survive_empty_domains() {
        let s = Scale::new((0.0, 10.0), (0.0, 100.0));
        assert_eq!(s.map(5.0), 50.0);
        let flipped = Scale::new((0.0, 10.0), (100.0, 0.0));
        assert_eq!(flipped.map(10.0), 0.0);
        let single = Scale::new((3.0, 3.0), (0.0, 100.0));
        assert_eq!(single.map(3.0), 50.0);
        let one_time = Scale::new((1.8e18, 1.8e18), (0.0, 100.0));
        assert_eq!(one_time.map(1.8e18), 50.0);
        let nan = Scale::new((f64::NAN, 1.0), (0.0, 1.0));
        assert!(nan.map(0.5).is_finite());
    }

    #[test]
    fn ticks_are_round() {
        assert_eq!(nice_ticks(0.0, 10.0, 5), [0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        assert_eq!(nice_ticks(0.0, 0.9, 3), [0.0, 0.5]);
        assert_eq!(nice_ticks(5.0, 5.0, 3), [5.0]);
        let t = time_ticks(1_000_000_000, 61_000_000_000, 6);
        assert_eq!(t.first(), Some(&10_000_000_000));
        assert!(t.windows(2).all(|w| w[1] - w[0] == 10_000_000_000));
    }

    #[test]
    fn y_axis_has_headroom() {
        assert_eq!(y_max([0.0, 0.0].into_iter()), 1.0);
        assert!((y_max([1.0, 10.0, f64::NAN].into_iter()) - 11.0).abs() < 1e-9);
    }
}
