//! The particle layer, reading: RELION 3.0, 3.1 and 5 particle tables to a `ParticleSet`.

use super::*;

pub(super) const IMAGE_NAME: &str = "_rlnImageName";
pub(super) const OPTICS_GROUP: &str = "_rlnOpticsGroup";
pub(super) const OPTICS_GROUP_NAME: &str = "_rlnOpticsGroupName";
pub(super) const VOLTAGE: &str = "_rlnVoltage";
pub(super) const CS: &str = "_rlnSphericalAberration";
pub(super) const Q0: &str = "_rlnAmplitudeContrast";
pub(super) const IMAGE_PIXEL_SIZE: &str = "_rlnImagePixelSize";
pub(super) const DETECTOR_PIXEL_SIZE: &str = "_rlnDetectorPixelSize";
pub(super) const MAGNIFICATION: &str = "_rlnMagnification";
pub(super) const IMAGE_SIZE: &str = "_rlnImageSize";
pub(super) const DEFOCUS_U: &str = "_rlnDefocusU";
pub(super) const DEFOCUS_V: &str = "_rlnDefocusV";
pub(super) const DEFOCUS_ANGLE: &str = "_rlnDefocusAngle";
pub(super) const PHASE_SHIFT: &str = "_rlnPhaseShift";
pub(super) const BFACTOR: &str = "_rlnCtfBfactor";
pub(super) const SCALE: &str = "_rlnCtfScalefactor";
pub(super) const ORIGIN_X_ANGST: &str = "_rlnOriginXAngst";
pub(super) const ORIGIN_Y_ANGST: &str = "_rlnOriginYAngst";
pub(super) const ORIGIN_X: &str = "_rlnOriginX";
pub(super) const ORIGIN_Y: &str = "_rlnOriginY";
pub(super) const ANGLE_ROT: &str = "_rlnAngleRot";
pub(super) const ANGLE_TILT: &str = "_rlnAngleTilt";
pub(super) const ANGLE_PSI: &str = "_rlnAnglePsi";
pub(super) const CLASS: &str = "_rlnClassNumber";

