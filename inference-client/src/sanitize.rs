//! Sanitising of user text and of untrusted model output.
//!
//! Both go through one pass, [`push_sanitized`], that writes into a caller's buffer: control characters become
//! spaces, bidirectional override and isolate controls and byte-order marks are dropped (they let one message
//! reorder the text around it), whitespace runs collapse to one space, the ends are trimmed, and the result is cut at
//! a character limit without splitting a base character from its combining marks or an emoji from its joiners.
//! Model output additionally loses U+FFFD (what invalid byte sequences decode to) and is checked for garbage.
//!
//! Architecture invariant: pure functions over `&str`; no allocation beyond the caller's buffer in the hot path.

/// What [`push_sanitized`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Summary {
    /// Characters written.
    pub chars: usize,
    /// Space-separated words written.
    pub words: usize,
    /// Whether the text was cut at the character limit.
    pub truncated: bool,
}

/// Why a completion was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Garbage {
    /// Nothing printable was left after sanitising.
    Empty,
    /// Too few letters or digits among the characters, or one character repeated at length.
    Noise,
}

/// The longest run of one repeated character a completion may contain before it counts as noise.
pub(crate) const REPEATED_CHARS_MAX: usize = 12;

/// A completion needs at least this share (in percent) of letters and digits among its non-space characters.
pub(crate) const ALPHANUMERIC_PERCENT_MIN: usize = 40;

/// Characters dropped outright: bidirectional embeddings, overrides and isolates, and the byte-order mark.
fn is_dropped(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}' | '\u{FFFE}' | '\u{FFFF}')
}

/// Characters treated as whitespace: the Unicode white space set plus every control character (tabs, line breaks,
/// escape sequences' introducers, NUL).
fn is_space(c: char) -> bool {
    c.is_whitespace() || c.is_control()
}

/// Characters that attach to the one before them: combining marks, variation selectors, emoji modifiers, tag
/// characters and the zero-width joiner. A cut never separates them from their base.
pub(crate) fn is_extend(c: char) -> bool {
    matches!(c,
        '\u{0300}'..='\u{036F}'
        | '\u{0483}'..='\u{0489}'
        | '\u{0591}'..='\u{05BD}'
        | '\u{05BF}' | '\u{05C1}'..='\u{05C2}' | '\u{05C4}'..='\u{05C5}' | '\u{05C7}'
        | '\u{0610}'..='\u{061A}'
        | '\u{064B}'..='\u{065F}'
        | '\u{0670}'
        | '\u{06D6}'..='\u{06DC}'
        | '\u{06DF}'..='\u{06E4}'
        | '\u{06E7}'..='\u{06E8}'
        | '\u{06EA}'..='\u{06ED}'
        | '\u{0900}'..='\u{0903}'
        | '\u{093A}'..='\u{094F}'
        | '\u{0E31}' | '\u{0E34}'..='\u{0E3A}' | '\u{0E47}'..='\u{0E4E}'
        | '\u{1AB0}'..='\u{1AFF}'
        | '\u{1DC0}'..='\u{1DFF}'
        | '\u{200C}'..='\u{200D}'
        | '\u{20D0}'..='\u{20FF}'
        | '\u{FE00}'..='\u{FE0F}'
        | '\u{FE20}'..='\u{FE2F}'
        | '\u{1F3FB}'..='\u{1F3FF}'
        | '\u{E0020}'..='\u{E007F}'
        | '\u{E0100}'..='\u{E01EF}')
}

/// Appends the sanitised `text` to `out`, at most `chars_max` characters of it, and says what it wrote.
pub(crate) fn push_sanitized(out: &mut String, text: &str, chars_max: usize) -> Summary {
    push_sanitized_with(out, text, chars_max, false)
}

