//! Writing STAR text: rendering blocks, labels and quoted values, and the atomic file write.

use super::*;

pub(super) fn render_star(file: &StarFile, header: Option<&str>, path: &Path) -> Result<String> {
    let mut out = String::new();
    for block in &file.blocks {
        if block
            .name
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(FormatError::invalid(
                path,
                format!("data_{}", block.name),
                "a block name cannot hold whitespace",
            ));
        }
        let field = |what: &str| format!("data_{}, {what}", block.name);
        if let Some(h) = header {
            out.push('\n');
            out.push_str(h);
            out.push('\n');
        }
        let _ = write!(out, "\ndata_{}\n\n", block.name);
        if !block.pairs.is_empty() {
            let w = block.pairs.iter().map(|(l, _)| l.chars().count()).max();
            for (label, value) in &block.pairs {
                check_label(label).map_err(|p| FormatError::invalid(path, field(label), p))?;
                let v = quote(value).map_err(|p| FormatError::invalid(path, field(label), p))?;
                let _ = writeln!(out, "{label:<w$} {v}", w = w.unwrap_or(0));
            }
            out.push('\n');
        }
        let Some(table) = &block.table else { continue };
        if table.labels.len() != table.width {
            return Err(FormatError::invalid(
                path,
                field("loop_"),
                format!(
                    "{} labels for a table of {} columns",
                    table.labels.len(),
                    table.width
                ),
            ));
        }
        if table.width == 0 {
            return Err(FormatError::invalid(
                path,
                field("loop_"),
                "a table without columns",
            ));
        }
        out.push_str("loop_\n");
        for (i, label) in table.labels[..table.width].iter().enumerate() {
            check_label(label).map_err(|p| FormatError::invalid(path, field(label), p))?;
            let _ = writeln!(out, "{label} #{}", i + 1);
        }
        // Measure the quoted columns, then write them right-aligned as RELION does.
        let cell_error = |r: usize, c: usize, p: String| {
            FormatError::invalid(
                path,
                field(&format!("{}, row {}", table.labels[c], r + 1)),
                p,
            )
        };
        let mut widths = vec![0usize; table.width];
        for r in 0..table.len() {
            for (c, v) in table.row(r).enumerate() {
                let q = quote(v).map_err(|p| cell_error(r, c, p))?;
                widths[c] = widths[c].max(q.chars().count());
            }
        }
        out.reserve(table.len() * (widths.iter().sum::<usize>() + table.width));
        for r in 0..table.len() {
            for (c, v) in table.row(r).enumerate() {
                let q = quote(v).map_err(|p| cell_error(r, c, p))?;
                let pad = widths[c].saturating_sub(q.chars().count());
                out.extend(std::iter::repeat_n(' ', pad));
                out.push_str(&q);
                out.push(' ');
            }
            out.pop();
            out.push('\n');
        }
        out.push('\n');
    }
    Ok(out)
}

pub(super) fn check_label(label: &str) -> std::result::Result<(), String> {
    if label.len() < 2
        || !label.starts_with('_')
        || label.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "label {label:?} must start with `_` and hold no whitespace"
        ));
    }
    Ok(())
}

/// The value as it must be written: bare, or quoted when it would otherwise read back
/// differently.
pub(super) fn quote(v: &str) -> std::result::Result<std::borrow::Cow<'_, str>, String> {
    if v.chars().any(|c| c.is_control() && c != '\t') {
        return Err(format!("value {v:?} holds a control character"));
    }
    let needs = v.is_empty()
        || v.chars().any(char::is_whitespace)
        || v.starts_with(['\'', '"', '#', '_'])
        || ["data_", "loop_", "save_", "global_", "stop_"]
            .iter()
            .any(|k| starts_with_ignore_case(v, k));
    if !needs {
        return Ok(v.into());
    }
    for q in ['"', '\''] {
        // With CIF quoting, a quote inside the value is harmless unless whitespace follows it.
        let closes_early = v
            .char_indices()
            .any(|(i, c)| c == q && v[i + 1..].starts_with(char::is_whitespace));
        if !closes_early {
            return Ok(format!("{q}{v}{q}").into());
        }
    }
    Err(format!("value {v:?} cannot be quoted"))
}

/// Writes `bytes` to a temporary file beside `path`, then renames it over `path`.
pub(super) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    Ok(mcg_fsio::write_atomic(path, bytes)?)
}
