//! The file holds what the crate documentation promises to other programs (h5py users).

use hdf5::types::VarLenUnicode;
use mcg_h5::write_particle_set;

use crate::common::*;

fn attr_str(loc: &hdf5::Location, name: &str) -> String {
    loc.attr(name)
        .unwrap()
        .read_scalar::<VarLenUnicode>()
        .unwrap()
        .as_str()
        .to_owned()
}

fn attr_strs(loc: &hdf5::Location, name: &str) -> Vec<String> {
    let v = loc.attr(name).unwrap().read_raw::<VarLenUnicode>().unwrap();
    v.iter().map(|s| s.as_str().to_owned()).collect()
}

#[test]
fn layout_matches_the_documentation() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("layout.h5");
    let (n, b) = (9, 4);
    let mut set = full_set(n, 1);
    set.particles[3].pose = None;
    set.extra.push(("odd/label".into(), vec!["v".into(); n]));
    let images = random_images(n, b, 2);
    write_particle_set(&path, &set, &images, 4, &mut |_, _| {}).unwrap();

    let f = hdf5::File::open(&path).unwrap();
    assert_eq!(attr_str(&f, "format"), "multicryogan-particles");
    assert_eq!(
        f.attr("format_version")
            .unwrap()
            .read_scalar::<u32>()
            .unwrap(),
        1
    );
    assert_eq!(
        f.attr("box_size").unwrap().read_scalar::<u64>().unwrap(),
        b as u64
    );
    assert_eq!(
        f.attr("count").unwrap().read_scalar::<u64>().unwrap(),
        n as u64
    );
    assert_eq!(
        f.attr("pixel_size").unwrap().read_scalar::<f64>().unwrap(),
        5.0
    );
    assert!(attr_str(&f, "software").starts_with("multicryogan "));

    let images_ds = f.dataset("images").unwrap();
    assert_eq!(images_ds.shape(), [n, b, b]);
    assert!(!images_ds.is_chunked() && images_ds.filters().is_empty());
    let first: ndarray::Array3<f32> = images_ds.read().unwrap();
    assert!(bits_equal(
        first.index_axis(ndarray::Axis(0), 5),
        images.data.index_axis(ndarray::Axis(0), 5)
    ));

    let p = f.group("particles").unwrap();
    assert_eq!(
        attr_strs(&p, "optional_columns"),
        ["pose", "class", "source_image"]
    );
    let rot = p.dataset("rot").unwrap();
    assert_eq!(attr_str(&rot, "units"), "deg");
    assert_eq!(rot.read_raw::<f64>().unwrap()[3], 0.0);
    let mask = p.dataset("pose_present").unwrap().read_raw::<u8>().unwrap();
    assert_eq!(mask, [1, 1, 1, 0, 1, 1, 1, 1, 1]);
    assert!(!p.link_exists("class_present"));
    let defocus = p.dataset("defocus_u").unwrap().read_raw::<f64>().unwrap();
    assert_eq!(defocus[7], set.particles[7].ctf.defocus_u);
    assert_eq!(attr_str(&p, "source_base_dir"), "/data/project");
    let stacks = p
        .dataset("source_image_path")
        .unwrap()
        .read_raw::<VarLenUnicode>()
        .unwrap();
    assert_eq!(stacks[6].as_str(), "Extract/job012/stack_1.mrcs");

    let extra = p.group("extra").unwrap();
    assert_eq!(
        attr_strs(&extra, "order"),
        ["_rlnMicrographName", "_mcgBeta", "odd_label"]
    );
    let odd = extra.dataset("odd_label").unwrap();
    assert_eq!(attr_str(&odd, "label"), "odd/label");
    let beta = extra
        .dataset("_mcgBeta")
        .unwrap()
        .read_raw::<VarLenUnicode>()
        .unwrap();
    assert_eq!(beta[3].as_str(), "1.500 β");

    let o = f.group("optics").unwrap();
    assert_eq!(o.dataset("id").unwrap().read_raw::<u32>().unwrap(), [1, 7]);
    assert_eq!(attr_strs(&o, "optional_columns"), ["image_size"]);
    let oe = o.group("extra").unwrap();
    assert_eq!(
        oe.dataset("row").unwrap().read_raw::<u32>().unwrap(),
        [0, 0, 1]
    );
    let labels = oe
        .dataset("label")
        .unwrap()
        .read_raw::<VarLenUnicode>()
        .unwrap();
    assert_eq!(labels[1].as_str(), "_rlnMicrographOriginalPixelSize");
    assert!(!f.link_exists("ground_truth"));
}
