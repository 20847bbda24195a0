//! Validation of request fields and path parameters: each check returns the
//! field and the reason, so a 400 says exactly what to fix.

use crate::error::{ApiError, FieldError};

/// A required text of at most `max` characters (not bytes: the column is
/// `VARCHAR(max)`, counted in characters by every backend).
pub fn text(field: &str, value: &str, max: usize, errors: &mut Vec<FieldError>) {
    let n = value.chars().count();
    if value.trim().is_empty() {
        errors.push(FieldError::new(field, "must not be empty"));
    } else if n > max {
        errors.push(FieldError::new(
            field,
            format!("must be at most {max} characters (got {n})"),
        ));
    }
}

/// Same as [`text`], but an empty text is allowed.
pub fn optional_text(field: &str, value: &str, max: usize, errors: &mut Vec<FieldError>) {
    let n = value.chars().count();
    if n > max {
        errors.push(FieldError::new(
            field,
            format!("must be at most {max} characters (got {n})"),
        ));
    }
}

/// Ok when no check failed, else a 400 listing every failed field.
pub fn finish(errors: Vec<FieldError>) -> Result<(), ApiError> {
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(errors))
    }
}

/// Validates a single path parameter.
pub fn path_param(field: &str, value: &str, max: usize) -> Result<(), ApiError> {
    let mut errors = Vec::new();
    text(field, value, max, &mut errors);
    finish(errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_count_characters_not_bytes() {
        let mut e = Vec::new();
        text("id", &"é".repeat(20), 20, &mut e);
        assert!(e.is_empty());
        text("id", &"é".repeat(21), 20, &mut e);
        assert_eq!(e[0].field, "id");
        assert!(e[0].message.contains("at most 20"));
    }

    #[test]
    fn every_failed_field_is_listed() {
        let mut e = Vec::new();
        text("id", "", 20, &mut e);
        text("message", &"x".repeat(301), 300, &mut e);
        let err = finish(e).unwrap_err().to_string();
        assert!(
            err.contains("id: must not be empty") && err.contains("message: must be at most 300"),
            "{err}"
        );
    }
}