/// Maps a parsed STAR file to particles; `path` is the file's location (for relative image
/// paths and errors).
pub(crate) fn particles_from_star(
    file: &StarFile,
    path: &Path,
    opts: &StarOptions,
) -> Result<ParticleSet> {
    let optics_block = file
        .blocks
        .iter()
        .find(|b| b.name == "optics" && b.table.is_some());
    let (block, table) = particle_table(file, path)?;
    let mut cols = Columns::new(table, path, &block.name);
    let n = table.len();

    let base_dir = match &opts.data_dir {
        Some(d) => absolute(d),
        None => absolute(path.parent().unwrap_or(Path::new(""))),
    };
    let images = read_images(&mut cols, opts.data_dir.as_deref())?;

    // CTF columns common to both layouts.
    let defocus_u = cols.required(DEFOCUS_U)?;
    let defocus_v = cols.num(DEFOCUS_V)?.unwrap_or_else(|| defocus_u.clone());
    let defocus_angle = cols.num_or(DEFOCUS_ANGLE, 0.0)?;
    let phase_shift = cols.num_or(PHASE_SHIFT, 0.0)?;
    let bfactor = cols.num_or(BFACTOR, 0.0)?;
    let scale = cols.num_or(SCALE, 1.0)?;

    // The first stack of each group, for headers that give a missing pixel or image size.
    let first_stack = |group_of: &dyn Fn(usize) -> bool| {
        images.as_ref().and_then(|v| {
            (0..n)
                .find(|&i| group_of(i))
                .map(|i| resolve_path(&base_dir, &v[i].path))
        })
    };

    let (mut optics, group_of) = match optics_block {
        Some(ob) => {
            let ot = ob.table.as_ref().expect("selected for having a table");
            let group_ids = cols.int(OPTICS_GROUP)?;
            read_optics_31(
                ot,
                path,
                &ob.name,
                &block.name,
                group_ids,
                n,
                opts,
                &|g: usize, groups: &[usize]| first_stack(&|i| groups[i] == g),
            )?
        }
        None => {
            let first = first_stack(&|_| true);
            group_optics_30(&mut cols, n, opts, first)?
        }
    };
    for (g, group) in optics.iter_mut().enumerate() {
        if group.image_size.is_none() {
            group.image_size = first_stack(&|i| group_of[i] == g).and_then(|s| stack_edge(&s));
        }
    }

    // Shifts in Å.
    let shift = match (cols.num(ORIGIN_X_ANGST)?, cols.num(ORIGIN_Y_ANGST)?) {
        (Some(x), Some(y)) => Some((x, y, false)),
        (None, None) => match (cols.num(ORIGIN_X)?, cols.num(ORIGIN_Y)?) {
            (Some(x), Some(y)) => Some((x, y, true)),
            (None, None) => None,
            (Some(_), None) => return Err(cols.missing(ORIGIN_Y, "it is paired with _rlnOriginX")),
            (None, Some(_)) => return Err(cols.missing(ORIGIN_X, "it is paired with _rlnOriginY")),
        },
        (Some(_), None) => {
            return Err(cols.missing(ORIGIN_Y_ANGST, "it is paired with _rlnOriginXAngst"));
        }
        (None, Some(_)) => {
            return Err(cols.missing(ORIGIN_X_ANGST, "it is paired with _rlnOriginYAngst"));
        }
    };

    let has_all_angles = [ANGLE_ROT, ANGLE_TILT, ANGLE_PSI]
        .iter()
        .all(|l| table.column(l).is_some());
    let angles = if has_all_angles {
        Some((
            cols.required(ANGLE_ROT)?,
            cols.required(ANGLE_TILT)?,
            cols.required(ANGLE_PSI)?,
        ))
    } else {
        None
    };
    let class = match cols.int(CLASS)? {
        Some(c) => Some(
            c.iter()
                .enumerate()
                .map(|(i, &v)| cols.to_u32(CLASS, i, v))
                .collect::<Result<Vec<u32>>>()?,
        ),
        None => None,
    };

    let mut images = images.map(Vec::into_iter);
    let mut particles = Vec::with_capacity(n);
    for i in 0..n {
        let g = &optics[group_of[i]];
        let shift = match &shift {
            Some((x, y, false)) => Shift { x: x[i], y: y[i] },
            Some((x, y, true)) => Shift {
                x: x[i] * g.pixel_size,
                y: y[i] * g.pixel_size,
            },
            None => Shift::default(),
        };
        particles.push(Particle {
            image: images.as_mut().and_then(Iterator::next),
            optics_group: group_of[i],
            pose: angles.as_ref().map(|(r, t, p)| Pose::new(r[i], t[i], p[i])),
            shift,
            ctf: CtfParams {
                defocus_u: defocus_u[i],
                defocus_v: defocus_v[i],
                defocus_angle: defocus_angle[i],
                voltage: g.voltage,
                cs: g.cs,
                amplitude_contrast: g.amplitude_contrast,
                phase_shift: phase_shift[i],
                bfactor: bfactor[i],
                scale: scale[i],
            },
            class: class.as_ref().map(|c| c[i]),
        });
    }

    Ok(ParticleSet {
        optics,
        particles,
        extra: cols.extra(),
        base_dir,
    })
}

