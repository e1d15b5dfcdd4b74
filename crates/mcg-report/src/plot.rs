//! The report's figures as PNG files, drawn with `plotters` and an embedded font (DejaVu Sans,
//! from the `dejavu` crate), so nothing depends on the fonts of the machine: line plots
//! (training curves, FSC, β(α)), heatmaps (FSCCC matrices) and labelled image grids (slices
//! and projections along the landscape).
//!
//! Every figure is written to a temporary name and renamed when complete.

use std::path::{Path, PathBuf};
use std::sync::Once;

use ndarray::{Array2, ArrayView2};
use plotters::prelude::*;
use plotters::style::FontStyle;

/// A figure that could not be drawn or written.
#[derive(Debug, thiserror::Error)]
#[error("{}: drawing the figure: {message}", path.display())]
pub struct PlotError {
    /// The figure's file.
    pub path: PathBuf,
    /// What went wrong.
    pub message: String,
}

const FONT: &str = "sans-serif";

fn ensure_font() {
    static REGISTER: Once = Once::new();
    REGISTER.call_once(|| {
        // The font is a valid TrueType file compiled into the binary: failing here is a bug.
        plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular())
            .unwrap_or_else(|_| panic!("the embedded DejaVu Sans does not parse"));
        plotters::style::register_font(FONT, FontStyle::Bold, dejavu::sans::bold())
            .unwrap_or_else(|_| panic!("the embedded DejaVu Sans Bold does not parse"));
    });
}

fn err(path: &Path, e: impl std::fmt::Display) -> PlotError {
    PlotError {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// A temporary name for `path` that keeps its extension, from which the image encoder picks
/// the format; dropped unfinished (a drawing error), it is removed.
fn stage(path: &Path) -> Result<(mcg_fsio::Staged, PathBuf), PlotError> {
    let staged = mcg_fsio::Staged::new(path).map_err(|e| err(path, e))?;
    let tmp = staged.path().to_path_buf();
    Ok((staged, tmp))
}

fn finish(staged: mcg_fsio::Staged, path: &Path) -> Result<(), PlotError> {
    staged.commit().map_err(|e| err(path, e))
}

/// One curve of a line plot.
#[derive(Debug, Clone)]
pub struct Series {
    /// Legend text.
    pub name: String,
    /// Points, in order.
    pub points: Vec<(f64, f64)>,
}

/// A horizontal reference line (e.g. FSC = 0.5).
#[derive(Debug, Clone)]
pub struct Level {
    /// Its height.
    pub y: f64,
    /// Its label, drawn at the right end.
    pub label: String,
}

/// The palette of the curves (colour-blind safe, Okabe–Ito).
const PALETTE: [RGBColor; 6] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(86, 180, 233),
    RGBColor(230, 159, 0),
];

/// Settings of [`line_plot`].
#[derive(Debug, Clone, Default)]
pub struct LinePlot<'a> {
    /// Title above the plot.
    pub title: &'a str,
    /// Label of the x axis.
    pub x_label: &'a str,
    /// Label of the y axis.
    pub y_label: &'a str,
    /// Fixed y range; `None`: the data's, with a margin.
    pub y_range: Option<(f64, f64)>,
    /// Fixed x range; `None`: the data's.
    pub x_range: Option<(f64, f64)>,
    /// Horizontal reference lines.
    pub levels: Vec<Level>,
    /// Label the x axis with whole numbers (steps, counts).
    pub x_integer: bool,
}

fn bounds(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
            (a.min(v), b.max(v))
        });
    (lo <= hi).then_some(if lo == hi {
        (lo - 1.0, hi + 1.0)
    } else {
        (lo, hi)
    })
}

