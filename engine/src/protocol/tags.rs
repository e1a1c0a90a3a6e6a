//! IRCv3 message-tag value escaping.
//!
//! Tag values may not contain `;`, space, CR, LF or NUL on the wire, so IRCv3 escapes them:
//! `;` ↔ `\:`, space ↔ `\s`, `\` ↔ `\\`, CR ↔ `\r`, LF ↔ `\n`. Unescaping drops a trailing
//! lone backslash and keeps the character after an unknown escape (`\b` → `b`), as the
//! specification asks. NUL has no escape; the encoder drops it because a NUL byte would end the
//! line for many C-based clients.

use std::borrow::Cow;

/// Feeds `value` to `emit` as a sequence of already-escaped string pieces.
///
/// Unescaped runs are emitted as borrowed slices so the common case (no special characters)
/// is a single copy into the caller's buffer.
#[inline]
fn escape_pieces(value: &str, mut emit: impl FnMut(&str)) {
    let bytes = value.as_bytes();
    let mut run_start = 0;
    for (index, &byte) in bytes.iter().enumerate() {
        let escaped = match byte {
            b';' => "\\:",
            b' ' => "\\s",
            b'\\' => "\\\\",
            b'\r' => "\\r",
            b'\n' => "\\n",
            b'\0' => "",
            _ => continue,
        };
        // Every special byte is ASCII, so `index` always falls on a character boundary.
        if run_start < index {
            emit(&value[run_start..index]);
        }
        if !escaped.is_empty() {
            emit(escaped);
        }
        run_start = index + 1;
    }
    if run_start < bytes.len() {
        emit(&value[run_start..]);
    }
}

/// Appends the IRCv3-escaped form of `value` to `out`.
pub fn escape_tag_value(value: &str, out: &mut String) {
    escape_pieces(value, |piece| out.push_str(piece));
}

/// Appends the IRCv3-escaped form of `value` to a byte buffer; the encoders use this to write
/// straight into an outgoing line without an intermediate `String`.
pub fn escape_tag_value_bytes(value: &str, out: &mut Vec<u8>) {
    escape_pieces(value, |piece| out.extend_from_slice(piece.as_bytes()));
}

/// Returns the unescaped form of a raw tag value; borrows when there is nothing to unescape.
pub fn unescape_tag_value(raw: &str) -> Cow<'_, str> {
    let Some(first_backslash) = raw.find('\\') else {
        return Cow::Borrowed(raw);
    };
    let mut out = String::with_capacity(raw.len());
    out.push_str(&raw[..first_backslash]);
    let mut chars = raw[first_backslash..].chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some(':') => out.push(';'),
            Some('s') => out.push(' '),
            Some('\\') => out.push('\\'),
            Some('r') => out.push('\r'),
            Some('n') => out.push('\n'),
            Some(other) => out.push(other),
            // A trailing lone backslash is dropped.
            None => {}
        }
    }
    Cow::Owned(out)
}

/// Whether `key` is a well-formed tag key: an optional `+` client prefix, an optional
/// `vendor/` part (a host name), and a name of ASCII letters, digits, hyphens and underscores.
pub fn is_valid_tag_key(key: &str) -> bool {
    let key = key.strip_prefix('+').unwrap_or(key);
    let (vendor, name) = match key.rsplit_once('/') {
        Some((vendor, name)) => (Some(vendor), name),
        None => (None, key),
    };
    // Underscores are not in the IRCv3 grammar, but some clients send them in their own tags,
    // and rejecting a whole message over a key nobody reads would be needlessly strict.
    let name_ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    let vendor_ok = vendor.is_none_or(|vendor| {
        !vendor.is_empty()
            && vendor
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    });
    name_ok && vendor_ok
}

/// Whether a raw (still escaped) tag value is well-formed: no byte that the wire forbids.
pub fn is_valid_raw_tag_value(raw: &str) -> bool {
    !raw.bytes()
        .any(|b| matches!(b, b'\0' | b'\r' | b'\n' | b';' | b' '))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::test_rng::TestRng;

    fn escape(value: &str) -> String {
        let mut out = String::new();
        escape_tag_value(value, &mut out);
        out
    }

    #[test]
    fn escapes_each_special_character() {
        let cases = [
            ("", ""),
            ("plain", "plain"),
            ("a;b", "a\\:b"),
            ("a b", "a\\sb"),
            ("a\\b", "a\\\\b"),
            ("a\rb", "a\\rb"),
            ("a\nb", "a\\nb"),
            ("nul\0dropped", "nuldropped"),
            ("; \\\r\n", "\\:\\s\\\\\\r\\n"),
            ("ünïcødé ok", "ünïcødé\\sok"),
        ];
        for (input, expected) in cases {
            assert_eq!(escape(input), expected, "escaping {input:?}");
            let mut bytes = Vec::new();
            escape_tag_value_bytes(input, &mut bytes);
            assert_eq!(bytes, expected.as_bytes(), "byte escaping {input:?}");
        }
    }

    #[test]
    fn unescapes_per_ircv3() {
        let cases = [
            ("", ""),
            ("plain", "plain"),
            ("a\\:b", "a;b"),
            ("a\\sb", "a b"),
            ("a\\\\b", "a\\b"),
            ("a\\rb", "a\rb"),
            ("a\\nb", "a\nb"),
            ("trailing\\", "trailing"),
            ("unknown\\bescape", "unknownbescape"),
            ("\\\\\\", "\\"),
            ("ü\\sü", "ü ü"),
            ("\\ü", "ü"),
        ];
        for (raw, expected) in cases {
            assert_eq!(unescape_tag_value(raw), expected, "unescaping {raw:?}");
        }
    }

    #[test]
    fn unescape_borrows_when_nothing_to_do() {
        assert!(matches!(unescape_tag_value("no-escapes"), Cow::Borrowed(_)));
        assert!(matches!(unescape_tag_value("a\\sb"), Cow::Owned(_)));
    }

    #[test]
    fn random_strings_round_trip() {
        let seed = 0x5eed_7a65_u64;
        println!("tag escaping round-trip seed: {seed:#x}");
        let mut rng = TestRng::new(seed);
        let alphabet = [
            ';', ' ', '\\', '\r', '\n', 'a', 'z', ':', 's', 'r', 'n', '=', '@', 'é', '🦀',
        ];
        for _ in 0..20_000 {
            let len = rng.below(24) as usize;
            let value: String = (0..len)
                .map(|_| alphabet[rng.below(alphabet.len() as u64) as usize])
                .collect();
            let escaped = escape(&value);
            assert!(
                is_valid_raw_tag_value(&escaped),
                "seed {seed:#x}: escaped {value:?} contains a forbidden byte: {escaped:?}"
            );
            assert_eq!(
                unescape_tag_value(&escaped),
                value,
                "seed {seed:#x}: round trip of {value:?}"
            );
        }
    }

    #[test]
    fn tag_keys() {
        for key in [
            "id",
            "badge-info",
            "+client-nonce",
            "twitchy/original",
            "example.com/x-y",
            "a_b",
        ] {
            assert!(is_valid_tag_key(key), "{key} should be valid");
        }
        for key in ["", "+", "a b", "a=b", "/x", "vendor/", "é"] {
            assert!(!is_valid_tag_key(key), "{key:?} should be invalid");
        }
    }
}
