//! Checkpoints: a trainer's weights, latent end points, optimiser states, step and settings
//! in one safetensors file, written atomically, restored exactly.

use std::collections::BTreeMap;
use std::path::Path;

use tch::{Device, Tensor};

use crate::TrainError;
use crate::settings::TrainConfig;
use crate::train::{Trainer, fs_error};

impl Trainer {
    /// Writes a checkpoint (weights, latent end points, optimiser states, step) to `path` as
    /// safetensors, through a temporary file.
    pub fn save(&self, path: &Path) -> Result<(), TrainError> {
        let mut named: Vec<(String, Tensor)> = self
            .vs
            .variables()
            .into_iter()
            .map(|(k, t)| (format!("model.{k}"), t.detach().to_device(Device::Cpu)))
            .collect();
        for (prefix, opt) in [("opt_g", &self.opt_g), ("opt_d", &self.opt_d)] {
            for (k, t) in opt.state() {
                named.push((format!("{prefix}.{k}"), t.to_device(Device::Cpu)));
            }
        }
        named.push((
            "trainer.step".into(),
            Tensor::from_slice(&[self.step as i64]),
        ));
        let config = serde_json::to_string(&self.config).expect("config serialises");
        let config_bytes: Vec<u8> = config.into_bytes();
        named.push(("trainer.config".into(), Tensor::from_slice(&config_bytes)));
        let staged = mcg_fsio::Staged::new(path).map_err(fs_error)?;
        let refs: Vec<(&str, &Tensor)> = named.iter().map(|(k, t)| (k.as_str(), t)).collect();
        Tensor::write_safetensors(&refs, staged.path())?;
        staged.commit().map_err(fs_error)
    }

    /// Restores a checkpoint written by [`Trainer::save`] into this trainer; fails when it was
    /// made with another model configuration, naming the difference.
    pub fn load(&mut self, path: &Path) -> Result<(), TrainError> {
        let what = |m: String| TrainError::Invalid(format!("checkpoint {}: {m}", path.display()));
        let tensors: BTreeMap<String, Tensor> = Tensor::read_safetensors(path)
            .map_err(|e| what(e.to_string()))?
            .into_iter()
            .collect();
        let config = tensors
            .get("trainer.config")
            .ok_or_else(|| what("no trainer.config".into()))?;
        let bytes: Vec<u8> = Vec::<u8>::try_from(config).map_err(|e| what(e.to_string()))?;
        let saved = serde_json::from_slice(&bytes)
            .and_then(TrainConfig::from_run_json)
            .map_err(|e| what(e.to_string()))?;
        if saved.model != self.config.model {
            return Err(what(format!(
                "made with model {} but this run's model is {}",
                serde_json::to_string(&saved.model).unwrap_or_default(),
                serde_json::to_string(&self.config.model).unwrap_or_default()
            )));
        }
        tch::no_grad(|| -> Result<(), TrainError> {
            for (k, mut t) in self.vs.variables() {
                let key = format!("model.{k}");
                let src = tensors
                    .get(&key)
                    .ok_or_else(|| what(format!("no tensor {key}")))?;
                if src.size() != t.size() {
                    return Err(what(format!(
                        "tensor {key} has shape {:?}, expected {:?}",
                        src.size(),
                        t.size()
                    )));
                }
                t.copy_(src);
            }
            Ok(())
        })?;
        for (prefix, opt) in [("opt_g.", &mut self.opt_g), ("opt_d.", &mut self.opt_d)] {
            let state: BTreeMap<String, Tensor> = tensors
                .iter()
                .filter_map(|(k, t)| {
                    k.strip_prefix(prefix)
                        .map(|s| (s.to_string(), t.to_device(self.device)))
                })
                .collect();
            opt.load_state(&state).map_err(what)?;
        }
        let step = tensors
            .get("trainer.step")
            .ok_or_else(|| what("no trainer.step".into()))?;
        self.step = step.int64_value(&[0]) as u64;
        Ok(())
    }
}
