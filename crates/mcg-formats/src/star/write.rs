//! The particle layer, writing: a `ParticleSet` to a RELION 3.1 table, and relative image paths.

use super::*;

pub(super) fn particles_to_star(set: &ParticleSet, path: &Path) -> Result<StarFile> {
    let invalid = |field: String, problem: String| FormatError::invalid(path, field, problem);
    let n = set.len();

    // Optics.
    let mut ids = HashMap::new();
    for (g, o) in set.optics.iter().enumerate() {
        if ids.insert(o.id, g).is_some() {
            return Err(invalid(
                format!("optics group {}", o.id),
                "two optics groups share this number".into(),
            ));
        }
    }
    let with_size = set.optics.iter().filter(|o| o.image_size.is_some()).count();
    if with_size != 0 && with_size != set.optics.len() {
        return Err(invalid(
            IMAGE_SIZE.into(),
            "some optics groups have an image size and others not".into(),
        ));
    }
    let mut optics_labels: Vec<String> = [
        OPTICS_GROUP,
        OPTICS_GROUP_NAME,
        Q0,
        CS,
        VOLTAGE,
        IMAGE_PIXEL_SIZE,
    ]
    .map(String::from)
    .to_vec();
    if with_size != 0 {
        optics_labels.push(IMAGE_SIZE.into());
    }
    let mapped_optics = optics_labels.len();
    for o in &set.optics {
        for (label, _) in &o.extra {
            if !optics_labels.contains(label) {
                optics_labels.push(label.clone());
            }
        }
    }
    if let Some(dup) = optics_labels[mapped_optics..]
        .iter()
        .find(|l| optics_labels[..mapped_optics].contains(l))
    {
        return Err(invalid(
            dup.clone(),
            "an optics extra column repeats a written label".into(),
        ));
    }
    let mut ot = StarTable::new(optics_labels.clone());
    for o in &set.optics {
        let field = |l: &str| format!("optics group {}, {l}", o.id);
        let mut row = vec![
            o.id.to_string(),
            o.name.clone(),
            fmt_num(o.amplitude_contrast, path, &field(Q0))?,
            fmt_num(o.cs, path, &field(CS))?,
            fmt_num(o.voltage, path, &field(VOLTAGE))?,
            fmt_num(o.pixel_size, path, &field(IMAGE_PIXEL_SIZE))?,
        ];
        if let Some(s) = o.image_size {
            row.push(s.to_string());
        }
        for label in &optics_labels[mapped_optics..] {
            let value = o.extra.iter().find(|(l, _)| l == label).ok_or_else(|| {
                invalid(
                    field(label),
                    "this optics group lacks an extra column that others have".into(),
                )
            })?;
            row.push(value.1.clone());
        }
        ot.push_row(row);
    }

    // Which optional particle fields are written: all particles or none must have them.
    let all_or_none = |label: &str, count: usize| -> Result<bool> {
        if count != 0 && count != n {
            return Err(invalid(
                label.into(),
                format!("{count} of {n} particles have this field; all or none must"),
            ));
        }
        Ok(count == n && n != 0)
    };
    let has_image = all_or_none(
        IMAGE_NAME,
        set.particles.iter().filter(|p| p.image.is_some()).count(),
    )?;
    let has_pose = all_or_none(
        "_rlnAngleRot/Tilt/Psi",
        set.particles.iter().filter(|p| p.pose.is_some()).count(),
    )?;
    let has_class = all_or_none(
        CLASS,
        set.particles.iter().filter(|p| p.class.is_some()).count(),
    )?;

    let mut labels: Vec<&str> = Vec::new();
    if has_image {
        labels.push(IMAGE_NAME);
    }
    labels.extend([
        OPTICS_GROUP,
        DEFOCUS_U,
        DEFOCUS_V,
        DEFOCUS_ANGLE,
        PHASE_SHIFT,
        BFACTOR,
        SCALE,
        ORIGIN_X_ANGST,
        ORIGIN_Y_ANGST,
    ]);
    if has_pose {
        labels.extend([ANGLE_ROT, ANGLE_TILT, ANGLE_PSI]);
    }
    if has_class {
        labels.push(CLASS);
    }
    let mut all_labels: Vec<String> = labels.iter().map(|l| l.to_string()).collect();
    for (label, values) in &set.extra {
        if all_labels.contains(label) {
            return Err(invalid(
                label.clone(),
                "an extra column repeats a written label".into(),
            ));
        }
        if values.len() != n {
            return Err(invalid(
                label.clone(),
                format!("extra column has {} values for {n} particles", values.len()),
            ));
        }
        all_labels.push(label.clone());
    }

    let out_dir = lexical_normalize(&absolute(path.parent().unwrap_or(Path::new(""))));
    let mut names: HashMap<&Path, String> = HashMap::new();
    let mut pt = StarTable::new(all_labels);
    let mut row = RowBuf::default();
    for (i, p) in set.particles.iter().enumerate() {
        let field = |l: &str| format!("particle {}, {l}", i + 1);
        let g = set.optics.get(p.optics_group).ok_or_else(|| {
            invalid(
                field(OPTICS_GROUP),
                format!(
                    "optics group index {} but the set has {} groups",
                    p.optics_group,
                    set.optics.len()
                ),
            )
        })?;
        for (name, a, b) in [
            (VOLTAGE, p.ctf.voltage, g.voltage),
            (CS, p.ctf.cs, g.cs),
            (Q0, p.ctf.amplitude_contrast, g.amplitude_contrast),
        ] {
            if a.to_bits() != b.to_bits() {
                return Err(invalid(
                    field(name),
                    format!(
                        "the particle's CTF has {a} but its optics group {} has {b}; \
                         RELION 3.1 keeps it per group",
                        g.id
                    ),
                ));
            }
        }
        row.clear();
        if has_image {
            let im = p
                .image
                .as_ref()
                .expect("checked: all particles have images");
            let rel = match names.entry(im.path.as_path()) {
                Entry::Occupied(e) => e.get().clone(),
                Entry::Vacant(e) => {
                    let stack = lexical_normalize(&absolute(&set.resolve(im)));
                    let rel = relative_path(&stack, &out_dir).unwrap_or(stack);
                    let text = rel.to_str().ok_or_else(|| {
                        invalid(
                            field(IMAGE_NAME),
                            format!("stack path {} is not UTF-8", rel.display()),
                        )
                    })?;
                    e.insert(text.to_owned()).clone()
                }
            };
            let _ = write!(row.text, "{:06}@{rel}", im.index as u128 + 1);
            row.end();
        }
        let _ = write!(row.text, "{}", g.id);
        row.end();
        for (label, v) in [
            (DEFOCUS_U, p.ctf.defocus_u),
            (DEFOCUS_V, p.ctf.defocus_v),
            (DEFOCUS_ANGLE, p.ctf.defocus_angle),
            (PHASE_SHIFT, p.ctf.phase_shift),
            (BFACTOR, p.ctf.bfactor),
            (SCALE, p.ctf.scale),
            (ORIGIN_X_ANGST, p.shift.x),
            (ORIGIN_Y_ANGST, p.shift.y),
        ] {
            row.num(v).map_err(|p| invalid(field(label), p))?;
        }
        if let Some(pose) = p.pose.filter(|_| has_pose) {
            for (label, v) in [
                (ANGLE_ROT, pose.rot),
                (ANGLE_TILT, pose.tilt),
                (ANGLE_PSI, pose.psi),
            ] {
                row.num(v).map_err(|p| invalid(field(label), p))?;
            }
        }
        if let Some(c) = p.class.filter(|_| has_class) {
            let _ = write!(row.text, "{c}");
            row.end();
        }
        for (_, values) in &set.extra {
            row.text.push_str(&values[i]);
            row.end();
        }
        pt.push_row(row.values());
    }

    Ok(StarFile {
        blocks: vec![
            StarBlock {
                name: "optics".into(),
                pairs: Vec::new(),
                table: Some(ot),
            },
            StarBlock {
                name: "particles".into(),
                pairs: Vec::new(),
                table: Some(pt),
            },
        ],
    })
}

