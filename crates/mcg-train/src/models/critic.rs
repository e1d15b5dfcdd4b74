//! The discriminator D: a 2D CNN scoring packs of images (PacGAN).

use tch::Tensor;
use tch::nn::{self, Module};

use super::ModelConfig;

/// The discriminator: a 2D CNN without batch normalisation (WGAN-GP forbids it), one score per
/// image.
#[derive(Debug)]
pub struct Discriminator {
    net: nn::Sequential,
    pack: i64,
}

/// D's 2D CNN: three strided 4×4 convolutions with LeakyReLUs and a linear layer to
/// `outputs` scores, on inputs of `channels` planes of `n`² (consecutive rows of the input
/// are gathered into them).
fn critic_net(path: &nn::Path, cfg: &ModelConfig, channels: i64, outputs: i64) -> nn::Sequential {
    let c = cfg.discriminator_channels;
    let strided = |p: nn::Path, i: i64, o: i64| {
        nn::conv2d(
            p,
            i,
            o,
            4,
            nn::ConvConfig {
                stride: 2,
                padding: 1,
                ..Default::default()
            },
        )
    };
    let n = cfg.box_size as i64;
    let side = n / 8;
    let slope = cfg.leaky_slope;
    let act = move |x: &Tensor| x.maximum(&(x * slope));
    nn::seq()
        .add_fn(move |x| x.view([-1, channels, n, n]))
        .add(strided(path / "c1", channels, c))
        .add_fn(act)
        .add(strided(path / "c2", c, 2 * c))
        .add_fn(act)
        .add(strided(path / "c3", 2 * c, 4 * c))
        .add_fn(act)
        .add_fn(|x| x.flatten(1, -1))
        .add(nn::linear(
            path / "out",
            4 * c * side * side,
            outputs,
            Default::default(),
        ))
}

impl Discriminator {
    /// Builds D for `n`² images under `path`.
    pub fn new(path: &nn::Path, cfg: &ModelConfig) -> Self {
        let pack = cfg.pack.max(1) as i64;
        let net = critic_net(path, cfg, pack, 1);
        Self { net, pack }
    }

    /// Images per score (PacGAN's pack size).
    pub fn pack(&self) -> usize {
        self.pack as usize
    }

    /// Scores `[B / pack]` of images `[B][N][N]` (consecutive images form a pack).
    pub fn score(&self, images: &Tensor) -> Tensor {
        self.net.forward(images).squeeze_dim(1)
    }
}
