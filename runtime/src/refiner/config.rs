//! The sampling settings of a bundle's `generation_config.json` (`osp_graphs::llama::GenerationConfig`),
//! as transformers 4.44's `model.generate(ids, max_new_tokens=512)` applies them (upstream passes
//! only `max_new_tokens`, so `max_length`/`max_new_tokens` in the file do not apply).
//!
//! Defaults are transformers': `do_sample` false, `temperature` 1.0, `top_k` 50, `top_p` 1.0,
//! `min_p` unset. Settings that would add a logits processor this runtime does not implement
//! (repetition penalty, n-gram blocking, beams, ...) are refused by name instead of ignored.

use osp_graphs::llama::GenerationConfig as FileConfig;

/// The sampling-relevant part of `generation_config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationConfig {
    pub do_sample: bool,
    pub temperature: f64,
    /// 0: no top-k.
    pub top_k: usize,
    pub top_p: f64,
    pub min_p: Option<f64>,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        GenerationConfig { do_sample: false, temperature: 1.0, top_k: 50, top_p: 1.0, min_p: None }
    }
}

/// Keys whose non-default value needs a processor or search mode this runtime lacks, with the
/// value that means "off".
const UNSUPPORTED: [(&str, f64); 12] = [
    ("num_beams", 1.0),
    ("num_beam_groups", 1.0),
    ("penalty_alpha", 0.0),
    ("repetition_penalty", 1.0),
    ("encoder_repetition_penalty", 1.0),
    ("no_repeat_ngram_size", 0.0),
    ("typical_p", 1.0),
    ("epsilon_cutoff", 0.0),
    ("eta_cutoff", 0.0),
    ("min_length", 0.0),
    ("min_new_tokens", 0.0),
    ("guidance_scale", 1.0),
];

/// Keys that add a processor whenever they are set (not null / empty).
const UNSUPPORTED_WHEN_SET: [&str; 7] = [
    "bad_words_ids",
    "suppress_tokens",
    "begin_suppress_tokens",
    "forced_bos_token_id",
    "forced_eos_token_id",
    "sequence_bias",
    "forced_decoder_ids",
];

impl GenerationConfig {
    /// The sampling settings of `file`; an unsupported setting is an error naming its key.
    pub fn from_file_config(file: &FileConfig) -> Result<Self, String> {
        let rest = &file.upstream;
        for (key, off) in UNSUPPORTED {
            if let Some(v) = rest.get(key).filter(|v| !v.is_null()) {
                if v.as_f64() != Some(off) {
                    return Err(format!("`{key}` = {v} is not supported (only {off} is)"));
                }
            }
        }
        for key in UNSUPPORTED_WHEN_SET {
            let set = rest.get(key).is_some_and(|v| match v {
                serde_json::Value::Null => false,
                serde_json::Value::Array(a) => !a.is_empty(),
                serde_json::Value::Object(o) => !o.is_empty(),
                _ => true,
            });
            if set {
                return Err(format!("`{key}` is not supported"));
            }
        }
        if rest.get("renormalize_logits").and_then(|v| v.as_bool()) == Some(true) {
            return Err("`renormalize_logits` = true is not supported".into());
        }
        let min_p = match rest.get("min_p") {
            None | Some(serde_json::Value::Null) => None,
            Some(v) => Some(v.as_f64().ok_or_else(|| format!("`min_p` must be a number, got {v}"))?),
        };
        let d = GenerationConfig::default();
        let config = GenerationConfig {
            do_sample: file.do_sample.unwrap_or(d.do_sample),
            temperature: file.temperature.unwrap_or(d.temperature),
            // `top_k: null` turns the warper off in transformers (`0` here); absent is the default 50.
            top_k: file.top_k.map_or(d.top_k, |k| k.unwrap_or(0)),
            top_p: file.top_p.unwrap_or(d.top_p),
            min_p,
        };
        config.check()?;
        Ok(config)
    }

    /// The rules transformers' warpers enforce at construction.
    pub fn check(&self) -> Result<(), String> {
        if self.do_sample {
            if !(self.temperature.is_finite() && self.temperature > 0.0) {
                return Err(format!("`temperature` must be a strictly positive number, got {}", self.temperature));
            }
            if !(0.0..=1.0).contains(&self.top_p) {
                return Err(format!("`top_p` must be a number in [0, 1], got {}", self.top_p));
            }
            if let Some(p) = self.min_p {
                if !(0.0..=1.0).contains(&p) {
                    return Err(format!("`min_p` must be a number in [0, 1], got {p}"));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_json(text: &str) -> Result<GenerationConfig, String> {
        GenerationConfig::from_file_config(&serde_json::from_str(text).unwrap())
    }

    #[test]
    fn the_release_and_the_fixture_parse() {
        let release = r#"{"bos_token_id": 128000, "do_sample": true, "eos_token_id": [128001, 128008, 128009],
            "temperature": 0.6, "top_p": 0.9, "transformers_version": "4.42.3"}"#;
        let c = from_json(release).unwrap();
        assert!(c.do_sample);
        assert_eq!((c.temperature, c.top_k, c.top_p, c.min_p), (0.6, 50, 0.9, None));
        let c = from_json(r#"{"eos_token_id": 7, "min_p": 0.05}"#).unwrap();
        assert_eq!((c.do_sample, c.min_p), (false, Some(0.05)));
    }

    #[test]
    fn null_sampling_keys_read_as_transformers_reads_them() {
        // transformers 4.44: `top_k: null` means no top-k warper; null temperature / top_p mean none.
        let c = from_json(r#"{"do_sample": true, "top_k": null, "temperature": null, "top_p": null}"#).unwrap();
        assert_eq!((c.temperature, c.top_k, c.top_p), (1.0, 0, 1.0));
        assert_eq!(from_json(r#"{"do_sample": true, "top_k": 7}"#).unwrap().top_k, 7);
        assert_eq!(from_json(r#"{"do_sample": true}"#).unwrap().top_k, 50);
    }

    #[test]
    fn unsupported_settings_are_named() {
        for (json, key) in [
            (r#"{"repetition_penalty": 1.1}"#, "repetition_penalty"),
            (r#"{"num_beams": 4}"#, "num_beams"),
            (r#"{"bad_words_ids": [[3]]}"#, "bad_words_ids"),
            (r#"{"do_sample": true, "temperature": 0}"#, "temperature"),
        ] {
            let err = from_json(json).unwrap_err();
            assert!(err.contains(key), "{json}: {err}");
        }
        from_json(r#"{"repetition_penalty": 1.0, "num_beams": 1, "bad_words_ids": null}"#).unwrap();
    }
}
