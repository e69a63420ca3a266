//! The release preset `WFVAEModelConfig::d8_4x8x8()` has exactly the 260 official tensor names
//! and shapes of `../shared/reference/manifests/wfvae_d8_4x8x8.json`.

mod common;

use common::{reference_dir, B};
use osp_trainer::models::wfvae::WFVAEModelConfig;

#[test]
fn release_preset_matches_manifest() {
    let path = reference_dir().join("manifests/wfvae_d8_4x8x8.json");
    let manifest: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let mut expected: Vec<(String, Vec<usize>)> = manifest["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let shape = t["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect();
            (t["name"].as_str().unwrap().to_string(), shape)
        })
        .collect();
    assert_eq!(expected.len(), 260);

    let config = WFVAEModelConfig::d8_4x8x8();
    let release: WFVAEModelConfig = serde_json::from_value(manifest["config"].clone()).unwrap();
    assert_eq!(config, release, "preset differs from the manifest config");

    let model = config.init::<B>(&Default::default()).unwrap();
    let mut actual = model.official_tensors();
    actual.sort();
    expected.sort();
    assert_eq!(actual, expected);
    let total: usize = actual.iter().map(|(_, s)| s.iter().product::<usize>()).sum();
    assert_eq!(total as u64, manifest["total_state_dict_numel_unique"].as_u64().unwrap());
}
