//! What a run's report may show of its output: granted secrets masked, messages capped.
//!
//! A processor that prints a secret it was granted (a debug line, an error that quotes its
//! request) would otherwise have the value stored with the job and shown by `jobs show`, the
//! API and the dashboard. As CI systems do with logs, every granted secret's value is
//! replaced by [`MASK`] in stdout (before it becomes the result), stderr and the messages the
//! sandbox writes, once, where the report is assembled: everything downstream only ever sees
//! masked text.
//!
//! The value is masked as written and as JSON escapes it (a secret holding `"` or `\` is
//! written `\"` or `\\` inside a JSON string); a JSON result is also masked string by string
//! after parsing, which catches every other escaping (`\u0041`, `\/`). An empty value is not
//! masked (there is nothing to find). A value shorter than the mask is replaced by as many
//! `*` as it has bytes, so masking never makes output longer and every output cap still
//! holds; such a value is no secret anyway, since where the masks fall gives it away.

use std::borrow::Cow;

use serde_json::Value;

/// What replaces a secret's value.
pub(super) const MASK: &str = "***";

/// Longest message the sandbox reports (a trap with its backtrace, a failed host call, an
/// instantiation error); past it, the message is cut and says how much was left out.
pub(super) const MAX_MESSAGE: usize = 4 << 10;

/// The granted secrets' values of one run, in the forms output may hold them.
#[derive(Default)]
pub(super) struct Secrets {
    /// Each value and its JSON-escaped form, longest first, so that a secret containing
    /// another is masked whole.
    forms: Vec<String>,
}

impl Secrets {
    pub(super) fn new<'a>(values: impl IntoIterator<Item = &'a str>) -> Secrets {
        let mut forms = Vec::new();
        for value in values.into_iter().filter(|value| !value.is_empty()) {
            let escaped = serde_json::to_string(value).expect("a string serializes");
            let escaped = &escaped[1..escaped.len() - 1];
            if escaped != value {
                forms.push(escaped.to_string());
            }
            forms.push(value.to_string());
        }
        forms.sort_by_key(|form| std::cmp::Reverse(form.len()));
        forms.dedup();
        Secrets { forms }
    }

    /// `text` with every form of every secret masked.
    pub(super) fn mask<'t>(&self, text: &'t str) -> Cow<'t, str> {
        let mut masked = Cow::Borrowed(text);
        for form in &self.forms {
            if masked.contains(form.as_str()) {
                let mask = &MASK[..MASK.len().min(form.len())];
                masked = Cow::Owned(masked.replace(form.as_str(), mask));
            }
        }
        masked
    }

    /// The result rule on `stdout`, masked: JSON when it is JSON (masked before parsing,
    /// and each string and key again after), else the text as a JSON string; nothing (or
    /// only whitespace) is `null`. Masking can turn JSON into text (a secret that was part
    /// of a number or of the syntax), never a secret into output.
    pub(super) fn result(&self, stdout: &[u8]) -> Value {
        if stdout.trim_ascii().is_empty() {
            return Value::Null;
        }
        // Invalid UTF-8 is never JSON, so it stays text.
        let Ok(text) = std::str::from_utf8(stdout) else {
            return Value::String(self.mask(&String::from_utf8_lossy(stdout)).into_owned());
        };
        let text = self.mask(text);
        match serde_json::from_str(&text) {
            Ok(mut value) => {
                self.mask_value(&mut value);
                value
            }
            Err(_) => Value::String(text.into_owned()),
        }
    }

    fn mask_value(&self, value: &mut Value) {
        if self.forms.is_empty() {
            return;
        }
        match value {
            Value::String(text) => {
                if let Cow::Owned(masked) = self.mask(text) {
                    *text = masked;
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|item| self.mask_value(item)),
            Value::Object(fields) => {
                *fields = std::mem::take(fields)
                    .into_iter()
                    .map(|(key, mut field)| {
                        self.mask_value(&mut field);
                        (self.mask(&key).into_owned(), field)
                    })
                    .collect();
            }
            Value::Null | Value::Bool(_) | Value::Number(_) => {}
        }
    }

    /// A message for the report: masked, then capped (in that order, so a cut never leaves
    /// the start of a secret unmasked).
    pub(super) fn message(&self, message: &str) -> String {
        capped(&self.mask(message))
    }
}

