//! Upstream's refiner prompt (`opensora/sample/caption_refiner.py`, `TEMPLATE`, commit 9fa322fb):
//! <https://github.com/PKU-YuanGroup/Open-Sora-Plan/blob/9fa322fbbb276e2bbe40b2f439e3d610af3d7690/opensora/sample/caption_refiner.py>
//!
//! Reproduced byte for byte: a leading and a trailing newline, and the two `" "` pairs that the
//! backslash line continuations inside upstream's triple-quoted string leave in the text (the
//! chat template trims the newlines; the pairs reach the model).

/// The system message upstream sends with every prompt.
pub const SYSTEM: &str = "You are a caption refiner.";

/// `TEMPLATE`; `{}` is the prompt (Python `str.format`).
pub const TEMPLATE: &str = "\nRefine the sentence: \"{}\" to contain subject description, action, scene description. \
\" \"(Optional: camera language, light and shadow, atmosphere) and conceive some additional actions to make the \
sentence more dynamic. \" \"Make sure it is a fluent sentence, not nonsense.\n";

/// `TEMPLATE.format(prompt)`: the user message for `prompt` (inserted verbatim; braces in the
/// prompt are not format fields).
pub fn user_message(prompt: &str) -> String {
    TEMPLATE.replacen("{}", prompt, 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_template_has_one_field_and_the_stray_pairs() {
        assert_eq!(TEMPLATE.matches("{}").count(), 1);
        assert_eq!(TEMPLATE.matches("\" \"").count(), 2);
        assert!(TEMPLATE.starts_with('\n') && TEMPLATE.ends_with(".\n"));
        assert_eq!(user_message("a {x} b"), TEMPLATE.replace("{}", "a {x} b"));
    }
}