/// A line plot of `series` (800×500 px) at `path`.
pub fn line_plot(path: &Path, plot: &LinePlot<'_>, series: &[Series]) -> Result<(), PlotError> {
    ensure_font();
    let e = |x: &dyn std::fmt::Display| err(path, x);
    let all = || series.iter().flat_map(|s| s.points.iter());
    let (x0, x1) = plot
        .x_range
        .or_else(|| bounds(all().map(|p| p.0)))
        .unwrap_or((0.0, 1.0));
    let (y0, y1) = plot.y_range.unwrap_or_else(|| {
        let (lo, hi) =
            bounds(all().map(|p| p.1).chain(plot.levels.iter().map(|l| l.y))).unwrap_or((0.0, 1.0));
        let pad = 0.05 * (hi - lo);
        (lo - pad, hi + pad)
    });
    let (staged, tmp) = stage(path)?;
    {
        let root = BitMapBackend::new(&tmp, (800, 500)).into_drawing_area();
        root.fill(&WHITE).map_err(|x| e(&x))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(plot.title, (FONT, 22))
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(65)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(|x| e(&x))?;
        let integer = |v: &f64| format!("{v:.0}");
        let mut mesh = chart.configure_mesh();
        mesh.x_desc(plot.x_label)
            .y_desc(plot.y_label)
            .label_style((FONT, 15))
            .axis_desc_style((FONT, 17))
            .light_line_style(RGBColor(240, 240, 240));
        if plot.x_integer {
            mesh.x_label_formatter(&integer);
        }
        mesh.draw().map_err(|x| e(&x))?;
        for level in &plot.levels {
            let grey = RGBColor(120, 120, 120);
            chart
                .draw_series(LineSeries::new(
                    [(x0, level.y), (x1, level.y)],
                    grey.stroke_width(1),
                ))
                .map_err(|x| e(&x))?;
            chart
                .draw_series([Text::new(
                    level.label.clone(),
                    (x0 + 0.82 * (x1 - x0), level.y + 0.01 * (y1 - y0)),
                    (FONT, 14).into_font().color(&grey),
                )])
                .map_err(|x| e(&x))?;
        }
        for (i, s) in series.iter().enumerate() {
            let colour = PALETTE[i % PALETTE.len()];
            let points: Vec<(f64, f64)> = s
                .points
                .iter()
                .copied()
                .filter(|p| p.0.is_finite() && p.1.is_finite())
                .collect();
            chart
                .draw_series(LineSeries::new(points, colour.stroke_width(2)))
                .map_err(|x| e(&x))?
                .label(s.name.clone())
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 20, y)], colour.stroke_width(2))
                });
        }
        if series.len() > 1 || !series.first().is_none_or(|s| s.name.is_empty()) {
            chart
                .configure_series_labels()
                .label_font((FONT, 15))
                .background_style(WHITE.mix(0.85))
                .border_style(RGBColor(180, 180, 180))
                .position(SeriesLabelPosition::UpperRight)
                .draw()
                .map_err(|x| e(&x))?;
        }
        root.present().map_err(|x| e(&x))?;
    }
    finish(staged, path)
}

/// FSC curves against frequency as a fraction of Nyquist, with the 0.5 and 0.143 thresholds.
pub fn fsc_plot(
    path: &Path,
    title: &str,
    curves: &[(String, &mcg_eval::FscCurve)],
) -> Result<(), PlotError> {
    let series: Vec<Series> = curves
        .iter()
        .map(|(name, c)| Series {
            name: name.clone(),
            points: c
                .nyquist_fraction()
                .into_iter()
                .zip(c.fsc.iter().copied())
                .skip(1)
                .collect(),
        })
        .collect();
    let levels = [0.5, 0.143]
        .map(|y| Level {
            y,
            label: y.to_string(),
        })
        .to_vec();
    line_plot(
        path,
        &LinePlot {
            title,
            x_label: "frequency / Nyquist",
            y_label: "FSC",
            y_range: Some((-0.1, 1.02)),
            x_range: Some((0.0, 1.0)),
            levels,
            x_integer: false,
        },
        &series,
    )
}

/// Viridis at `t` ∈ [0, 1] (interpolated between eight anchors).
fn viridis(t: f64) -> RGBColor {
    const A: [(u8, u8, u8); 8] = [
        (68, 1, 84),
        (70, 50, 126),
        (54, 92, 141),
        (39, 127, 142),
        (31, 161, 135),
        (74, 193, 109),
        (160, 218, 57),
        (253, 231, 37),
    ];
    let t = t.clamp(0.0, 1.0) * (A.len() - 1) as f64;
    let i = (t.floor() as usize).min(A.len() - 2);
    let f = t - i as f64;
    let mix = |a: u8, b: u8| (f64::from(a) + f * (f64::from(b) - f64::from(a))).round() as u8;
    RGBColor(
        mix(A[i].0, A[i + 1].0),
        mix(A[i].1, A[i + 1].1),
        mix(A[i].2, A[i + 1].2),
    )
}