/// Chooses the particle table: block `particles`, else the only other block with a table, else
/// the first one that looks like particles.
pub(super) fn particle_table<'f>(
    file: &'f StarFile,
    path: &Path,
) -> Result<(&'f StarBlock, &'f StarTable)> {
    let with_table = |b: &'f StarBlock| b.table.as_ref().map(|t| (b, t));
    if let Some(found) = file
        .blocks
        .iter()
        .filter(|b| b.name == "particles")
        .find_map(with_table)
    {
        return Ok(found);
    }
    let candidates: Vec<_> = file
        .blocks
        .iter()
        .filter(|b| b.name != "optics")
        .filter_map(with_table)
        .collect();
    match candidates.as_slice() {
        [one] => Ok(*one),
        [] => Err(FormatError::invalid(
            path,
            "data_particles",
            format!(
                "no particle table: expected a `data_particles` block or a single table, \
                 found blocks [{}]",
                block_names(file)
            ),
        )),
        many => many
            .iter()
            .find(|(_, t)| t.column(IMAGE_NAME).is_some() || t.column(DEFOCUS_U).is_some())
            .copied()
            .ok_or_else(|| {
                FormatError::invalid(
                    path,
                    "data_particles",
                    format!(
                        "several tables and none with {IMAGE_NAME} or {DEFOCUS_U}: blocks [{}]",
                        block_names(file)
                    ),
                )
            }),
    }
}

pub(super) fn block_names(file: &StarFile) -> String {
    file.blocks
        .iter()
        .map(|b| format!("data_{}", b.name))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Parses `_rlnImageName` into image references (`None` when the column is absent).
pub(super) fn read_images(
    cols: &mut Columns<'_>,
    data_dir: Option<&Path>,
) -> Result<Option<Vec<ImageRef>>> {
    let Some(c) = cols.take(IMAGE_NAME) else {
        return Ok(None);
    };
    let mut resolved: HashMap<&str, PathBuf> = HashMap::new();
    let mut out = Vec::with_capacity(cols.table.len());
    for (row, name) in cols.table.column_values(c).enumerate() {
        let (index, file) = match name.split_once('@') {
            Some((num, file)) => {
                let index = num
                    .parse::<usize>()
                    .ok()
                    .filter(|&k| k >= 1 && num.bytes().all(|b| b.is_ascii_digit()))
                    .ok_or_else(|| {
                        cols.bad_value(
                            IMAGE_NAME,
                            row,
                            name,
                            "an image number ≥ 1 before `@` (NNNNNN@stack.mrcs)",
                        )
                    })?;
                (index - 1, file)
            }
            None => (0, name),
        };
        if file.is_empty() {
            return Err(cols.bad_value(IMAGE_NAME, row, name, "a stack path after `@`"));
        }
        let path = match resolved.entry(file) {
            Entry::Occupied(e) => e.get().clone(),
            Entry::Vacant(e) => e.insert(stack_path(file, data_dir)).clone(),
        };
        out.push(ImageRef { path, index });
    }
    Ok(Some(out))
}

/// The path to record for a stack written as `file`: as written, or its file name alone when
/// only that exists under the data folder.
pub(crate) fn stack_path(file: &str, data_dir: Option<&Path>) -> PathBuf {
    let written = PathBuf::from(file);
    if let Some(dir) = data_dir
        && !resolve_path(dir, &written).exists()
        && let Some(name) = written.file_name()
        && dir.join(name).exists()
    {
        return PathBuf::from(name);
    }
    written
}

pub(super) type OpticsAndGroups = (Vec<OpticsGroup>, Vec<usize>);

/// What makes a RELION 3.0 particle's optics group: the bits of voltage, Cs, amplitude
/// contrast and pixel size, the image size, and the `_rlnOpticsGroup` text if any.
pub(super) type OpticsKey<'a> = (u64, u64, u64, u64, Option<u32>, Option<&'a str>);

