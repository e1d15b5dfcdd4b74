//! Names of the container's groups, datasets and attributes, and the small HDF5 helpers that
//! the writer and the reader share. The crate documentation describes the layout these names
//! build.

use std::path::Path;

use hdf5::types::{TypeDescriptor, VarLenAscii, VarLenUnicode};
use hdf5::{Group, H5Type, Location};
use mcg_formats::{OpticsGroup, Particle};
use mcg_physics::{CtfParams, Shift};

use crate::error::{Context, H5Error, Result};

/// Value of the root attribute `format`.
pub const FORMAT: &str = "multicryogan-particles";

/// Value of the root attribute `format_version` that this crate writes and reads.
pub const FORMAT_VERSION: u32 = 1;

pub(crate) const ATTR_FORMAT: &str = "format";
pub(crate) const ATTR_FORMAT_VERSION: &str = "format_version";
pub(crate) const ATTR_BOX_SIZE: &str = "box_size";
pub(crate) const ATTR_PIXEL_SIZE: &str = "pixel_size";
pub(crate) const ATTR_COUNT: &str = "count";
pub(crate) const ATTR_SOFTWARE: &str = "software";
pub(crate) const ATTR_UNITS: &str = "units";
pub(crate) const ATTR_OPTIONAL: &str = "optional_columns";
pub(crate) const ATTR_ORDER: &str = "order";
pub(crate) const ATTR_LABEL: &str = "label";
pub(crate) const ATTR_NAMES: &str = "names";
pub(crate) const ATTR_SOURCE_BASE_DIR: &str = "source_base_dir";

pub(crate) const IMAGES: &str = "images";
pub(crate) const PARTICLES: &str = "particles";
pub(crate) const OPTICS: &str = "optics";
pub(crate) const EXTRA: &str = "extra";
pub(crate) const GROUND_TRUTH: &str = "ground_truth";

/// Suffix of the 0/1 mask written beside an optional column group that only some rows have.
pub(crate) const PRESENT_SUFFIX: &str = "_present";

/// Optional column groups of `/particles`, in the order `optional_columns` lists them.
pub(crate) const POSE: &str = "pose";
pub(crate) const CLASS: &str = "class";
pub(crate) const SOURCE_IMAGE: &str = "source_image";

/// Optional column group of `/optics`.
pub(crate) const IMAGE_SIZE: &str = "image_size";

/// Columns of `/particles` that every file has, with their units.
pub(crate) const PARTICLE_F64: [(&str, &str); 11] = [
    ("shift_x", "Å"),
    ("shift_y", "Å"),
    ("defocus_u", "Å"),
    ("defocus_v", "Å"),
    ("defocus_angle", "deg"),
    ("voltage", "kV"),
    ("cs", "mm"),
    ("amplitude_contrast", "1"),
    ("phase_shift", "deg"),
    ("bfactor", "Å²"),
    ("scale", "1"),
];

/// The values of [`PARTICLE_F64`] for one particle, in that order.
pub(crate) fn particle_f64(p: &Particle) -> [f64; 11] {
    let c = &p.ctf;
    [
        p.shift.x,
        p.shift.y,
        c.defocus_u,
        c.defocus_v,
        c.defocus_angle,
        c.voltage,
        c.cs,
        c.amplitude_contrast,
        c.phase_shift,
        c.bfactor,
        c.scale,
    ]
}

/// The shift and CTF of a particle from the values of [`PARTICLE_F64`].
pub(crate) fn particle_from_f64(v: [f64; 11]) -> (Shift, CtfParams) {
    let [
        x,
        y,
        defocus_u,
        defocus_v,
        defocus_angle,
        voltage,
        cs,
        amplitude_contrast,
    ] = [v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]];
    let ctf = CtfParams {
        defocus_u,
        defocus_v,
        defocus_angle,
        voltage,
        cs,
        amplitude_contrast,
        phase_shift: v[8],
        bfactor: v[9],
        scale: v[10],
    };
    (Shift { x, y }, ctf)
}

pub(crate) const PARTICLE_OPTICS_GROUP: &str = "optics_group";
pub(crate) const POSE_COLUMNS: [&str; 3] = ["rot", "tilt", "psi"];
pub(crate) const SOURCE_PATH: &str = "source_image_path";
pub(crate) const SOURCE_INDEX: &str = "source_image_index";

