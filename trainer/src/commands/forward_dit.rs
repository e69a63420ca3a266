//! `osp-train forward dit`: loads an `OpenSoraT2V_v1_3` config and official diffusers weights
//! (single file or sharded index), reads `hidden_states`, `timestep`, `encoder_hidden_states`
//! and optionally `attention_mask`, `encoder_attention_mask` from a safetensors file, and writes
//! `sample` (written atomically).

use anyhow::Context;
use burn::tensor::backend::Backend;

use osp_trainer::io::{read_tensors_as_f32, take_tensor};
use osp_trainer::models::opensora_v1_3::OpenSoraT2V_v1_3Config;

use super::forward::ForwardFiles;

/// Runs the DiT forward pass on backend `B`.
pub fn run_on<B: Backend>(files: &ForwardFiles, device: &B::Device) -> anyhow::Result<()> {
    let model_config = OpenSoraT2V_v1_3Config::from_json_file(files.config)?;
    let mut model =
        model_config.init::<B>(device).with_context(|| format!("building the model of {}", files.config.display()))?;
    files.load_weights(|c, o| model.load_official(c, o))?;
    let tensors = read_tensors_as_f32(files.inputs)?;
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
    files.write_outputs(&[("sample".to_string(), sample.into_data())])
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use osp_graphs::Approx;
    use osp_trainer::checkpoint::LoadOptions;
    use osp_trainer::io::{read_tensors, write_tensors};

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
        let files = ForwardFiles {
            config: &dir.join("config.json"),
            weights: &dir.join("weights.safetensors"),
            inputs: &tmp.join("in.safetensors"),
            out: &tmp.join("out.safetensors"),
            options: LoadOptions::default(),
        };
        run_on::<burn::backend::NdArray<f32>>(&files, &Default::default())?;
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
