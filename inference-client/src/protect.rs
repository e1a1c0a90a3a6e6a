//! Protected words, sans IO: whole space-separated words (the engine's emote codes) that styling delivers unchanged.
//!
//! The engine computes Twitch's `emotes` tag from the delivered text, so a code that styling splits, re-cases,
//! glues punctuation to, drops or duplicates changes what viewers see. A protected word matches a whole word of the
//! sanitised message, case-sensitively, as Twitch matches emote codes: `twiGG!` or `twigg` is not `twiGG` and is
//! styled like any other word.
//!
//! - The local rewriter never touches them (see [`crate::style`]): no comma after one, no closing punctuation after
//!   one, no decoration that contains one, and a message cut at [`STYLED_CHARS_MAX`] never ends in a fragment of a
//!   longer word that happens to spell one ([`ProtectedWords::push_sanitized`]).
//! - The LLM path hides them from the model ([`ProtectedWords::shield`]): each occurrence becomes a numbered
//!   placeholder, `[E1]`, `[E2]`, …, in order. Against SmolLM2-135M-Instruct on the styles' prompts, 12 of 48
//!   completions kept every `[E1]`-style placeholder where 3 of 48 kept the codes themselves (the model re-spells
//!   camel-case words it does not know: `twiLOL` became `lol`); `EMOTE1`, `:e1:` and `{1}` did worse than either.
//!   [`ProtectedWords::restore`] puts the codes back and checks the completion: every placeholder exactly once as a
//!   word of its own, no placeholder the message did not have, no protected word of the model's own. Anything else
//!   gets the local rewrite, counted as [`crate::FallbackReason::Emotes`].
//!
//! Architecture invariant: pure functions of their arguments; nothing here does IO, reads a clock or draws
//! randomness.

use std::collections::HashSet;
use std::fmt::Write as _;

use crate::sanitize::{self, Summary};
use crate::style::STYLES;
use crate::{Error, ErrorKind, STYLED_CHARS_MAX};

/// Most protected words a configuration may name; Twitch's global and channel emote sets are far smaller.
pub const PROTECTED_WORDS_MAX: usize = 4_096;

/// Longest protected word, in characters; Twitch's emote codes are at most a few dozen.
pub const PROTECTED_WORD_CHARS_MAX: usize = 64;

/// Punctuation a model may glue to the end of a placeholder (`[E1],`); restoring drops it, so the code stays a
/// word of its own rather than costing the whole completion.
const PLACEHOLDER_TRAILING: &[char] = &[',', '.', '!', '?', ';', ':'];

/// Checks one protected word: one to [`PROTECTED_WORD_CHARS_MAX`] characters, no whitespace, nothing the sanitiser
/// would change (so it survives sanitising as it is), and not containing a placeholder (`[E1]`) it could be
/// mistaken for.
pub fn check_protected_word(word: &str) -> Result<(), Error> {
    let invalid = |why: &str| {
        Err(Error::new(
            ErrorKind::InvalidConfig,
            format!("protected word {word:?} {why}"),
        ))
    };
    if word.is_empty() {
        return invalid("is empty");
    }
    if word.chars().count() > PROTECTED_WORD_CHARS_MAX {
        return invalid("is longer than PROTECTED_WORD_CHARS_MAX characters");
    }
    if word.contains(' ') || sanitize::sanitize_text(word, PROTECTED_WORD_CHARS_MAX) != word {
        return invalid("must be one word without control, bidi or space characters");
    }
    if contains_placeholder(word) {
        return invalid("contains a placeholder like [E1]");
    }
    Ok(())
}

/// How a sanitised message goes to the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Shield {
    /// It has no protected word: it goes as it is.
    Plain,
    /// It is protected words alone: there is nothing to style.
    Only,
    /// It has protected words and text that already reads as a placeholder: the two could not be told apart in
    /// the completion, so it gets the local rewrite.
    Conflict,
    /// `text` is the message with its protected words, `codes` in order, replaced by `[E1]`, `[E2]`, ….
    Placeholders { text: String, codes: Vec<Box<str>> },
}

