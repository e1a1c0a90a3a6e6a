//! Rules for the durable settings map ([`Store::put_setting`](crate::Store::put_setting) and friends), shared by
//! both stores so that a key one accepts the other accepts too.
//!
//! Keys are `/`-separated paths such as `room/lobby/ban/42` or `user/42/profile`: at least three non-empty
//! segments. The first two segments are the key's *scope* (`room/lobby`, `user/42`); ScyllaDB partitions by it,
//! so every scan stays inside one partition. A scan prefix must therefore name a scope and a slash
//! (`room/lobby/`), optionally followed by more of a key (`room/lobby/ban/`, or a whole key).

use crate::error::{Result, StorageError};

/// Longest settings key, in bytes.
pub const SETTING_KEY_BYTES_MAX: usize = 256;
/// Largest settings value, in bytes. Values are small JSON documents (modes, a ban, a profile); the limit keeps
/// one partition row far below ScyllaDB's large-cell warnings and a fjall value inline.
pub const SETTING_VALUE_BYTES_MAX: usize = 64 << 10;

/// The scope of a prefix that starts with `<a>/<b>/`: `<a>/<b>`.
fn scope_of(text: &str) -> Option<&str> {
    let first = text.find('/')?;
    let second = first + 1 + text[first + 1..].find('/')?;
    (first > 0 && second > first + 1).then(|| &text[..second])
}

/// Checks a settings key and returns its scope.
pub(crate) fn key_scope(key: &str) -> Result<&str> {
    if key.len() > SETTING_KEY_BYTES_MAX {
        return Err(StorageError::Invalid(format!(
            "setting key is {} bytes, more than {SETTING_KEY_BYTES_MAX}",
            key.len()
        )));
    }
    if key.split('/').count() < 3 || key.split('/').any(str::is_empty) {
        return Err(StorageError::Invalid(format!(
            "setting key {key:?} must be at least three non-empty '/'-separated segments"
        )));
    }
    Ok(scope_of(key).expect("a key of three non-empty segments has a scope"))
}

/// Checks a scan prefix and returns its scope.
pub(crate) fn prefix_scope(prefix: &str) -> Result<&str> {
    if prefix.len() > SETTING_KEY_BYTES_MAX {
        return Err(StorageError::Invalid(format!(
            "setting prefix is {} bytes, more than {SETTING_KEY_BYTES_MAX}",
            prefix.len()
        )));
    }
    scope_of(prefix).ok_or_else(|| {
        StorageError::Invalid(format!(
            "setting prefix {prefix:?} must start with two non-empty segments and a '/', like \"room/lobby/\""
        ))
    })
}

/// Checks a settings value's size.
pub(crate) fn check_value(value: &[u8]) -> Result<()> {
    if value.len() > SETTING_VALUE_BYTES_MAX {
        return Err(StorageError::Invalid(format!(
            "setting value is {} bytes, more than {SETTING_VALUE_BYTES_MAX}",
            value.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_a_scope_and_a_name() {
        assert_eq!(key_scope("room/lobby/ban/42").unwrap(), "room/lobby");
        assert_eq!(key_scope("user/42/profile").unwrap(), "user/42");
        for bad in [
            "",
            "room",
            "room/lobby",
            "room/lobby/",
            "/lobby/modes",
            "room//modes",
            "room/lobby//x",
        ] {
            assert!(
                matches!(key_scope(bad), Err(StorageError::Invalid(_))),
                "{bad:?}"
            );
        }
        let long = format!("room/lobby/{}", "x".repeat(SETTING_KEY_BYTES_MAX));
        assert!(matches!(key_scope(&long), Err(StorageError::Invalid(_))));
    }

    #[test]
    fn prefixes_name_a_scope() {
        assert_eq!(prefix_scope("room/lobby/").unwrap(), "room/lobby");
        assert_eq!(prefix_scope("room/lobby/ban/").unwrap(), "room/lobby");
        assert_eq!(prefix_scope("user/42/profile").unwrap(), "user/42");
        for bad in ["", "room/", "room/lobby", "/lobby/", "room//"] {
            assert!(
                matches!(prefix_scope(bad), Err(StorageError::Invalid(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn values_are_bounded() {
        assert!(check_value(&vec![0; SETTING_VALUE_BYTES_MAX]).is_ok());
        assert!(matches!(
            check_value(&vec![0; SETTING_VALUE_BYTES_MAX + 1]),
            Err(StorageError::Invalid(_))
        ));
    }
}
