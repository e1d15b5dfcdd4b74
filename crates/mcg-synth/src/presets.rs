//! The Hsp90 benchmark's landscapes (conventions "Hsp90 benchmark"): the paper's continuous and
//! discrete sets and single conformations, built from the 2cg9 chains and the hinge of
//! [`crate::motion`].

use crate::landscape::{Body, Distribution, Landscape, Motion, Parameter, Selection};
use crate::motion::{
    HSP90_BODY_RESIDUES, HSP90_FIXED_CHAIN, HSP90_HINGE_AXIS, HSP90_HINGE_PIVOT, HSP90_MOVING_CHAIN,
};

/// File name of the Hsp90 benchmark's moving chain A (residues 12–677), relative to the
/// structures folder.
pub const HSP90_CHAIN_A_FILE: &str = "2cg9_chainA_res12-677.pdb";

/// File name of the Hsp90 benchmark's fixed chain B (residues 12–677), relative to the
/// structures folder.
pub const HSP90_CHAIN_B_FILE: &str = "2cg9_chainB_res12-677.pdb";

/// Name of the Hsp90 benchmark's opening-angle parameter β (degrees).
pub const HSP90_PARAMETER: &str = "beta";

/// The Hsp90 landscape with β drawn from `distribution` (conventions "Hsp90 benchmark").
fn hsp90(name: &str, distribution: Distribution) -> Landscape {
    let residues = Some((*HSP90_BODY_RESIDUES.start(), *HSP90_BODY_RESIDUES.end()));
    Landscape {
        name: name.into(),
        structures: vec![HSP90_CHAIN_A_FILE.into(), HSP90_CHAIN_B_FILE.into()],
        bodies: vec![
            Body {
                name: "moving".into(),
                selection: Selection {
                    chain: HSP90_MOVING_CHAIN.into(),
                    residues,
                },
            },
            Body {
                name: "fixed".into(),
                selection: Selection {
                    chain: HSP90_FIXED_CHAIN.into(),
                    residues,
                },
            },
        ],
        motions: vec![Motion::Hinge {
            body: "moving".into(),
            axis: HSP90_HINGE_AXIS,
            pivot: HSP90_HINGE_PIVOT,
            parameter: HSP90_PARAMETER.into(),
        }],
        parameters: vec![Parameter {
            name: HSP90_PARAMETER.into(),
            distribution,
        }],
        discrete_models: None,
    }
}

/// The Hsp90 benchmark's continuous set: β ~ U(0°, 20°). Structure paths are relative to the
/// Hsp90 structures folder.
pub fn hsp90_continuous() -> Landscape {
    hsp90(
        "hsp90-continuous",
        Distribution::Uniform {
            min: 0.0,
            max: 20.0,
        },
    )
}

/// One Hsp90 conformation, β fixed at `beta` degrees (0: closed, 20: open): the
/// single-conformation benchmark of CryoGAN.
pub fn hsp90_fixed(beta: f64) -> Landscape {
    let name = format!("hsp90-beta-{beta}");
    hsp90(&name, Distribution::Fixed { value: beta })
}

/// The Hsp90 benchmark's discrete set: β = 20°·Bernoulli(0.75) (25 % closed β = 0°, class 1;
/// 75 % open β = 20°, class 2). Structure paths are relative to the Hsp90 structures folder.
pub fn hsp90_discrete() -> Landscape {
    hsp90("hsp90-discrete", Distribution::bernoulli(0.75, 0.0, 20.0))
}