/// A set of protected words, prepared for the hot path: one hash lookup per word of a message, skipped for words
/// whose length no protected word has.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProtectedWords {
    words: HashSet<Box<str>>,
    bytes_min: usize,
    bytes_max: usize,
    /// Whether a protected word ends in ASCII punctuation, so that the rewriter's comma or closing punctuation
    /// could turn a word into one; almost never, so the check that allocates is skipped.
    ends_in_punctuation: bool,
    /// The local rewriter's decorations (of every style) that have a protected word among their words: the rewriter
    /// leaves them out, so styling never adds an occurrence.
    banned_decorations: HashSet<&'static str>,
}

impl ProtectedWords {
    /// Prepares `words`; words that [`check_protected_word`] rejects, and any beyond [`PROTECTED_WORDS_MAX`], are
    /// left out ([`crate::StylerConfig::validate`] reports them).
    pub fn new<I, S>(words: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let words: HashSet<Box<str>> = words
            .into_iter()
            .filter(|word| check_protected_word(word.as_ref()).is_ok())
            .take(PROTECTED_WORDS_MAX)
            .map(|word| word.as_ref().into())
            .collect();
        let bytes_min = words.iter().map(|word| word.len()).min().unwrap_or(0);
        let bytes_max = words.iter().map(|word| word.len()).max().unwrap_or(0);
        let ends_in_punctuation = words
            .iter()
            .any(|word| word.ends_with(|c: char| c.is_ascii_punctuation()));
        let banned_decorations = STYLES
            .iter()
            .flat_map(|style| {
                let rules = &style.local;
                rules
                    .openers
                    .iter()
                    .chain(rules.interjections)
                    .chain(rules.closers)
                    .chain(rules.emoji)
            })
            .map(|piece| piece.text)
            .filter(|text| text.split(' ').any(|word| words.contains(word)))
            .collect();
        ProtectedWords {
            words,
            bytes_min,
            bytes_max,
            ends_in_punctuation,
            banned_decorations,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    pub fn len(&self) -> usize {
        self.words.len()
    }

    /// Whether `word` (one whole word, nothing around it) is protected.
    pub fn contains(&self, word: &str) -> bool {
        !self.words.is_empty()
            && (self.bytes_min..=self.bytes_max).contains(&word.len())
            && self.words.contains(word)
    }

    /// The protected words of a sanitised text, in order, each occurrence once.
    pub fn occurrences<'a>(&'a self, text: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        text.split(' ').filter(|word| self.contains(word))
    }

    /// Whether `word` followed by `c` is a protected word: the rewriter must not append `c` to it.
    pub(crate) fn forms_with(&self, word: &str, c: char) -> bool {
        if !self.ends_in_punctuation {
            return false;
        }
        let mut joined = String::with_capacity(word.len() + c.len_utf8());
        joined.push_str(word);
        joined.push(c);
        self.contains(&joined)
    }

    /// Whether the local rewriter must leave out this decoration: it has a protected word among its words.
    pub(crate) fn bans(&self, decoration: &str) -> bool {
        !self.banned_decorations.is_empty() && self.banned_decorations.contains(decoration)
    }

    /// Whether a non-empty sanitised text is protected words alone.
    pub(crate) fn covers(&self, sanitized: &str) -> bool {
        !self.is_empty()
            && !sanitized.is_empty()
            && sanitized.split(' ').all(|word| self.contains(word))
    }

    /// [`crate::sanitize::push_sanitized`], except that a cut at `chars_max` that falls inside a word never leaves a
    /// fragment that spells a protected word (`twiGGs` cut to `twiGG`): the fragment goes, so styling adds no
    /// occurrence the message did not have.
    pub(crate) fn push_sanitized(&self, out: &mut String, text: &str, chars_max: usize) -> Summary {
        let start = out.len();
        let mut summary = sanitize::push_sanitized(out, text, chars_max);
        if !summary.truncated || self.is_empty() {
            return summary;
        }
        let written = &out[start..];
        let last = written.rsplit(' ').next().unwrap_or("");
        if !self.contains(last) {
            return summary;
        }
        // Rare (a cut message ending in a protected word): sanitising all of it says whether a space followed. The
        // cut output is a prefix of the whole, since both come from the same pass.
        let mut whole = String::with_capacity(text.len());
        sanitize::push_sanitized(&mut whole, text, text.len());
        debug_assert!(whole.starts_with(written));
        let cut_inside_word = whole[written.len()..]
            .chars()
            .next()
            .is_some_and(|c| c != ' ');
        if cut_inside_word {
            let keep = written.len() - last.len();
            let keep = if keep > 0 { keep - 1 } else { keep };
            let dropped_chars = out[start + keep..].chars().count();
            out.truncate(start + keep);
            summary.chars -= dropped_chars;
            summary.words -= 1;
        }
        summary
    }

    /// Sanitises `text` into a new string of at most [`STYLED_CHARS_MAX`] characters, as
    /// [`ProtectedWords::push_sanitized`] does.
    pub(crate) fn sanitize(&self, text: &str) -> String {
        let mut out = String::with_capacity(text.len().min(STYLED_CHARS_MAX * 4));
        self.push_sanitized(&mut out, text, STYLED_CHARS_MAX);
        out
    }

    /// Says how a non-empty sanitised message goes to the model; see [`Shield`].
    pub(crate) fn shield(&self, sanitized: &str) -> Shield {
        if self.is_empty() {
            return Shield::Plain;
        }
        let mut codes = Vec::new();
        let mut others = false;
        for word in sanitized.split(' ') {
            if self.contains(word) {
                codes.push(word);
            } else {
                others = true;
            }
        }
        if codes.is_empty() {
            return Shield::Plain;
        }
        if !others {
            return Shield::Only;
        }
        // Protected words hold no placeholder (see `check_protected_word`), so one here is in the user's text.
        if contains_placeholder(sanitized) {
            return Shield::Conflict;
        }
        let mut text = String::with_capacity(sanitized.len());
        let mut number = 0;
        for (index, word) in sanitized.split(' ').enumerate() {
            if index > 0 {
                text.push(' ');
            }
            if self.contains(word) {
                number += 1;
                let _ = write!(text, "[E{number}]");
            } else {
                text.push_str(word);
            }
        }
        Shield::Placeholders {
            text,
            codes: codes.into_iter().map(Box::from).collect(),
        }
    }

    /// Puts `codes` back for the placeholders of a sanitised completion (`[E1]` is `codes[0]`) and checks it; `None`
    /// when a placeholder is missing, altered (`[e1]`, `lol[E1]`), repeated or not the message's (`[E3]` of two),
    /// when the completion has a protected word of its own, or when the restored text exceeds
    /// [`STYLED_CHARS_MAX`]. Punctuation glued after a placeholder (`[E1],`) is dropped. With no codes the text comes
    /// back as it is, as long as it has no protected word (user text that merely looks like a placeholder stays).
    pub(crate) fn restore(&self, completion: &str, codes: &[Box<str>]) -> Option<String> {
        if self.is_empty() {
            return Some(completion.to_owned());
        }
        let extra_bytes: usize = codes.iter().map(|code| code.len()).sum();
        let mut out = String::with_capacity(completion.len() + extra_bytes);
        let mut seen = vec![false; codes.len()];
        for (index, word) in completion.split(' ').enumerate() {
            if index > 0 {
                out.push(' ');
            }
            if self.contains(word) {
                return None;
            }
            if !codes.is_empty() {
                if let Some((number, rest)) = parse_placeholder(word)
                    && rest.chars().all(|c| PLACEHOLDER_TRAILING.contains(&c))
                {
                    let slot = seen.get_mut(number.checked_sub(1)?)?;
                    if std::mem::replace(slot, true) {
                        return None;
                    }
                    out.push_str(&codes[number - 1]);
                    continue;
                }
                if contains_placeholder(word) {
                    return None;
                }
            }
            out.push_str(word);
        }
        if !seen.iter().all(|&seen| seen) || out.chars().count() > STYLED_CHARS_MAX {
            return None;
        }
        Some(out)
    }
}

/// A placeholder-shaped text at the start of `word` (`[E` digits `]`): its number and the rest of the word. The
/// number is 0, which no placeholder has, for digits that are not written as placeholders are (`[E01]`, or more
/// than a message of [`STYLED_CHARS_MAX`] characters can hold), so an altered placeholder never passes for another.
fn parse_placeholder(word: &str) -> Option<(usize, &str)> {
    let rest = word.strip_prefix("[E")?;
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return None;
    }
    let after = rest[digits..].strip_prefix(']')?;
    let number = if digits > 4 || rest.starts_with('0') {
        0
    } else {
        rest[..digits].parse().unwrap_or(0)
    };
    Some((number, after))
}