/// RELION ≥ 3.1: the optics table, and each particle's index into it.
pub(super) fn read_optics_31(
    ot: &StarTable,
    path: &Path,
    block: &str,
    particle_block: &str,
    particle_group_ids: Option<Vec<f64>>,
    n: usize,
    opts: &StarOptions,
    first_stack: &dyn Fn(usize, &[usize]) -> Option<PathBuf>,
) -> Result<OpticsAndGroups> {
    let mut oc = Columns::new(ot, path, block);
    let m = ot.len();
    if m == 0 {
        return Err(FormatError::invalid(
            path,
            format!("data_{block}"),
            "the optics table has no row",
        ));
    }
    let ids = oc
        .int(OPTICS_GROUP)?
        .ok_or_else(|| oc.missing(OPTICS_GROUP, "every optics group needs its number"))?;
    let names = oc.take(OPTICS_GROUP_NAME);
    let voltage = oc.required(VOLTAGE)?;
    let cs = oc.required(CS)?;
    let q0 = oc.num_or(Q0, 0.0)?;
    let pixel = pixel_sizes(&mut oc)?;
    let size = oc.int(IMAGE_SIZE)?;

    let mut optics = Vec::with_capacity(m);
    let mut index_of = HashMap::new();
    for r in 0..m {
        let id = oc.to_u32(OPTICS_GROUP, r, ids[r])?;
        if index_of.insert(id, r).is_some() {
            let text = ot.column(OPTICS_GROUP).map_or("", |c| ot.cell(r, c));
            return Err(oc.bad_value(OPTICS_GROUP, r, text, "a number used once"));
        }
        optics.push(OpticsGroup {
            id,
            name: names.map_or_else(|| format!("opticsGroup{id}"), |c| ot.cell(r, c).to_owned()),
            pixel_size: pixel.as_ref().map_or(f64::NAN, |p| p[r]),
            image_size: match &size {
                Some(s) => Some(oc.to_u32(IMAGE_SIZE, r, s[r])? as usize),
                None => None,
            },
            voltage: voltage[r],
            cs: cs[r],
            amplitude_contrast: q0[r],
            extra: Vec::new(),
        });
    }
    let extra = oc.extra();
    for (r, g) in optics.iter_mut().enumerate() {
        g.extra = extra
            .iter()
            .map(|(label, values)| (label.clone(), values[r].clone()))
            .collect();
    }

    let groups = match particle_group_ids {
        Some(ids) => {
            let mut groups = Vec::with_capacity(n);
            for (i, &v) in ids.iter().enumerate() {
                let id = u32::try_from(v as i64).ok().filter(|_| v.fract() == 0.0);
                match id.and_then(|id| index_of.get(&id)) {
                    Some(&g) => groups.push(g),
                    None => {
                        return Err(FormatError::invalid(
                            path,
                            format!("data_{particle_block}, {OPTICS_GROUP}, row {}", i + 1),
                            format!(
                                "particle refers to optics group {v}, which the optics table \
                                 does not define"
                            ),
                        ));
                    }
                }
            }
            groups
        }
        None if m == 1 => vec![0; n],
        None => {
            return Err(FormatError::invalid(
                path,
                format!("data_{particle_block}, {OPTICS_GROUP}"),
                format!(
                    "the particle table has no {OPTICS_GROUP} column but there are {m} \
                     optics groups"
                ),
            ));
        }
    };

    if pixel.is_none() {
        for (g, group) in optics.iter_mut().enumerate() {
            group.pixel_size = fallback_pixel_size(
                path,
                &format!("data_{block}"),
                PIXEL_SIZE_LABELS,
                opts,
                first_stack(g, &groups),
            )?;
        }
    }
    Ok((optics, groups))
}

/// What a STAR file should give as the pixel size, for errors.
pub(super) const PIXEL_SIZE_LABELS: &str =
    "_rlnImagePixelSize, or _rlnDetectorPixelSize with _rlnMagnification";

