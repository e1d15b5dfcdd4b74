//! The multicryogan HDF5 particle-set container: one file holding a particle stack, its
//! complete metadata table (a [`ParticleSet`](mcg_formats::ParticleSet)) and, optionally,
//! ground-truth volumes.
//!
//! Write with [`H5Writer`] (images streamed in batches, memory flat in the number of images)
//! or [`write_particle_set`]; read with [`H5Particles`], which is an
//! [`ImageSource`](mcg_formats::ImageSource) for random batches.
//!
//! # Layout (format version 1)
//!
//! Plain HDF5 with the library's default (most compatible) format version, so HDF5 ≥ 1.8 and
//! h5py read it; no compression, no timestamps in object headers (identical input gives a
//! byte-identical file). Text is variable-length UTF-8; numbers are in native byte order
//! (little-endian on x86-64 and ARM64).
//! `n` is the number of particles, `N` the box size, `g` the number of optics groups.
//!
//! ```text
//! /                                 root group
//!   @format           str           "multicryogan-particles"
//!   @format_version   u32           1
//!   @box_size         u64           N, image edge in pixels
//!   @pixel_size       f64           pixel size of /images, Å
//!   @count            u64           n
//!   @software         str           "multicryogan <version>"
//! /images             f32 [n, N, N] image i is particle i; [y][x], x fastest (MRC order);
//!                                   contiguous layout, no filters
//! /particles          group: one 1-D dataset of length n per column
//!   @optional_columns str[]         the optional column groups present, in this order:
//!                                   "pose", "class", "source_image" (an empty list when none)
//!   optics_group      u32           row of /optics (0-based; RELION's number is /optics/id)
//!   rot, tilt, psi    f64 @units    RELION Euler angles, deg             (group "pose")
//!   shift_x, shift_y  f64 @units    origin, Å (_rlnOriginX/YAngst)
//!   defocus_u         f64 @units    Å, positive = underfocus
//!   defocus_v         f64 @units    Å
//!   defocus_angle     f64 @units    deg
//!   voltage           f64 @units    kV
//!   cs                f64 @units    mm
//!   amplitude_contrast f64          Q0
//!   phase_shift       f64 @units    deg
//!   bfactor           f64 @units    Å²
//!   scale             f64           CTF scale factor
//!   class             u32           _rlnClassNumber                      (group "class")
//!   source_image_path str           stack the image was copied from, as  (group
//!   source_image_index u64          written in the source table; 0-based  "source_image")
//!   @source_base_dir  str           folder the source paths were relative to (with
//!                                   "source_image")
//!   <group>_present   u8            only when an optional group covers some rows but not all:
//!                                   1 where present; the group's columns hold 0 or "" elsewhere
//!                                   (never NaN)
//!   extra/            group: the columns not mapped above, as text, one dataset each
//!     @order          str[]         the datasets' names in column order
//!     <name>          str [n]       @label = the column's label (for example _rlnMicrographName);
//!                                   the name is the label with `/` replaced by `_` (and `~2`,
//!                                   `~3`… appended on a clash)
//! /optics             group: one 1-D dataset of length g per column
//!   @optional_columns str[]         "image_size" when present
//!   id                u32           _rlnOpticsGroup
//!   name              str           _rlnOpticsGroupName
//!   pixel_size        f64 @units    Å
//!   image_size        u64 @units    px (group "image_size"; image_size_present as above)
//!   voltage, cs, amplitude_contrast f64   kV, mm, Q0
//!   extra/            group: the optics columns not mapped above, in long format (m rows)
//!     row             u32 [m]       row of /optics
//!     label, value    str [m]       column label and value, in each group's order
//! /ground_truth       group, optional
//!   @names            str[]         volume names in the order written
//!   <name>            f32 [M, M, M] a volume, [z][y][x], @pixel_size f64 (Å)
//! ```
//!
//! Per-particle ground truth (a conformation coordinate, a state) is simply an extra column.
//!
//! # Image references
//!
//! The pixels live in `/images`, in particle order. [`H5Particles::particle_set`] therefore
//! gives particle `i` the image `ImageRef { path: <file name>, index: i }` with `base_dir` the
//! file's folder. The references of the table the file was written from are kept as provenance
//! (`source_image_*`, [`H5Particles::source_images`]); they are never followed. A
//! `STAR + MRCS → H5 → STAR + MRCS` conversion writes a new stack from the [`H5Particles`]
//! image source and gets bit-identical images and the same metadata.
//!
//! # Why contiguous, uncompressed images
//!
//! Training reads random batches. Noisy particle images barely compress, and with a chunked
//! layout each random image would cost a whole chunk (a chunk of 64 images of 32² reads
//! 256 KiB to return 4 KiB). A contiguous block makes every run of consecutive images one read,
//! lets the reader bypass HDF5 (and its global lock) with positioned reads, and lets h5py users
//! memory-map the stack (`f["images"].id.get_offset()`). The count is known when the file is
//! created, so nothing needs to be resizable.
//!
//! # Reading from Python
//!
//! ```python
//! import h5py
//! with h5py.File("particles.h5", "r") as f:
//!     assert f.attrs["format"] == "multicryogan-particles" and f.attrs["format_version"] == 1
//!     images = f["images"][[3, 17, 42]]          # h5py wants increasing indices
//!     rot = f["particles/rot"][:]
//!     extra = f["particles/extra"]
//!     columns = {extra[k].attrs["label"]: extra[k].asstr()[:] for k in extra.attrs["order"]}
//! ```

// `deny`, not `forbid`: ndarray's `s!` macro expands to an `allow(unsafe_code)`.
#![deny(unsafe_code)]

mod error;
mod layout;
mod read;
mod write;

pub use error::{H5Error, Result};
pub use layout::{FORMAT, FORMAT_VERSION};
pub use read::{H5Particles, SourceImages};
pub use write::{H5Writer, write_particle_set};
