//! `osp-train forward dit`: loads an `OpenSoraT2V_v1_3` config and official diffusers weights
//! (single file or sharded index), reads `hidden_states`, `timestep`, `encoder_hidden_states`
//! and optionally `attention_mask`, `encoder_attention_mask` from a safetensors file, and writes
//! `sample` (written atomically).

use std::path::Path;

use anyhow::Context;
use burn::tensor::backend::Backend;

use osp_trainer::checkpoint::{Checkpoint, LoadOptions};
use osp_trainer::io::{read_tensors_as_f32, take_tensor, write_tensors};
use osp_trainer::models::opensora_v1_3::OpenSoraT2V_v1_3Config;

/// Runs the DiT forward pass on backend `B`.
pub fn run_on<B: Backend>(
    config: &Path,
    weights: &Path,
    inputs: &Path,
    out: &Path,
    options: LoadOptions,
    device: &B::Device,
) -> anyhow::Result<()> {
    let model_config = OpenSoraT2V_v1_3Config::from_json_file(config)?;
    let mut model =
        model_config.init::<B>(device).with_context(|| format!("building the model of {}", config.display()))?;
    let checkpoint = Checkpoint::open(weights)?;
    let report = model.load_official(&checkpoint, options).with_context(|| format!("loading {}", weights.display()))?;
    if options.allow_partial {
        eprint!("{report}");
    }
    let tensors = read_tensors_as_f32(inputs)?;
    let optional = |name: &str| tensors.contains_key(name);
    let attention_mask =
        if optional("attention_mask") { Some(take_tensor::<B, 4>(&tensors, "attention_mask", device)?) } else { None };
    let encoder_attention_mask = if optional("encoder_attention_mask") {
        Some(take_tensor::<B, 3>(&tensors, "encoder_attention_mask", device)?)
    } else {
        None
    };
    let sample = model.forward(
        take_tensor::<B, 5>(&tensors, "hidden_states", device)?,
        take_tensor::<B, 1>(&tensors, "timestep", device)?,
        take_tensor::<B, 4>(&tensors, "encoder_hidden_states", device)?,
        attention_mask,
        encoder_attention_mask,
    )?;
    write_tensors(out, &[("sample".to_string(), sample.into_data())])
        .with_context(|| format!("writing {}", out.display()))?;
    tracing::info!(out = %out.display(), "wrote sample");
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use osp_graphs::Approx;
    use osp_trainer::io::read_tensors;

    use super::*;

    /// The fixture's `input.*` tensors under the forward-argument names, run through the command.
    #[test]
    fn writes_the_fixture_sample() -> anyhow::Result<()> {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/reference/parity/dit_tiny");
        let io = read_tensors_as_f32(dir.join("io.safetensors"))?;
        let names =
            ["hidden_states", "timestep", "encoder_hidden_states", "attention_mask_padded", "encoder_attention_mask"];
        let inputs: Vec<(String, burn::tensor::TensorData)> = names
            .iter()
            .map(|n| (n.trim_end_matches("_padded").to_string(), io[&format!("input.{n}")].clone()))
            .collect();
        let tmp = std::env::temp_dir().join(format!("osp-forward-dit-{}", std::process::id()));
        std::fs::create_dir_all(&tmp)?;
        write_tensors(tmp.join("in.safetensors"), &inputs)?;
        run_on::<burn::backend::NdArray<f32>>(
            &dir.join("config.json"),
            &dir.join("weights.safetensors"),
            &tmp.join("in.safetensors"),
            &tmp.join("out.safetensors"),
            LoadOptions::default(),
            &Default::default(),
        )?;
        let out = read_tensors(tmp.join("out.safetensors"))?;
        std::fs::remove_dir_all(&tmp)?;
        let expected = &io["output.sample_padded_mask"];
        assert_eq!(out["sample"].shape, expected.shape);
        let c = Approx::Approximate
            .compare(&out["sample"].to_vec::<f32>().expect("f32"), &expected.to_vec::<f32>().expect("f32"));
        assert!(c.ok(), "{c}");
        Ok(())
    }
}