fn push_sanitized_with(
    out: &mut String,
    text: &str,
    chars_max: usize,
    drop_replacement: bool,
) -> Summary {
    let start = out.len();
    let mut summary = Summary::default();
    let mut pending_space = false;
    let mut cut_at = None;
    let bytes = text.as_bytes();
    let mut index = 0;
    while index < bytes.len() {
        let byte = bytes[index];
        if byte.is_ascii_graphic() {
            // Fast path: a run of printable ASCII is copied in one go; most chat is mostly this.
            let run_start = index;
            while index < bytes.len() && bytes[index].is_ascii_graphic() {
                index += 1;
            }
            let separator = usize::from(pending_space);
            let fits = chars_max.saturating_sub(summary.chars + separator);
            let run = index - run_start;
            if fits == 0 {
                cut_at = Some(char::from(byte));
                break;
            }
            if pending_space {
                out.push(' ');
                summary.chars += 1;
                summary.words += 1;
                pending_space = false;
            } else if summary.chars == 0 {
                summary.words = 1;
            }
            // ASCII bytes are whole characters, so any byte offset in the run is a character boundary.
            let taken = run.min(fits);
            out.push_str(&text[run_start..run_start + taken]);
            summary.chars += taken;
            if taken < run {
                cut_at = Some(char::from(bytes[run_start + taken]));
                break;
            }
            continue;
        }
        if byte < 0x80 {
            // ASCII space or control character: both separate words.
            pending_space = summary.chars > 0;
            index += 1;
            continue;
        }
        let Some(c) = text[index..].chars().next() else {
            break;
        };
        index += c.len_utf8();
        if is_space(c) {
            pending_space = summary.chars > 0;
            continue;
        }
        if is_dropped(c) || (drop_replacement && c == '\u{FFFD}') {
            continue;
        }
        let needed = if pending_space { 2 } else { 1 };
        if summary.chars + needed > chars_max {
            cut_at = Some(c);
            break;
        }
        if pending_space {
            out.push(' ');
            summary.chars += 1;
            summary.words += 1;
            pending_space = false;
        } else if summary.chars == 0 {
            summary.words = 1;
        }
        out.push(c);
        summary.chars += 1;
    }
    if let Some(mut next) = cut_at {
        summary.truncated = true;
        // Back off to the start of the cluster the cut fell into, so no mark is left without its base.
        while out.len() > start {
            let Some(last) = out[start..].chars().next_back() else {
                break;
            };
            if !(is_extend(next) || last == '\u{200D}') {
                break;
            }
            out.pop();
            summary.chars -= 1;
            next = last;
        }
        while out.len() > start && out.ends_with(' ') {
            out.pop();
            summary.chars -= 1;
        }
        summary.words = out[start..]
            .split(' ')
            .filter(|word| !word.is_empty())
            .count();
    }
    summary
}

/// Sanitises `text` into a new string (at most `chars_max` characters).
pub fn sanitize_text(text: &str, chars_max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(chars_max * 4));
    push_sanitized(&mut out, text, chars_max);
    out
}

