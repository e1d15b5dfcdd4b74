//! Adam with its state in plain tensors, so that a checkpoint saves and restores it exactly
//! (libtorch's optimisers keep their state out of reach of `tch`).

use std::collections::BTreeMap;

use tch::{Kind, Tensor};

/// Adam (Kingma & Ba) over named parameters.
#[derive(Debug)]
pub struct Adam {
    lr: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    params: Vec<(String, Tensor)>,
    /// First and second moments, by parameter name.
    m: BTreeMap<String, Tensor>,
    v: BTreeMap<String, Tensor>,
    step: i64,
}

impl Adam {
    /// Adam over `params` (the trainable tensors, with their names).
    pub fn new(params: Vec<(String, Tensor)>, lr: f64, beta1: f64, beta2: f64) -> Self {
        let m = params
            .iter()
            .map(|(k, t)| (k.clone(), t.zeros_like().detach()))
            .collect();
        let v = params
            .iter()
            .map(|(k, t)| (k.clone(), t.zeros_like().detach()))
            .collect();
        Self {
            lr,
            beta1,
            beta2,
            eps: 1e-8,
            params,
            m,
            v,
            step: 0,
        }
    }

    /// Clears the gradients.
    pub fn zero_grad(&mut self) {
        for (_, p) in &mut self.params {
            let mut g = p.grad();
            if g.defined() {
                let _ = g.detach_().zero_();
            }
        }
    }

    /// One update from the current gradients.
    pub fn step(&mut self) {
        self.step += 1;
        let t = self.step as f64;
        let c1 = 1.0 - self.beta1.powf(t);
        let c2 = 1.0 - self.beta2.powf(t);
        tch::no_grad(|| {
            for (name, p) in &mut self.params {
                let g = p.grad();
                if !g.defined() {
                    continue;
                }
                let m = self.m.get_mut(name).expect("state for every parameter");
                let v = self.v.get_mut(name).expect("state for every parameter");
                *m = &*m * self.beta1 + &g * (1.0 - self.beta1);
                *v = &*v * self.beta2 + g.square() * (1.0 - self.beta2);
                let update = (&*m / c1) / ((&*v / c2).sqrt() + self.eps) * self.lr;
                let _ = p.g_sub_(&update);
            }
        });
    }

    /// The state as named tensors (`m.NAME`, `v.NAME`, `step`), for a checkpoint.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (k, t) in &self.m {
            out.push((format!("m.{k}"), t.shallow_clone()));
        }
        for (k, t) in &self.v {
            out.push((format!("v.{k}"), t.shallow_clone()));
        }
        out.push(("step".into(), Tensor::from_slice(&[self.step])));
        out
    }

    /// Restores a state written by [`Adam::state`]; fails naming a missing or misshapen tensor.
    pub fn load_state(&mut self, state: &BTreeMap<String, Tensor>) -> Result<(), String> {
        for (prefix, table) in [("m", &mut self.m), ("v", &mut self.v)] {
            for (k, t) in table.iter_mut() {
                let key = format!("{prefix}.{k}");
                let saved = state
                    .get(&key)
                    .ok_or_else(|| format!("no optimiser tensor {key}"))?;
                if saved.size() != t.size() {
                    return Err(format!(
                        "optimiser tensor {key} has shape {:?}, expected {:?}",
                        saved.size(),
                        t.size()
                    ));
                }
                tch::no_grad(|| t.copy_(saved));
            }
        }
        let step = state.get("step").ok_or("no optimiser step")?;
        self.step = step.to_kind(Kind::Int64).int64_value(&[0]);
        Ok(())
    }

    /// Number of updates made.
    pub fn steps(&self) -> i64 {
        self.step
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn adam_minimises_a_quadratic_and_its_first_step_is_lr_sized() {
        let x = Tensor::from_slice(&[3.0f32, -2.0]).set_requires_grad(true);
        let mut opt = Adam::new(vec![("x".into(), x.shallow_clone())], 0.1, 0.9, 0.999);
        opt.zero_grad();
        x.square().sum(Kind::Float).backward();
        opt.step();
        // The first Adam step moves each coordinate by lr against the gradient's sign.
        let after: Vec<f32> = x.detach().try_into().unwrap();
        assert!(
            (after[0] - 2.9).abs() < 1e-5 && (after[1] + 1.9).abs() < 1e-5,
            "{after:?}"
        );
        for _ in 0..500 {
            opt.zero_grad();
            x.square().sum(Kind::Float).backward();
            opt.step();
        }
        assert!(x.abs().max().double_value(&[]) < 0.05);
        // Its state round-trips.
        let state: BTreeMap<String, Tensor> = opt.state().into_iter().collect();
        let y = Tensor::zeros([2], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        let mut other = Adam::new(vec![("x".into(), y)], 0.1, 0.9, 0.999);
        other.load_state(&state).unwrap();
        assert_eq!(other.steps(), 501);
    }
}