/// `message` cut to [`MAX_MESSAGE`] bytes on a character boundary, with a marker saying how
/// many bytes were cut.
pub(super) fn capped(message: &str) -> String {
    if message.len() <= MAX_MESSAGE {
        return message.to_string();
    }
    let mut end = MAX_MESSAGE;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… [truncated {} bytes]", &message[..end], message.len() - end)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const SECRET: &str = r#"pa"ss\wörd"#;

    #[test]
    fn a_secret_is_masked_as_written_and_as_json_escapes_it() {
        let secrets = Secrets::new([SECRET]);
        assert_eq!(secrets.mask(&format!("token={SECRET}; again {SECRET}")), "token=***; again ***");
        assert_eq!(secrets.mask(r#"{"token": "pa\"ss\\wörd"}"#), r#"{"token": "***"}"#);
        assert!(matches!(secrets.mask("nothing to hide"), Cow::Borrowed(_)), "unmasked text is not copied");
    }

    #[test]
    fn a_json_result_is_masked_in_every_string_and_key_however_escaped() {
        let secrets = Secrets::new([SECRET]);
        let stdout = r#"{"a": "pa\"ss\\wörd", "b": ["x pa\u0022ss\u005cw\u00f6rd y"], "pa\"ss\\wörd": 1}"#;
        assert_eq!(secrets.result(stdout.as_bytes()), json!({"a": "***", "b": ["x *** y"], "***": 1}));
        let text = format!("not json: {SECRET}\n");
        assert_eq!(secrets.result(text.as_bytes()), json!("not json: ***\n"));
        let invalid_utf8 = [b"\xff ".as_slice(), SECRET.as_bytes()].concat();
        assert_eq!(secrets.result(&invalid_utf8), json!("\u{fffd} ***"));
        assert_eq!(secrets.result(b" \n"), Value::Null);
    }

    #[test]
    fn without_secrets_the_result_rule_is_unchanged() {
        let none = Secrets::default();
        assert_eq!(none.result(b"{\"a\": [1, 2]}\n"), json!({"a": [1, 2]}));
        assert_eq!(none.result(b"42"), json!(42));
        assert_eq!(none.result(b"hello\n"), json!("hello\n"));
        assert_eq!(none.result(b""), Value::Null);
    }

    #[test]
    fn a_secret_inside_a_number_or_the_syntax_turns_the_result_into_masked_text() {
        let secrets = Secrets::new(["4242"]);
        assert_eq!(secrets.result(b"[142420]"), json!("[1***0]"));
    }

    #[test]
    fn the_longest_secret_is_masked_first_and_an_empty_one_never() {
        let secrets = Secrets::new(["abc", "abcdef", ""]);
        assert_eq!(secrets.mask("abcdef abc ab"), "*** *** ab");
        assert_eq!(Secrets::new([""]).mask("text"), "text");
    }

    #[test]
    fn a_short_secret_is_masked_without_lengthening_the_output() {
        assert_eq!(Secrets::new(["x"]).mask("axbx"), "a*b*");
        assert_eq!(Secrets::new(["é"]).mask("café"), "caf**");
        assert_eq!(Secrets::new(["ab"]).mask("abc"), "**c");
    }

    #[test]
    fn messages_are_masked_then_capped_on_a_character_boundary() {
        assert_eq!(capped("short"), "short");
        let exact = "x".repeat(MAX_MESSAGE);
        assert_eq!(capped(&exact), exact);
        // A 2-byte character straddles the cap: the cut falls before it.
        let long = format!("{}é{}", "x".repeat(MAX_MESSAGE - 1), "y".repeat(100));
        let cut = capped(&long);
        assert_eq!(cut, format!("{}… [truncated 102 bytes]", "x".repeat(MAX_MESSAGE - 1)));
        // A secret across the cap is masked, not cut in half and left partly visible.
        let secret = "0123456789";
        let message = format!("{}{secret}", "m".repeat(MAX_MESSAGE - 5));
        let shown = Secrets::new([secret]).message(&message);
        assert!(shown.starts_with(&format!("{}***", "m".repeat(MAX_MESSAGE - 5))), "{shown}");
        assert!(!shown.contains("01234"), "{shown}");
    }
}