/// Sanitises a model completion and decides whether it is usable.
///
/// Surrounding quotes that models like to add are removed; the result is at most `chars_max` characters with no
/// control, bidirectional-control or replacement characters.
pub fn sanitize_completion(raw: &str, chars_max: usize) -> Result<String, Garbage> {
    let mut out = String::with_capacity(raw.len().min(chars_max * 4));
    let summary = push_sanitized_with(&mut out, raw, chars_max, true);
    if summary.chars == 0 {
        return Err(Garbage::Empty);
    }
    let unquoted = out.trim_matches(|c| c == '"' || c == '\'' || c == ' ');
    if unquoted.is_empty() {
        return Err(Garbage::Empty);
    }
    let mut visible = 0usize;
    let mut alphanumeric = 0usize;
    let mut run = 0usize;
    let mut previous = ' ';
    for c in unquoted.chars() {
        if c == previous {
            run += 1;
            if run >= REPEATED_CHARS_MAX {
                return Err(Garbage::Noise);
            }
        } else {
            run = 0;
            previous = c;
        }
        if c == ' ' {
            continue;
        }
        visible += 1;
        if c.is_alphanumeric() {
            alphanumeric += 1;
        }
    }
    if alphanumeric * 100 < visible * ALPHANUMERIC_PERCENT_MIN {
        return Err(Garbage::Noise);
    }
    if unquoted.len() == out.len() {
        Ok(out)
    } else {
        Ok(unquoted.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chars(s: &str) -> usize {
        s.chars().count()
    }

    #[test]
    fn sanitize_table() {
        let cases: &[(&str, &str)] = &[
            ("hi there", "hi there"),
            ("  hi\t\tthere \n", "hi there"),
            ("a\u{0}b\u{1b}[31mc", "a b [31mc"),
            ("evil\u{202E}txet", "eviltxet"),
            ("\u{2067}שלום\u{2069} world", "שלום world"),
            ("\u{FEFF}bom", "bom"),
            ("line\u{2028}sep", "line sep"),
            ("café ñ", "café ñ"),
            ("e\u{301}", "e\u{301}"),
            ("👨‍👩‍👧 family", "👨‍👩‍👧 family"),
            ("", ""),
            (" \n\t ", ""),
        ];
        for (input, expected) in cases {
            assert_eq!(sanitize_text(input, 500), *expected, "input {input:?}");
        }
    }

    #[test]
    fn word_counts() {
        let mut out = String::new();
        let summary = push_sanitized(&mut out, "  one two\n\nthree  ", 500);
        assert_eq!(
            summary,
            Summary {
                chars: 13,
                words: 3,
                truncated: false
            }
        );
        out.clear();
        assert_eq!(push_sanitized(&mut out, "x", 500).words, 1);
        out.clear();
        assert_eq!(push_sanitized(&mut out, "", 500).words, 0);
    }

    #[test]
    fn truncation_keeps_clusters() {
        // 'e' + combining acute repeated: a cut may not leave a bare 'e' whose accent was cut off.
        let text = "e\u{301}".repeat(300);
        let out = sanitize_text(&text, 501);
        assert!(chars(&out) <= 501);
        assert!(
            out.ends_with('\u{301}'),
            "cut inside a cluster: {:?}",
            out.chars().last()
        );
        let out = sanitize_text(&text, 500);
        assert_eq!(chars(&out), 500);

        // A ZWJ sequence is one cluster: a cut inside it drops all of it.
        let family = "ab 👨‍👩‍👧";
        assert_eq!(sanitize_text(family, 8), family);
        assert_eq!(sanitize_text(family, 7), "ab");
        assert_eq!(sanitize_text(family, 4), "ab");
        let flag = "go 🏴‍☠️";
        assert_eq!(sanitize_text(flag, 6), "go");

        // Truncation at a space leaves no trailing space.
        let out = sanitize_text("aaaa bbbb", 5);
        assert_eq!(out, "aaaa");
        let summary = push_sanitized(&mut String::new(), "aaaa bbbb", 5);
        assert!(summary.truncated);
        assert_eq!(summary.words, 1);
    }

    #[test]
    fn completions() {
        assert_eq!(
            sanitize_completion(" \"Arr, hi there matey!\"\n", 500),
            Ok("Arr, hi there matey!".into())
        );
        assert_eq!(
            sanitize_completion("\u{FFFD}\u{FFFD}\u{1}\u{2}", 500),
            Err(Garbage::Empty)
        );
        assert_eq!(sanitize_completion("\"\"", 500), Err(Garbage::Empty));
        assert_eq!(
            sanitize_completion("!!!???...,,,;;;", 500),
            Err(Garbage::Noise)
        );
        assert_eq!(
            sanitize_completion("lolllllllllllllllllllllll", 500),
            Err(Garbage::Noise)
        );
        let example = "Hey bestie! ✨💅 Fr fr, hi bestie! No cap, slayyy. Busssin. 🤪";
        assert_eq!(sanitize_completion(example, 500).as_deref(), Ok(example));
        let long = "word ".repeat(400);
        let out = sanitize_completion(&long, 500).expect("usable");
        assert!(chars(&out) <= 500);
        let with_controls =
            sanitize_completion("hi\u{7}\u{8} the\u{FFFD}re\u{1b}", 500).expect("usable");
        assert_eq!(with_controls, "hi there");
    }
}