/// Heatmaps of square matrices side by side, one panel each with its title, on one colour
/// scale from `range.0` to `range.1` (viridis) with a colour bar. Rows go down, columns right,
/// both labelled by `axis_label` from 0 to the matrix's size − 1.
pub fn heatmaps(
    path: &Path,
    panels: &[(&str, &Array2<f64>)],
    range: (f64, f64),
    axis_label: &str,
) -> Result<(), PlotError> {
    ensure_font();
    let e = |x: &dyn std::fmt::Display| err(path, x);
    let panel = 420u32;
    let bar = 110u32;
    let width = panel * panels.len() as u32 + bar;
    let (staged, tmp) = stage(path)?;
    {
        let root = BitMapBackend::new(&tmp, (width, panel + 40)).into_drawing_area();
        root.fill(&WHITE).map_err(|x| e(&x))?;
        let (left, right) = root.split_horizontally(panel * panels.len() as u32);
        let areas = left.split_evenly((1, panels.len().max(1)));
        let scale = |v: f64| (v - range.0) / (range.1 - range.0);
        for ((title, m), area) in panels.iter().zip(areas) {
            let (rows, cols) = m.dim();
            let mut chart = ChartBuilder::on(&area)
                .caption(*title, (FONT, 19))
                .margin(10)
                .x_label_area_size(40)
                .y_label_area_size(45)
                .build_cartesian_2d(0.0..cols as f64, rows as f64..0.0)
                .map_err(|x| e(&x))?;
            chart
                .configure_mesh()
                .disable_mesh()
                .x_desc(axis_label)
                .y_desc(axis_label)
                .label_style((FONT, 13))
                .axis_desc_style((FONT, 15))
                .x_label_formatter(&|v| format!("{}", *v as i64))
                .y_label_formatter(&|v| format!("{}", *v as i64))
                .draw()
                .map_err(|x| e(&x))?;
            chart
                .draw_series(m.indexed_iter().map(|((r, c), &v)| {
                    Rectangle::new(
                        [(c as f64, r as f64), (c as f64 + 1.0, r as f64 + 1.0)],
                        viridis(scale(v)).filled(),
                    )
                }))
                .map_err(|x| e(&x))?;
        }
        // The colour bar.
        let mut chart = ChartBuilder::on(&right)
            .margin_top(45)
            .margin_bottom(50)
            .margin_right(50)
            .margin_left(10)
            .y_label_area_size(0)
            .right_y_label_area_size(45)
            .build_cartesian_2d(0.0..1.0, range.0..range.1)
            .map_err(|x| e(&x))?;
        chart
            .configure_mesh()
            .disable_mesh()
            .disable_x_axis()
            .label_style((FONT, 13))
            .draw()
            .map_err(|x| e(&x))?;
        let steps = 100;
        chart
            .draw_series((0..steps).map(|k| {
                let a = range.0 + (range.1 - range.0) * k as f64 / steps as f64;
                let b = range.0 + (range.1 - range.0) * (k + 1) as f64 / steps as f64;
                Rectangle::new([(0.0, a), (1.0, b)], viridis(scale(a)).filled())
            }))
            .map_err(|x| e(&x))?;
        root.present().map_err(|x| e(&x))?;
    }
    finish(staged, path)
}