/// One table row being built: its values appended to one string, so that a row costs no
/// allocation per value.
#[derive(Default)]
pub(super) struct RowBuf {
    text: String,
    ends: Vec<usize>,
}

impl RowBuf {
    fn clear(&mut self) {
        self.text.clear();
        self.ends.clear();
    }

    /// Marks the end of the value just written to `text`.
    fn end(&mut self) {
        self.ends.push(self.text.len());
    }

    /// Appends the shortest text that reads back as exactly `v`.
    fn num(&mut self, v: f64) -> std::result::Result<(), String> {
        if !v.is_finite() {
            return Err(format!("{v} cannot be written: expected a finite number"));
        }
        let _ = write!(self.text, "{v:?}");
        self.end();
        Ok(())
    }

    fn values(&self) -> impl Iterator<Item = &str> + '_ {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts.zip(&self.ends).map(|(s, &e)| &self.text[s..e])
    }
}

/// The shortest text that reads back as exactly `v` (Rust's `{:?}` for f64).
pub(super) fn fmt_num(v: f64, path: &Path, field: &str) -> Result<String> {
    if !v.is_finite() {
        return Err(FormatError::invalid(
            path,
            field,
            format!("{v} cannot be written: expected a finite number"),
        ));
    }
    Ok(format!("{v:?}"))
}

/// `path` made absolute against the current folder, without touching the file system.
pub(crate) fn absolute(path: &Path) -> PathBuf {
    let path = if path.as_os_str().is_empty() {
        Path::new(".")
    } else {
        path
    };
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// `path` without `.` components and with `dir/..` pairs removed (lexically).
pub(super) fn lexical_normalize(path: &Path) -> PathBuf {
    let mut out: Vec<Component<'_>> = Vec::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => match out.last() {
                Some(Component::Normal(_)) => {
                    out.pop();
                }
                Some(Component::RootDir | Component::Prefix(_)) => {}
                _ => out.push(c),
            },
            _ => out.push(c),
        }
    }
    out.iter().collect()
}

/// `target` relative to the folder `base` (both absolute and normalised), or `None` when they
/// share no root.
pub(super) fn relative_path(target: &Path, base: &Path) -> Option<PathBuf> {
    let t: Vec<_> = target.components().collect();
    let b: Vec<_> = base.components().collect();
    if t.first() != b.first() {
        return None;
    }
    let common = t.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let mut rel = PathBuf::new();
    for _ in common..b.len() {
        rel.push("..");
    }
    for c in &t[common..] {
        rel.push(c.as_os_str());
    }
    Some(rel)
}
