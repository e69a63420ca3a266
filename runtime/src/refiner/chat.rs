//! Chat-template rendering: the Jinja `chat_template` of a Hugging Face `tokenizer_config.json`,
//! rendered as transformers 4.44's `apply_chat_template(messages, tokenize=False,
//! add_generation_prompt=...)` does: a sandboxed Jinja environment with `trim_blocks` and
//! `lstrip_blocks`, loop controls, `raise_exception(msg)`, a `tojson` filter that keeps non-ASCII
//! characters, and the tokenizer's special tokens (`bos_token`, `eos_token`, ...) as variables.
//! Rendered with minijinja; the real Llama 3.1 template renders byte-identically to transformers
//! (`tests` below and the `refiner` suite on the fixture's rendered texts).

use minijinja::{Environment, ErrorKind, Value};
use serde::Serialize;

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: &str) -> Self {
        Message { role: role.to_string(), content: content.to_string() }
    }
}

/// A parsed chat template with the special-token variables it is rendered with.
#[derive(Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
    /// `bos_token`, `eos_token`, ... from `tokenizer_config.json` (strings or `AddedToken` dicts).
    special_tokens: Vec<(String, String)>,
}

/// The name the template is stored under in the environment.
const NAME: &str = "chat_template";

/// The special-token attributes transformers passes to the template (`special_tokens_map`).
const SPECIAL_TOKEN_KEYS: [&str; 7] =
    ["bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"];

impl ChatTemplate {
    /// Parses `source` (the `chat_template` string). `config` is the whole `tokenizer_config.json`,
    /// read for the special tokens.
    pub fn new(source: &str, config: &serde_json::Value) -> Result<Self, minijinja::Error> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.add_function("raise_exception", |msg: String| -> Result<Value, minijinja::Error> {
            Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_filter("tojson", tojson);
        env.add_template_owned(NAME.to_string(), source.to_string())?;
        let special_tokens = SPECIAL_TOKEN_KEYS
            .iter()
            .filter_map(|key| {
                let v = config.get(*key)?;
                let text = v.as_str().or_else(|| v.get("content").and_then(|c| c.as_str()))?;
                Some((key.to_string(), text.to_string()))
            })
            .collect();
        Ok(ChatTemplate { env, special_tokens })
    }

    /// `apply_chat_template(messages, tokenize=False, add_generation_prompt=...)`.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String, minijinja::Error> {
        let template = self.env.get_template(NAME)?;
        let mut ctx: std::collections::BTreeMap<String, Value> =
            self.special_tokens.iter().map(|(k, v)| (k.clone(), Value::from(v.as_str()))).collect();
        ctx.insert("messages".into(), Value::from_serialize(messages));
        ctx.insert("tools".into(), Value::from(()));
        ctx.insert("documents".into(), Value::from(()));
        ctx.insert("add_generation_prompt".into(), Value::from(add_generation_prompt));
        template.render(ctx)
    }
}

/// transformers' `tojson` filter: `json.dumps(x, ensure_ascii=False, indent=indent,
/// separators=None, sort_keys=False)`, marked safe.
fn tojson(value: &Value, kwargs: minijinja::value::Kwargs) -> Result<Value, minijinja::Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    kwargs.assert_all_used()?;
    let json = serde_json::to_value(value)
        .map_err(|e| minijinja::Error::new(ErrorKind::InvalidOperation, format!("tojson: {e}")))?;
    let text = match indent {
        None => python_dumps(&json),
        Some(n) => {
            let indent = " ".repeat(n);
            let mut out = Vec::new();
            let fmt = serde_json::ser::PrettyFormatter::with_indent(indent.as_bytes());
            let mut ser = serde_json::Serializer::with_formatter(&mut out, fmt);
            json.serialize(&mut ser)
                .map_err(|e| minijinja::Error::new(ErrorKind::InvalidOperation, format!("tojson: {e}")))?;
            String::from_utf8(out).expect("serde_json should write UTF-8")
        }
    };
    Ok(Value::from_safe_string(text))
}

/// Python's `json.dumps` default separators (`", "`, `": "`).
fn python_dumps(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Array(items) => {
            format!("[{}]", items.iter().map(python_dumps).collect::<Vec<_>>().join(", "))
        }
        serde_json::Value::Object(map) => format!(
            "{{{}}}",
            map.iter()
                .map(|(k, v)| format!("{}: {}", serde_json::Value::String(k.clone()), python_dumps(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whitespace_control_and_special_tokens_follow_transformers() {
        let config = serde_json::json!({"bos_token": "<s>", "eos_token": {"content": "</s>", "lstrip": false}});
        let source = "{{ bos_token }}\n{% for m in messages %}\n  [{{ m.role }}] {{ m['content'] | trim }}{{ eos_token }}\n{% endfor %}\n{% if add_generation_prompt %}[assistant]{% endif %}\n";
        let t = ChatTemplate::new(source, &config).unwrap();
        let out = t.render(&[Message::new("user", " hi ")], true).unwrap();
        // trim_blocks drops the newline after a block tag, lstrip_blocks the indentation before it,
        // and the template's single trailing newline is dropped (keep_trailing_newline=False).
        assert_eq!(out, "<s>\n  [user] hi</s>\n[assistant]");
    }

    #[test]
    fn raise_exception_and_tojson() {
        let t = ChatTemplate::new("{{ raise_exception('no ' + 'way') }}", &serde_json::json!({})).unwrap();
        let err = t.render(&[], false).unwrap_err();
        assert!(err.to_string().contains("no way"), "{err}");
        let t = ChatTemplate::new("{{ {'a': [1, 'é']} | tojson }}", &serde_json::json!({})).unwrap();
        assert_eq!(t.render(&[], false).unwrap(), "{\"a\": [1, \"é\"]}");
    }
}
