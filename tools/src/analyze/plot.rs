//! Figures as SVG (plotters): entropy against `lambda / mu`, attack success against rounds.

use std::path::Path;

use plotters::prelude::*;

use super::Error;
use super::network::NetworkReport;
use super::poisson_mix::{PoissonMixReport, closed_form_bits};
use super::sda::SdaReport;

const SIZE: (u32, u32) = (900, 560);
const PALETTE: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
];

fn plot_err(e: impl std::fmt::Display) -> Error {
    Error::Plot(e.to_string())
}

/// Simulated target entropy and the closed form `log2(e * rate / mu)` against `lambda / mu`
/// (log scale), one point per report.
pub fn entropy_vs_ratio(path: &Path, reports: &[PoissonMixReport]) -> Result<(), Error> {
    let pts: Vec<(f64, f64)> = reports
        .iter()
        .map(|r| (r.lambda / r.mu, r.entropy_bits))
        .collect();
    let (x_min, x_max) = pts
        .iter()
        .fold((f64::INFINITY, 0.0f64), |(lo, hi), (x, _)| {
            (lo.min(*x), hi.max(*x))
        });
    if pts.is_empty() || x_min <= 0.0 {
        return Err(Error::Plot("no points to draw".into()));
    }
    let loop_share = reports.first().map_or(0.0, |r| r.loop_rate / r.mu);
    let closed: Vec<(f64, f64)> = (0..=200)
        .map(|i| x_min * (x_max / x_min).powf(f64::from(i) / 200.0))
        .map(|x| (x, closed_form_bits(x + loop_share, 1.0)))
        .filter(|(_, y)| *y >= 0.0)
        .collect();
    let y_max = pts
        .iter()
        .chain(&closed)
        .map(|p| p.1)
        .fold(1.0f64, f64::max)
        .ceil()
        + 0.5;

    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Poisson mix: entropy of a target message",
            ("sans-serif", 22),
        )
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(56)
        .build_cartesian_2d((x_min..x_max).log_scale(), 0.0..y_max)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .x_desc("lambda / mu (mean pool size)")
        .y_desc("entropy (bits)")
        .draw()
        .map_err(plot_err)?;
    chart
        .draw_series(LineSeries::new(closed, PALETTE[1].stroke_width(2)))
        .map_err(plot_err)?
        .label("closed form log2(e (lambda + lambda_M) / mu)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], PALETTE[1]));
    chart
        .draw_series(LineSeries::new(pts.clone(), PALETTE[0].stroke_width(2)))
        .map_err(plot_err)?;
    chart
        .draw_series(pts.iter().map(|p| Circle::new(*p, 4, PALETTE[0].filled())))
        .map_err(plot_err)?
        .label("simulation")
        .legend(|(x, y)| Circle::new((x + 10, y), 4, PALETTE[0].filled()));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(plot_err)?;
    root.present().map_err(plot_err)
}