/// Columns of `/optics`.
pub(crate) const OPTICS_ID: &str = "id";
pub(crate) const OPTICS_NAME: &str = "name";
pub(crate) const OPTICS_F64: [(&str, &str); 4] = [
    ("pixel_size", "Å"),
    ("voltage", "kV"),
    ("cs", "mm"),
    ("amplitude_contrast", "1"),
];

/// The values of [`OPTICS_F64`] for one optics group, in that order.
pub(crate) fn optics_f64(o: &OpticsGroup) -> [f64; 4] {
    [o.pixel_size, o.voltage, o.cs, o.amplitude_contrast]
}

pub(crate) const OPTICS_EXTRA_ROW: &str = "row";
pub(crate) const OPTICS_EXTRA_LABEL: &str = "label";
pub(crate) const OPTICS_EXTRA_VALUE: &str = "value";

/// `/a/b` from a group path and a member name.
pub(crate) fn join(group: &str, name: &str) -> String {
    if group == "/" {
        format!("/{name}")
    } else {
        format!("{group}/{name}")
    }
}

/// How errors name an attribute: ``/particles attribute `order` ``.
pub(crate) fn attr_object(owner: &str, name: &str) -> String {
    format!("{owner} attribute `{name}`")
}

/// HDF5 dataset names for column labels, in order: `/` (the path separator) becomes `_`, the
/// names `.` and `..` and the empty name get a leading `_`, and a name already taken gets
/// `~2`, `~3`, … appended. RELION labels (`_rlnDefocusU`) pass unchanged.
pub(crate) fn dataset_names<'a>(labels: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for label in labels {
        let mut base = label.replace('/', "_");
        if base.is_empty() || base == "." || base == ".." {
            base.insert(0, '_');
        }
        let mut name = base.clone();
        let mut k = 2;
        while names.contains(&name) {
            name = format!("{base}~{k}");
            k += 1;
        }
        names.push(name);
    }
    names
}

/// Which rows of a table have an optional column group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Presence {
    /// No row: the columns are not written.
    Absent,
    /// Every row: the columns are written without a mask.
    All,
    /// Some rows: the columns and a mask (1 = present) are written.
    Partial(Vec<u8>),
}

impl Presence {
    pub(crate) fn of(flags: impl IntoIterator<Item = bool>) -> Self {
        let mask: Vec<u8> = flags.into_iter().map(u8::from).collect();
        if mask.iter().all(|&m| m == 1) {
            if mask.is_empty() {
                Self::Absent
            } else {
                Self::All
            }
        } else if mask.iter().all(|&m| m == 0) {
            Self::Absent
        } else {
            Self::Partial(mask)
        }
    }
}

/// Converts text for a variable-length UTF-8 dataset or attribute; HDF5 strings end at the
/// first NUL, so text holding one is refused.
pub(crate) fn to_h5_string(path: &Path, object: &str, s: &str) -> Result<VarLenUnicode> {
    s.parse::<VarLenUnicode>().map_err(|_| {
        H5Error::invalid(
            path,
            object,
            format!("the text {s:?} holds a NUL character, which HDF5 strings cannot store"),
        )
    })
}

/// Converts a column of text.
pub(crate) fn to_h5_strings<'a>(
    path: &Path,
    object: &str,
    values: impl IntoIterator<Item = &'a str>,
) -> Result<Vec<VarLenUnicode>> {
    values
        .into_iter()
        .map(|s| to_h5_string(path, object, s))
        .collect()
}

/// Creates a group that records no timestamps (so that identical content gives identical
/// files).
pub(crate) fn create_group(
    path: &Path,
    parent: &Group,
    parent_name: &str,
    name: &str,
) -> Result<Group> {
    parent
        .create_group_builder()
        .obj_track_times(false)
        .create(name)
        .at(path, &join(parent_name, name), "create group")
}

/// Writes a scalar attribute.
pub(crate) fn write_attr<T: H5Type>(
    path: &Path,
    loc: &Location,
    owner: &str,
    name: &str,
    value: &T,
) -> Result<()> {
    let object = attr_object(owner, name);
    loc.new_attr::<T>()
        .shape(())
        .create(name)
        .and_then(|a| a.write_scalar(value))
        .at(path, &object, "write attribute")
}

/// Writes a scalar UTF-8 string attribute.
pub(crate) fn write_attr_str(
    path: &Path,
    loc: &Location,
    owner: &str,
    name: &str,
    value: &str,
) -> Result<()> {
    let v = to_h5_string(path, &attr_object(owner, name), value)?;
    write_attr(path, loc, owner, name, &v)
}