/// A grid of grayscale images (each scaled to its own range, enlarged `zoom` times), with a
/// label left of each row and above each column.
pub fn image_grid(
    path: &Path,
    rows: &[(String, Vec<ArrayView2<'_, f32>>)],
    column_labels: &[String],
    zoom: u32,
) -> Result<(), PlotError> {
    ensure_font();
    let e = |x: &dyn std::fmt::Display| err(path, x);
    let n = rows
        .iter()
        .flat_map(|r| r.1.first())
        .map(|im| im.dim().0 as u32)
        .next()
        .unwrap_or(1);
    let cols = rows.iter().map(|r| r.1.len()).max().unwrap_or(0) as u32;
    let cell = n * zoom + 4;
    let (left, top) = (130u32, 28u32);
    let (w, h) = (left + cols * cell + 4, top + rows.len() as u32 * cell + 4);
    let (staged, tmp) = stage(path)?;
    {
        let root = BitMapBackend::new(&tmp, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(|x| e(&x))?;
        let style = (FONT, 15).into_font().color(&BLACK);
        for (c, label) in column_labels.iter().enumerate() {
            let x = (left + c as u32 * cell + 2) as i32;
            root.draw_text(label, &style, (x, 6)).map_err(|x| e(&x))?;
        }
        for (r, (label, images)) in rows.iter().enumerate() {
            let y0 = top + r as u32 * cell;
            root.draw_text(label, &style, (6, (y0 + cell / 2 - 8) as i32))
                .map_err(|x| e(&x))?;
            for (c, image) in images.iter().enumerate() {
                let x0 = left + c as u32 * cell;
                let (lo, hi) = bounds(image.iter().map(|&v| f64::from(v))).unwrap_or((0.0, 1.0));
                for ((y, x), &v) in image.indexed_iter() {
                    let g = ((f64::from(v) - lo) / (hi - lo) * 255.0)
                        .round()
                        .clamp(0.0, 255.0) as u8;
                    let px = (x0 + 2 + x as u32 * zoom) as i32;
                    let py = (y0 + 2 + y as u32 * zoom) as i32;
                    root.draw(&Rectangle::new(
                        [(px, py), (px + zoom as i32, py + zoom as i32)],
                        RGBColor(g, g, g).filled(),
                    ))
                    .map_err(|x| e(&x))?;
                }
            }
        }
        root.present().map_err(|x| e(&x))?;
    }
    finish(staged, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png_size(path: &Path) -> (u32, u32) {
        let bytes = std::fs::read(path).unwrap();
        assert_eq!(&bytes[1..4], b"PNG", "{}", path.display());
        let be = |i: usize| u32::from_be_bytes(bytes[i..i + 4].try_into().unwrap());
        (be(16), be(20))
    }

    #[test]
    fn figures_are_written_whole_and_leave_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("fsc.png");
        let s = Series {
            name: "α = 0 vs β = 0°".into(),
            points: (0..17)
                .map(|i| (i as f64 / 16.0, 1.0 - i as f64 / 20.0))
                .collect(),
        };
        let plot = LinePlot {
            title: "FSC",
            x_label: "frequency / Nyquist",
            y_label: "FSC",
            y_range: Some((-0.1, 1.05)),
            levels: vec![Level {
                y: 0.5,
                label: "0.5".into(),
            }],
            ..Default::default()
        };
        line_plot(&p, &plot, &[s]).unwrap();
        assert_eq!(png_size(&p), (800, 500));
        let m = Array2::from_shape_fn((21, 21), |(i, j)| 1.0 - (i as f64 - j as f64).abs() / 20.0);
        let h = dir.path().join("fsccc.png");
        heatmaps(
            &h,
            &[("truth", &m), ("reconstruction", &m)],
            (0.0, 1.0),
            "m",
        )
        .unwrap();
        assert_eq!(png_size(&h).0, 2 * 420 + 110);
        let im = Array2::from_shape_fn((8, 8), |(y, x)| (x + y) as f32);
        let g = dir.path().join("grid.png");
        image_grid(
            &g,
            &[("slice".into(), vec![im.view(), im.view()])],
            &["α 0".into(), "α 1".into()],
            3,
        )
        .unwrap();
        assert_eq!(png_size(&g), (130 + 2 * 28 + 4, 28 + 28 + 4));
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.starts_with('.')), "{names:?}");
    }

    #[test]
    fn viridis_runs_from_purple_to_yellow() {
        assert_eq!(viridis(0.0), RGBColor(68, 1, 84));
        assert_eq!(viridis(1.0), RGBColor(253, 231, 37));
        assert_eq!(viridis(2.0), viridis(1.0));
    }
}
