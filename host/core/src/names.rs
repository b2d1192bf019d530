//! The naming rules every way in shares: the config file, the command line and the HTTP API
//! call these, so a name one of them accepts is never refused by another.

/// Longest pool name, worker id or host name, in bytes.
pub const MAX_LABEL_BYTES: usize = 128;

/// A processor name (the file stem of `NAME.wasm`): 1 to 64 letters, digits, `_` or `-`, so
/// it is a safe file name, URL segment and metric label everywhere.
pub fn check_processor(name: &str) -> Result<(), String> {
    if is_plain_name(name) {
        Ok(())
    } else {
        Err(format!(
            "invalid processor name {name:?}: a name (the file stem of NAME.wasm) is 1 to 64 \
             letters, digits, '_' or '-'"
        ))
    }
}

/// A schedule name (its key under `schedules:`): 1 to 64 letters, digits, `_` or `-`, as a
/// processor name, so it reads cleanly in listings, logs and URLs.
pub fn check_schedule(name: &str) -> Result<(), String> {
    if is_plain_name(name) {
        Ok(())
    } else {
        Err(format!("invalid schedule name {name:?}: a schedule name is 1 to 64 letters, digits, '_' or '-'"))
    }
}

fn is_plain_name(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A pool name, worker id or host name: 1 to 128 bytes of printable text, so it reads back
/// cleanly in every listing and log line. The error completes a sentence that starts with
/// the name of the flag or field.
pub fn check_label(value: &str) -> Result<(), String> {
    if value.is_empty() || value.len() > MAX_LABEL_BYTES || value.chars().any(char::is_control) {
        return Err(format!("must be 1 to {MAX_LABEL_BYTES} bytes of printable text, got {value:?}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn processor_names_are_file_stems_of_safe_characters() {
        for good in ["echo", "a", "resize-image_v2", &"x".repeat(64)] {
            assert!(check_processor(good).is_ok(), "{good}");
        }
        for bad in ["", "../x", "a b", "a.b", "ünï", &"x".repeat(65)] {
            assert!(check_processor(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn labels_are_short_printable_text() {
        assert!(check_label("emails (eu)").is_ok());
        assert!(check_label("").is_err());
        assert!(check_label("a\nb").unwrap_err().contains("printable text"));
        assert!(check_label(&"p".repeat(MAX_LABEL_BYTES + 1)).is_err());
    }
}
