//! The one place where official PyTorch parameter names and Burn module paths differ.
//!
//! Models mirror the upstream module tree, so almost every Burn path *is* the PyTorch key
//! (heterogeneous `nn.Sequential`s are Burn enums whose variant names are skipped, see
//! [`SKIP_ENUM_VARIANTS`]). What cannot be mirrored is listed here:
//!
//! | official (PyTorch) key                    | Burn module path                       | why                                   |
//! |-------------------------------------------|----------------------------------------|---------------------------------------|
//! | `<ln>.weight` of a `torch.nn.LayerNorm`   | `<ln>.gamma`                           | `burn::nn::LayerNorm` field names     |
//! | `<ln>.bias` of a `torch.nn.LayerNorm`     | `<ln>.beta`                            | idem (also GroupNorm, BatchNorm)      |
//! | `<lin>.weight` `[out, in]` of `nn.Linear` | `<lin>.weight` `[in, out]` (transposed)| `burn::nn::Linear` stores `[in, out]` |
//! | `module.<key>` (DDP/EMA training dicts)   | `<key>`                                | every `module.` is removed, as upstream `init_from_ckpt` does |
//! | mT5 `encoder.embed_tokens.weight`         | `shared.weight`                        | tied to `shared.weight` upstream (`_tied_weights_keys`); held once |
//! | mT5 `decoder.*`, `lm_head.weight`         | (none: dropped)                        | the decoder half of a full mT5 release; `MT5EncoderModel` ignores it |
//! | LPIPS `net.slice{k}.N.*`                  | `net.features.N.*`                     | held flat as torchvision `vgg16.features` (slices start at N = 0, 4, 9, 16, 23) |
//! | torchvision `features.N.*`, `classifier.*`| `net.features.N.*`, (none: dropped)    | LPIPS backbone file; the classifier head is not used |
//! | BatchNorm `<bn>.num_batches_tracked`      | (none: dropped)                        | Burn's BatchNorm has no step counter (fixed momentum 0.1) |
//! | loss `logvar` (shape `[]`)                | `logvar` (shape `[1]`)                 | Burn has no rank-0 tensors; applied apart |
//!
//! The first three rows are applied by burn-store's [`PyTorchToBurnAdapter`] (loading) and
//! [`BurnToPyTorchAdapter`] (naming the model's tensors with official keys), both keyed on the
//! Burn module type, so no regex table is needed. WFVAE uses only the LayerNorm rows
//! (`...norm1.norm.weight` -> `...norm1.norm.gamma`). The LPIPS, BatchNorm-counter and `logvar` rows
//! are applied on load by [`crate::models::lpips::official_to_port_name`] and the `load_official`
//! methods of [`crate::models::discriminator::NLayerDiscriminator3D`] and
//! [`crate::losses::LPIPSWithDiscriminator3D`].
//!
//! The mT5 tie is strict (`MT5EncoderModel::load_official`): with only one of the two keys that
//! tensor is `shared.weight`; with both they must be byte-identical (shape, dtype, values), else
//! loading fails naming `encoder.embed_tokens.weight`. mT5's `T5LayerNorm` is a custom module
//! whose parameter keeps the name `weight` (no gamma rename).

use burn::store::{BurnToPyTorchAdapter, ModuleAdapter, PyTorchToBurnAdapter};

/// Burn enum variant names never appear in official keys.
pub const SKIP_ENUM_VARIANTS: bool = true;

/// Adapter applied to official tensors when they are loaded into a Burn module.
pub fn official_to_burn() -> Box<dyn ModuleAdapter> {
    Box::new(PyTorchToBurnAdapter)
}

/// Adapter that names (and lays out) a Burn module's tensors like the official checkpoint.
pub fn burn_to_official() -> Box<dyn ModuleAdapter> {
    Box::new(BurnToPyTorchAdapter)
}

/// Removes every `module.` component, as upstream `WFVAEModel.init_from_ckpt` does with
/// `key.replace("module.", "")` on EMA dicts saved from DDP-wrapped models.
pub fn strip_module_prefix(key: &str) -> String {
    key.replace("module.", "")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_every_module_component() {
        assert_eq!(strip_module_prefix("module.encoder.module.conv.weight"), "encoder.conv.weight");
        assert_eq!(strip_module_prefix("encoder.conv.weight"), "encoder.conv.weight");
    }
}