/// RELION 3.0: optics values per particle, grouped by their distinct values.
pub(super) fn group_optics_30(
    cols: &mut Columns<'_>,
    n: usize,
    opts: &StarOptions,
    first_stack: Option<PathBuf>,
) -> Result<OpticsAndGroups> {
    let voltage = cols.required(VOLTAGE)?;
    let cs = cols.required(CS)?;
    let q0 = cols.num_or(Q0, 0.0)?;
    let pixel = match pixel_sizes(cols)? {
        Some(p) => p,
        None => {
            let p = fallback_pixel_size(
                cols.path,
                &format!("data_{}", cols.block),
                PIXEL_SIZE_LABELS,
                opts,
                first_stack,
            )?;
            vec![p; n]
        }
    };
    let size = cols.int(IMAGE_SIZE)?;
    let label = cols.take(OPTICS_GROUP);
    let table = cols.table;

    let mut optics: Vec<OpticsGroup> = Vec::new();
    let mut index_of: HashMap<OpticsKey<'_>, usize> = HashMap::new();
    let mut groups = Vec::with_capacity(n);
    for i in 0..n {
        let image_size = match &size {
            Some(s) => Some(cols.to_u32(IMAGE_SIZE, i, s[i])?),
            None => None,
        };
        let key = (
            voltage[i].to_bits(),
            cs[i].to_bits(),
            q0[i].to_bits(),
            pixel[i].to_bits(),
            image_size,
            label.map(|c| table.cell(i, c)),
        );
        let g = *index_of.entry(key).or_insert_with(|| {
            let id = optics.len() as u32 + 1;
            optics.push(OpticsGroup::numbered(
                id,
                pixel[i],
                image_size.map(|s| s as usize),
                voltage[i],
                cs[i],
                q0[i],
            ));
            optics.len() - 1
        });
        groups.push(g);
    }
    Ok((optics, groups))
}

/// Pixel sizes from `_rlnImagePixelSize`, or `_rlnDetectorPixelSize`·10⁴/`_rlnMagnification`.
pub(super) fn pixel_sizes(cols: &mut Columns<'_>) -> Result<Option<Vec<f64>>> {
    let direct = cols.num(IMAGE_PIXEL_SIZE)?;
    let detector = cols.num(DETECTOR_PIXEL_SIZE)?;
    let mag = cols.num(MAGNIFICATION)?;
    let p = match (direct, detector, mag) {
        (Some(p), _, _) => p,
        (None, Some(d), Some(m)) => d.iter().zip(&m).map(|(d, m)| d * 1e4 / m).collect(),
        _ => return Ok(None),
    };
    for (r, &v) in p.iter().enumerate() {
        if !(v.is_finite() && v > 0.0) {
            return Err(FormatError::invalid(
                cols.path,
                format!("data_{}, {IMAGE_PIXEL_SIZE}, row {}", cols.block, r + 1),
                format!("pixel size {v} Å: expected a positive number"),
            ));
        }
    }
    Ok(Some(p))
}

/// The pixel size of a file that gives none: the option, else the first stack's MRC header.
///
/// `field` and `expected` name, for the error, where the file should have given it.
pub(crate) fn fallback_pixel_size(
    path: &Path,
    field: &str,
    expected: &str,
    opts: &StarOptions,
    first_stack: Option<PathBuf>,
) -> Result<f64> {
    if let Some(a) = opts.apix {
        if a.is_finite() && a > 0.0 {
            return Ok(a);
        }
        return Err(FormatError::invalid(
            path,
            "apix",
            format!("pixel size {a} Å given: expected a positive number"),
        ));
    }
    let why = match &first_stack {
        None => "and no image names a stack whose header could give one".to_owned(),
        Some(stack) => match stack_voxel_size(stack) {
            Ok(Some(a)) if a.is_finite() && a > 0.0 => return Ok(a),
            Ok(_) => format!("and the header of {} gives none", stack.display()),
            Err(e) => format!("and the header of the first stack could not be read ({e})"),
        },
    };
    Err(FormatError::invalid(
        path,
        field,
        format!("no pixel size: expected {expected}, {why}\nhint: pass the pixel size with --apix"),
    ))
}