/// Whether `text` has a placeholder anywhere, glued to other text or not.
fn contains_placeholder(text: &str) -> bool {
    text.match_indices("[E")
        .any(|(at, _)| parse_placeholder(&text[at..]).is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn emotes() -> ProtectedWords {
        ProtectedWords::new(["twiGG", "twiHype", "twiSkibidi", "twiLOL"])
    }

    fn codes(words: &[&str]) -> Vec<Box<str>> {
        words.iter().map(|word| Box::from(*word)).collect()
    }

    #[test]
    fn words_are_checked_and_bad_ones_left_out() {
        for good in ["twiGG", "Kappa", "<3", ":)", "LUL", "pog!"] {
            assert!(check_protected_word(good).is_ok(), "{good:?}");
        }
        let long = "x".repeat(PROTECTED_WORD_CHARS_MAX + 1);
        for bad in [
            "",
            "two words",
            "tab\tword",
            "nul\u{0}",
            "\u{202E}rtl",
            "[E1]",
            "x[E12]y",
            long.as_str(),
        ] {
            assert_eq!(
                check_protected_word(bad).map_err(|error| error.kind),
                Err(ErrorKind::InvalidConfig),
                "{bad:?}"
            );
        }
        let words = ProtectedWords::new(["twiGG", "", "a b", "[E2]", "twiGG"]);
        assert_eq!(words.len(), 1);
        assert!(words.contains("twiGG"));
        let many = ProtectedWords::new((0..PROTECTED_WORDS_MAX + 10).map(|n| format!("w{n}")));
        assert_eq!(many.len(), PROTECTED_WORDS_MAX);
    }

    #[test]
    fn only_whole_words_with_their_case_are_protected() {
        let words = emotes();
        for word in ["twiGG", "twiHype", "twiLOL"] {
            assert!(words.contains(word), "{word:?}");
        }
        for word in [
            "twigg", "TWIGG", "twiGG!", "twiGG,", "(twiGG)", "twiG", "twiGGG", "", " twiGG",
        ] {
            assert!(!words.contains(word), "{word:?}");
        }
        assert_eq!(
            words
                .occurrences("twiGG twiGG! hi twiHype twigg twiGG")
                .collect::<Vec<_>>(),
            ["twiGG", "twiHype", "twiGG"]
        );
        assert!(!ProtectedWords::default().contains("twiGG"));
    }

    #[test]
    fn shield_replaces_each_occurrence_in_order() {
        let words = emotes();
        let cases: &[(&str, Shield)] = &[
            ("gg wp", Shield::Plain),
            ("twiGG! gg", Shield::Plain),
            ("literal [E1] text", Shield::Plain),
            ("twiGG", Shield::Only),
            ("twiGG twiHype twiGG", Shield::Only),
            ("[E1] twiGG", Shield::Conflict),
            ("gg [E7], twiGG", Shield::Conflict),
            ("gg [E0] twiGG", Shield::Conflict),
            (
                "twiGG that was close",
                Shield::Placeholders {
                    text: "[E1] that was close".into(),
                    codes: codes(&["twiGG"]),
                },
            ),
            (
                "what twiHype a twiGG play twiHype",
                Shield::Placeholders {
                    text: "what [E1] a [E2] play [E3]".into(),
                    codes: codes(&["twiHype", "twiGG", "twiHype"]),
                },
            ),
            (
                "twiLOL twiLOL lol twiGG!",
                Shield::Placeholders {
                    text: "[E1] [E2] lol twiGG!".into(),
                    codes: codes(&["twiLOL", "twiLOL"]),
                },
            ),
        ];
        for (message, expected) in cases {
            assert_eq!(&words.shield(message), expected, "{message:?}");
        }
        assert_eq!(ProtectedWords::default().shield("twiGG"), Shield::Plain);
    }

    #[test]
    fn restore_puts_codes_back_or_refuses() {
        let words = emotes();
        let two = codes(&["twiGG", "twiHype"]);
        let kept: &[(&str, &str)] = &[
            (
                "fr fr [E1] so close [E2] 💀",
                "fr fr twiGG so close twiHype 💀",
            ),
            ("[E2] then [E1]", "twiHype then twiGG"),
            (
                "Arr, [E1], what a play [E2]!",
                "Arr, twiGG what a play twiHype",
            ),
            ("[E1]. [E2]?!", "twiGG twiHype"),
        ];
        for (completion, expected) in kept {
            assert_eq!(
                words.restore(completion, &two).as_deref(),
                Some(*expected),
                "{completion:?}"
            );
        }
        for refused in [
            "fr fr so close [E2]",
            "fr fr [e1] so close [E2]",
            "fr fr lol[E1] so close [E2]",
            "fr fr [E1]'s close [E2]",
            "fr fr ([E1]) close [E2]",
            "[E1] [E1] [E2]",
            "[E1] [E2] [E3]",
            "[E0] [E1] [E2]",
            "[E01] [E1] [E2]",
            "[E1] [E2] [E00001]",
            "[E1] [E2] twiLOL",
            "[E1] [E2] twiGG",
            "fr fr twiGG so close twiHype",
        ] {
            assert_eq!(words.restore(refused, &two), None, "{refused:?}");
        }
        // Without protected words in the message, the completion keeps literal placeholders but may add no code.
        assert_eq!(
            words.restore("ngl [E1] is my fav", &[]).as_deref(),
            Some("ngl [E1] is my fav")
        );
        assert_eq!(words.restore("ngl twiHype is my fav", &[]), None);
        assert_eq!(
            words.restore("ngl twiHype! twigg", &[]).as_deref(),
            Some("ngl twiHype! twigg")
        );
        // A restored text that outgrows the limit cannot be delivered whole.
        let long_code = ProtectedWords::new(["twi".to_owned() + &"x".repeat(60)]);
        let code = codes(&[&("twi".to_owned() + &"x".repeat(60))]);
        let near_limit = format!("{} [E1]", "y".repeat(STYLED_CHARS_MAX - 10));
        assert_eq!(long_code.restore(&near_limit, &code), None);
        assert!(long_code.restore("short [E1]", &code).is_some());
    }

    #[test]
    fn a_cut_never_leaves_a_fragment_that_spells_a_protected_word() {
        let words = emotes();
        // `twiGGs` cut after its fifth character would read as `twiGG`.
        let cut_inside = format!("{} twiGGs", "x".repeat(STYLED_CHARS_MAX - 6));
        let out = words.sanitize(&cut_inside);
        assert_eq!(out, "x".repeat(STYLED_CHARS_MAX - 6));
        assert_eq!(
            sanitize::sanitize_text(&cut_inside, STYLED_CHARS_MAX),
            out + " twiGG"
        );
        let mut buffer = String::from("prefix ");
        let summary = words.push_sanitized(&mut buffer, &cut_inside, STYLED_CHARS_MAX);
        assert_eq!(summary.chars, buffer.chars().count() - 7);
        assert_eq!(summary.words, 1);
        // A whole protected word at the cut stays.
        let cut_after = format!("{} twiGG more words", "x".repeat(STYLED_CHARS_MAX - 6));
        assert!(words.sanitize(&cut_after).ends_with(" twiGG"));
        // A message that is one long word cut into a protected word leaves nothing.
        let mut buffer = String::new();
        let summary = ProtectedWords::new(["aaa"]).push_sanitized(&mut buffer, "aaaa", 3);
        assert_eq!((buffer.as_str(), summary.chars, summary.words), ("", 0, 0));
        // Nothing changes without protected words or without a cut.
        assert_eq!(
            ProtectedWords::default().sanitize(&cut_inside),
            sanitize::sanitize_text(&cut_inside, STYLED_CHARS_MAX)
        );
        assert_eq!(words.sanitize(" twiGG \t hi\n"), "twiGG hi");
    }

    #[test]
    fn decorations_with_a_protected_word_are_banned() {
        let words = ProtectedWords::new(["Arr!", "Skibidi."]);
        assert!(words.bans("Arr!"));
        assert!(words.bans("Skibidi."));
        assert!(!words.bans("Savvy?"));
        assert!(!emotes().bans("Arr!"));
        let punctuated = ProtectedWords::new(["gg!"]);
        assert!(punctuated.forms_with("gg", '!'));
        assert!(!punctuated.forms_with("gg", '.'));
        assert!(!emotes().forms_with("twiG", 'G'));
    }
}
