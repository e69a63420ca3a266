//! `osp-train forward mt5`: loads an mT5 `config.json` and official weights, reads `input_ids`
//! (and optionally `attention_mask`, absent meaning all ones as upstream) from a safetensors file
//! of integer tensors, runs `MT5EncoderModel` and writes `last_hidden_state` (f32, atomically).

use anyhow::Context;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};

use osp_trainer::io::read_int_tensors;
use osp_trainer::models::mt5::MT5Config;

use super::forward::ForwardFiles;

/// The forward pass on any backend; `files.options.allow_partial` reports instead of failing.
pub fn run_on<B: Backend>(files: &ForwardFiles, device: &B::Device) -> anyhow::Result<()> {
    let inputs = files.inputs;
    let config = MT5Config::from_json_file(files.config)?;
    let mut model = config.init::<B>(device)?;
    files.load_weights(|c, o| model.load_official(c, o))?;
    let tensors = read_int_tensors(inputs)?;
    if let Some(extra) = tensors.keys().find(|k| *k != "input_ids" && *k != "attention_mask") {
        anyhow::bail!(
            "{}: unexpected input `{extra}`; expected `input_ids` and optionally `attention_mask`",
            inputs.display()
        );
    }
    let take = |name: &str| -> anyhow::Result<Option<Tensor<B, 2, Int>>> {
        let Some(data) = tensors.get(name) else {
            return Ok(None);
        };
        anyhow::ensure!(
            data.shape.len() == 2,
            "{}: `{name}` must have rank 2 [batch, tokens], found shape {:?}",
            inputs.display(),
            data.shape
        );
        Ok(Some(Tensor::from_data(data.clone(), device)))
    };
    let input_ids = take("input_ids")?.with_context(|| format!("{}: missing tensor `input_ids`", inputs.display()))?;
    let attention_mask = take("attention_mask")?;
    let last_hidden_state = model.forward(input_ids, attention_mask)?;
    files.write_outputs(&[("last_hidden_state".to_string(), last_hidden_state.into_data())])
}