/// Mean fraction of the target's contacts found against observed rounds (log scale), one
/// line per labelled series.
pub fn sda_vs_rounds(path: &Path, series: &[(String, Vec<SdaReport>)]) -> Result<(), Error> {
    let x_max = series
        .iter()
        .flat_map(|(_, s)| s.iter().map(|r| r.rounds))
        .max()
        .unwrap_or(1)
        .max(2) as f64;
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("Statistical disclosure attack", ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(56)
        .build_cartesian_2d((1.0..x_max).log_scale(), 0.0..1.05)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .x_desc("rounds observed with the target sending")
        .y_desc("fraction of contacts found / trials with all found")
        .draw()
        .map_err(plot_err)?;
    for (i, (label, reports)) in series.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let mean: Vec<(f64, f64)> = reports
            .iter()
            .map(|r| (r.rounds as f64, r.mean_fraction_found))
            .collect();
        let all: Vec<(f64, f64)> = reports
            .iter()
            .map(|r| (r.rounds as f64, r.all_found))
            .collect();
        chart
            .draw_series(LineSeries::new(mean, color.stroke_width(2)))
            .map_err(plot_err)?
            .label(format!("{label}: contacts found"))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart
            .draw_series(DashedLineSeries::new(all, 6, 4, color.stroke_width(1)))
            .map_err(plot_err)?
            .label(format!("{label}: all found"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(plot_err)?;
    root.present().map_err(plot_err)
}

/// The latency/anonymity trade-off: mean sender entropy (left axis) and `log2 N` against the
/// mean end-to-end latency, one point per network run (typically a sweep over `delay`).
pub fn entropy_vs_latency(path: &Path, reports: &[NetworkReport]) -> Result<(), Error> {
    let pts: Vec<(f64, f64)> = reports
        .iter()
        .map(|r| (r.latency_gamma.mean, r.metrics.entropy_bits))
        .collect();
    let p99: Vec<(f64, f64)> = reports
        .iter()
        .map(|r| (r.latency_gamma.p99, r.metrics.entropy_bits))
        .collect();
    let Some(first) = reports.first() else {
        return Err(Error::Plot("no points to draw".into()));
    };
    let x_max = p99.iter().map(|p| p.0).fold(0.0f64, f64::max) * 1.05;
    let bound = f64::from(first.senders).log2();
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "{} layers x {} mixes, {} pkt/s, {} senders",
                first.layers, first.width, first.rate, first.senders
            ),
            ("sans-serif", 22),
        )
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0..x_max, 0.0..(bound + 0.5).ceil())
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .x_desc("end-to-end latency (s)")
        .y_desc("sender entropy (bits)")
        .draw()
        .map_err(plot_err)?;
    chart
        .draw_series(LineSeries::new(
            vec![(0.0, bound), (x_max, bound)],
            BLACK.stroke_width(1),
        ))
        .map_err(plot_err)?
        .label("log2 N (perfect)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLACK));
    for (i, (label, series)) in [("mean latency", pts), ("p99 latency", p99)]
        .into_iter()
        .enumerate()
    {
        let color = PALETTE[i];
        chart
            .draw_series(LineSeries::new(series.clone(), color.stroke_width(2)))
            .map_err(plot_err)?;
        chart
            .draw_series(series.iter().map(|p| Circle::new(*p, 4, color.filled())))
            .map_err(plot_err)?
            .label(label)
            .legend(move |(x, y)| Circle::new((x + 10, y), 4, color.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(plot_err)?;
    root.present().map_err(plot_err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analyze::poisson_mix::sweep;
    use crate::analyze::sda::{SdaParams, sweep_rounds};

    fn temp_svg(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("spore-analyze-{}-{name}.svg", std::process::id()))
    }

    #[test]
    fn entropy_figure_is_an_svg_with_both_curves() {
        let reports = sweep(1.0, &[1.0, 4.0, 16.0], 0.0, 2_000, 1).expect("valid");
        let path = temp_svg("entropy");
        entropy_vs_ratio(&path, &reports).expect("draws");
        let svg = std::fs::read_to_string(&path).expect("written");
        let _ = std::fs::remove_file(&path);
        assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(80)]);
        assert!(svg.contains("closed form") && svg.contains("simulation"));
        assert!(svg.matches("<polyline").count() >= 2);
        assert!(entropy_vs_ratio(&path, &[]).is_err());
    }

    #[test]
    fn latency_figure_has_a_point_per_run() {
        use crate::analyze::network::{NetworkParams, simulate};
        let p = NetworkParams {
            layers: 3,
            width: 2,
            rate: 100.0,
            delay: 0.05,
            senders: 10,
            duration: 4.0,
            corrupt: 0,
            seed: 1,
        };
        let runs: Vec<_> = [0.01, 0.05]
            .iter()
            .map(|d| {
                simulate(&NetworkParams {
                    delay: *d,
                    ..p.clone()
                })
                .expect("valid")
            })
            .collect();
        let path = temp_svg("latency");
        entropy_vs_latency(&path, &runs).expect("draws");
        let svg = std::fs::read_to_string(&path).expect("written");
        let _ = std::fs::remove_file(&path);
        assert!(svg.contains("p99 latency") && svg.contains("log2 N"));
        assert!(svg.matches("<circle").count() >= 4);
        assert!(entropy_vs_latency(&path, &[]).is_err());
    }

    #[test]
    fn sda_figure_has_one_pair_of_lines_per_series() {
        let p = SdaParams {
            users: 50,
            batch: 10,
            contacts: 3,
            rounds: 1,
            background_rounds: 1,
            trials: 3,
            cover: 0.0,
            seed: 1,
        };
        let series = vec![
            (
                "no cover".to_string(),
                sweep_rounds(&p, &[1, 10, 100]).expect("valid"),
            ),
            (
                "cover 0.5".to_string(),
                sweep_rounds(&SdaParams { cover: 0.5, ..p }, &[1, 10, 100]).expect("valid"),
            ),
        ];
        let path = temp_svg("sda");
        sda_vs_rounds(&path, &series).expect("draws");
        let svg = std::fs::read_to_string(&path).expect("written");
        let _ = std::fs::remove_file(&path);
        assert!(svg.contains("cover 0.5: all found"));
        assert!(svg.matches("<polyline").count() >= 2);
    }
}