/// The voxel size an MRC stack's header records, if any.
pub(super) fn stack_voxel_size(stack: &Path) -> Result<Option<f64>> {
    Ok(crate::mrc::read_header(stack)?.voxel_size())
}

/// The image edge (NX) of an existing, readable MRC stack; `None` otherwise, since the image
/// size is optional metadata and a metadata-only file has no stacks beside it.
pub(crate) fn stack_edge(stack: &Path) -> Option<usize> {
    if !stack.is_file() {
        return None;
    }
    let header = crate::mrc::read_header(stack).ok()?;
    usize::try_from(header.nx).ok().filter(|&nx| nx > 0)
}

/// Column access that records which columns were used, so the rest become extras.
pub(super) struct Columns<'t> {
    table: &'t StarTable,
    path: &'t Path,
    block: &'t str,
    used: Vec<bool>,
}

impl<'t> Columns<'t> {
    fn new(table: &'t StarTable, path: &'t Path, block: &'t str) -> Self {
        Self {
            table,
            path,
            block,
            used: vec![false; table.width()],
        }
    }

    /// The column `label`, marked as used.
    fn take(&mut self, label: &str) -> Option<usize> {
        let c = self.table.column(label)?;
        self.used[c] = true;
        Some(c)
    }

    /// Finite numbers of column `label`, or `None` when it is absent.
    fn num(&mut self, label: &str) -> Result<Option<Vec<f64>>> {
        let Some(c) = self.take(label) else {
            return Ok(None);
        };
        let mut out = Vec::with_capacity(self.table.len());
        for (r, text) in self.table.column_values(c).enumerate() {
            match text.parse::<f64>() {
                Ok(v) if v.is_finite() => out.push(v),
                _ => return Err(self.bad_value(label, r, text, "a finite number")),
            }
        }
        Ok(Some(out))
    }

    fn num_or(&mut self, label: &str, default: f64) -> Result<Vec<f64>> {
        Ok(self
            .num(label)?
            .unwrap_or_else(|| vec![default; self.table.len()]))
    }

    fn required(&mut self, label: &str) -> Result<Vec<f64>> {
        self.num(label)?
            .ok_or_else(|| self.missing(label, "it is required"))
    }

    /// Integers of column `label` (as written: `3`, or `3.000000`), as f64.
    fn int(&mut self, label: &str) -> Result<Option<Vec<f64>>> {
        let Some(values) = self.num(label)? else {
            return Ok(None);
        };
        let c = self.table.column(label).expect("just read");
        for (r, v) in values.iter().enumerate() {
            if v.fract() != 0.0 {
                return Err(self.bad_value(label, r, self.table.cell(r, c), "an integer"));
            }
        }
        Ok(Some(values))
    }

    fn to_u32(&self, label: &str, row: usize, v: f64) -> Result<u32> {
        if v >= 0.0 && v <= u32::MAX as f64 && v.fract() == 0.0 {
            return Ok(v as u32);
        }
        let c = self.table.column(label);
        let text = c.map_or(String::new(), |c| self.table.cell(row, c).to_owned());
        Err(self.bad_value(label, row, &text, "a non-negative integer"))
    }

    fn missing(&self, label: &str, why: &str) -> FormatError {
        FormatError::invalid(
            self.path,
            format!("data_{}, {label}", self.block),
            format!("column {label} is missing: {why}"),
        )
    }

    fn bad_value(&self, label: &str, row: usize, text: &str, expected: &str) -> FormatError {
        FormatError::invalid(
            self.path,
            format!("data_{}, {label}, row {}", self.block, row + 1),
            format!("found {text:?}, expected {expected}"),
        )
    }

    /// The unused columns as text, in file order.
    fn extra(&self) -> Vec<(String, Vec<String>)> {
        (0..self.table.width())
            .filter(|&c| !self.used[c])
            .map(|c| {
                (
                    self.table.labels[c].clone(),
                    self.table.column_values(c).map(str::to_owned).collect(),
                )
            })
            .collect()
    }
}