/// Writes a 1-D attribute of UTF-8 strings.
pub(crate) fn write_attr_strs(
    path: &Path,
    loc: &Location,
    owner: &str,
    name: &str,
    values: &[&str],
) -> Result<()> {
    let object = attr_object(owner, name);
    let v = to_h5_strings(path, &object, values.iter().copied())?;
    loc.new_attr_builder()
        .with_data(v.as_slice())
        .create(name)
        .map(drop)
        .at(path, &object, "write attribute")
}

/// The names of the attributes of `loc`.
pub(crate) fn attr_names(path: &Path, loc: &Location, owner: &str) -> Result<Vec<String>> {
    loc.attr_names().at(path, owner, "list attributes")
}

/// Reads a scalar numeric attribute, `None` when absent.
pub(crate) fn read_attr<T: H5Type>(
    path: &Path,
    loc: &Location,
    owner: &str,
    name: &str,
) -> Result<Option<T>> {
    if !attr_names(path, loc, owner)?.iter().any(|n| n == name) {
        return Ok(None);
    }
    let object = attr_object(owner, name);
    let attr = loc.attr(name).at(path, &object, "open attribute")?;
    if !attr.is_scalar() && attr.size() != 1 {
        return Err(H5Error::invalid(
            path,
            object,
            format!("holds {} values, expected one", attr.size()),
        ));
    }
    let values = attr.read_raw::<T>().at(path, &object, "read attribute")?;
    Ok(values.into_iter().next())
}

/// Reads a string attribute (scalar, or 1-D), `None` when absent. Variable-length UTF-8 and
/// ASCII strings are accepted (h5py writes the former).
pub(crate) fn read_attr_strs(
    path: &Path,
    loc: &Location,
    owner: &str,
    name: &str,
) -> Result<Option<Vec<String>>> {
    if !attr_names(path, loc, owner)?.iter().any(|n| n == name) {
        return Ok(None);
    }
    let object = attr_object(owner, name);
    let attr = loc.attr(name).at(path, &object, "open attribute")?;
    if attr.ndim() > 1 {
        return Err(H5Error::invalid(
            path,
            object,
            format!("has shape {:?}, expected a scalar or a list", attr.shape()),
        ));
    }
    let dtype = attr.dtype().at(path, &object, "read type")?;
    let descriptor = dtype.to_descriptor().at(path, &object, "read type")?;
    match descriptor {
        TypeDescriptor::VarLenUnicode => Ok(Some(
            attr.read_raw::<VarLenUnicode>()
                .at(path, &object, "read attribute")?
                .iter()
                .map(|s| s.as_str().to_owned())
                .collect(),
        )),
        TypeDescriptor::VarLenAscii => Ok(Some(
            attr.read_raw::<VarLenAscii>()
                .at(path, &object, "read attribute")?
                .iter()
                .map(|s| s.as_str().to_owned())
                .collect(),
        )),
        other => Err(H5Error::invalid(
            path,
            object,
            format!("has type {other}, expected a variable-length string"),
        )),
    }
}

/// Reads a scalar string attribute, `None` when absent.
pub(crate) fn read_attr_str(
    path: &Path,
    loc: &Location,
    owner: &str,
    name: &str,
) -> Result<Option<String>> {
    match read_attr_strs(path, loc, owner, name)? {
        None => Ok(None),
        Some(mut v) if v.len() == 1 => Ok(v.pop()),
        Some(v) => Err(H5Error::invalid(
            path,
            attr_object(owner, name),
            format!("holds {} strings, expected one", v.len()),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dataset_names_are_safe_and_unique() {
        let names = dataset_names(["_rlnDefocusU", "a/b", "a_b", "", ".", "..", "a_b", "β x"]);
        assert_eq!(
            names,
            [
                "_rlnDefocusU",
                "a_b",
                "a_b~2",
                "_",
                "_.",
                "_..",
                "a_b~3",
                "β x"
            ]
        );
    }

    #[test]
    fn presence_classifies_rows() {
        assert_eq!(Presence::of([]), Presence::Absent);
        assert_eq!(Presence::of([false, false]), Presence::Absent);
        assert_eq!(Presence::of([true, true]), Presence::All);
        assert_eq!(
            Presence::of([true, false, true]),
            Presence::Partial(vec![1, 0, 1])
        );
    }

    #[test]
    fn join_builds_hdf5_paths() {
        assert_eq!(join("/", "images"), "/images");
        assert_eq!(join("/particles", "rot"), "/particles/rot");
    }
}
