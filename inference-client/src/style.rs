//! The styles: a prompt template for the LLM and a rule set for the local rewriter, per style.
//!
//! The local rewriter never deletes or changes the user's words. It sanitises them (see [`crate::sanitize`]) and
//! dresses them in the style: an opener, an interjection at a word boundary near the middle of longer messages, one
//! or two closers and an emoji tail, each picked by a seeded generator. That keeps every message recognisable,
//! makes the output a pure function of `(style, text, seed)`, and costs one allocation per message.
//!
//! Architecture invariant: nothing here does IO, reads a clock or draws unseeded randomness.

use crate::STYLED_CHARS_MAX;
use crate::sanitize;

/// A decoration with its length in characters, computed at compile time so the hot path never counts it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Piece {
    pub text: &'static str,
    pub chars: usize,
}

/// Counts the characters of a UTF-8 string in a `const` context: every byte that is not a continuation byte starts a
/// character.
const fn count_chars(text: &str) -> usize {
    let bytes = text.as_bytes();
    let mut chars = 0;
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] & 0xC0 != 0x80 {
            chars += 1;
        }
        index += 1;
    }
    chars
}

const fn p(text: &'static str) -> Piece {
    Piece {
        text,
        chars: count_chars(text),
    }
}

/// The local rewriter's rules for one style.
#[derive(Debug)]
pub(crate) struct LocalRules {
    /// Goes before the message.
    pub openers: &'static [Piece],
    /// Goes at a word boundary near the middle of messages of at least [`MID_WORDS_MIN`] words, set off by commas.
    pub interjections: &'static [Piece],
    /// Goes after the message; the style may use two of them.
    pub closers: &'static [Piece],
    /// The emoji tail; may be empty for styles that use none.
    pub emoji: &'static [Piece],
    /// How many closers this style uses at most (1 or 2).
    pub closers_max: usize,
    /// Ends a message that has no closing punctuation of its own before the closer, so the two read as sentences.
    pub terminal: char,
}

/// One style: its name, its one-line description, its LLM prompt template and its local rules.
#[derive(Debug)]
pub(crate) struct Style {
    pub name: &'static str,
    pub description: &'static str,
    /// The completion prompt; [`PROMPT_MESSAGE_SLOT`] is replaced by the sanitised message, which carries no line
    /// breaks, so it can neither end the prompt's line nor forge the `Rewritten:` line.
    pub prompt_template: &'static str,
    pub local: LocalRules,
}

/// Where the message goes in a prompt template.
pub(crate) const PROMPT_MESSAGE_SLOT: &str = "{message}";

/// The longest interjection, in bytes; checked by a test so the rewriter can build its parenthetical on the stack.
pub(crate) const INTERJECTION_BYTES_MAX: usize = 40;

/// Messages with fewer words than this get no mid-message interjection: it would swamp them.
pub(crate) const MID_WORDS_MIN: usize = 6;

pub(crate) static STYLES: [Style; 4] = [
    Style {
        name: "brainrot",
        description: "Gen-Z brainrot: no cap, it's giving main character energy fr fr.",
        prompt_template: "Rewrite the chat message in Gen-Z brainrot slang (bestie, fr fr, no cap, slay, bussin, \
                          emoji). Keep its meaning and its words. One line.\nMessage: {message}\nRewritten:",
        local: LocalRules {
            openers: &[
                p("Hey bestie! ✨💅"),
                p("Okay so"),
                p("Not me saying"),
                p("Bestie,"),
                p("POV:"),
                p("Lowkey"),
            ],
            interjections: &[
                p("fr fr"),
                p("no cap"),
                p("ong"),
                p("deadass"),
                p("lowkey"),
                p("on god"),
            ],
            closers: &[
                p("No cap, slayyy."),
                p("Busssin."),
                p("It's giving main character."),
                p("Periodt."),
                p("Fr fr."),
                p("Sheesh."),
                p("Rizz unlocked."),
                p("Skibidi."),
            ],
            emoji: &[
                p("🤪"),
                p("💀"),
                p("✨"),
                p("😭"),
                p("🔥"),
                p("💅"),
                p("🗿"),
                p("👀"),
            ],
            closers_max: 2,
            terminal: '!',
        },
    },
    Style {
        name: "pirate",
        description: "Pirate: arr, the message hauled aboard with a yo-ho-ho.",
        prompt_template: "Rewrite the chat message as a pirate would say it (arr, matey, ye, aye). Keep its meaning and \
                          its words. One line.\nMessage: {message}\nRewritten:",
        local: LocalRules {
            openers: &[
                p("Arr!"),
                p("Ahoy, matey!"),
                p("Avast!"),
                p("Yo-ho-ho!"),
                p("Shiver me timbers!"),
                p("Aye,"),
            ],
            interjections: &[
                p("arr"),
                p("me hearty"),
                p("by Davy Jones' locker"),
                p("savvy"),
                p("blow me down"),
            ],
            closers: &[
                p("Savvy?"),
                p("Arr!"),
                p("Or walk the plank!"),
                p("Hoist the colours!"),
                p("Yo-ho-ho!"),
                p("Fair winds, matey."),
            ],
            emoji: &[p("🏴‍☠️"), p("⚓"), p("🦜"), p("💰"), p("🗺️")],
            closers_max: 1,
            terminal: '!',
        },
    },
    Style {
        name: "shakespeare",
        description: "Shakespearean: hark, thy message in the tongue of the Bard, forsooth.",
        prompt_template: "Rewrite the chat message in the English of Shakespeare (thou, thee, hark, prithee, forsooth). \
                          Keep its meaning and its words. One line.\nMessage: {message}\nRewritten:",
        local: LocalRules {
            openers: &[
                p("Hark!"),
                p("Prithee, hear me:"),
                p("Lo!"),
                p("Good morrow!"),
                p("Verily,"),
                p("Attend:"),
            ],
            interjections: &[
                p("forsooth"),
                p("i' faith"),
                p("marry"),
                p("by my troth"),
                p("prithee"),
            ],
            closers: &[
                p("Forsooth."),
                p("So quoth I."),
                p("What say'st thou?"),
                p("Thus it is writ."),
                p("Fare thee well."),
                p("Methinks 'tis so."),
            ],
            emoji: &[p("🎭"), p("🪶"), p("📜"), p("👑")],
            closers_max: 1,
            terminal: '.',
        },
    },
    Style {
        name: "corporate",
        description: "Corporate-speak: circling back to align on this message's key deliverables.",
        prompt_template: "Rewrite the chat message in corporate jargon (circle back, synergy, leverage, align, action \
                          items). Keep its meaning and its words. One line.\nMessage: {message}\nRewritten:",
        local: LocalRules {
            openers: &[
                p("Per my last message:"),
                p("Quick sync:"),
                p("Circling back:"),
                p("Just looping you in:"),
                p("Key takeaway:"),
                p("FYI:"),
            ],
            interjections: &[
                p("synergy-wise"),
                p("going forward"),
                p("at the end of the day"),
                p("as per the roadmap"),
            ],
            closers: &[
                p("Let's take this offline."),
                p("Let's align on next steps."),
                p("Happy to circle back."),
                p("Let's leverage our synergies."),
                p("Action item noted."),
                p("Best regards."),
            ],
            emoji: &[p("📈"), p("💼"), p("🤝"), p("📊")],
            closers_max: 1,
            terminal: '.',
        },
    },
];

/// The names of all styles, in table order.
pub(crate) static STYLE_NAMES: [&str; 4] = [
    STYLES[0].name,
    STYLES[1].name,
    STYLES[2].name,
    STYLES[3].name,
];

/// Finds a style's index by name.
pub(crate) fn style_index(name: &str) -> Option<usize> {
    STYLES.iter().position(|style| style.name == name)
}

/// A small, fast, seeded generator (splitmix64); a rewrite draws a handful of numbers from it.
#[derive(Debug, Clone)]
pub(crate) struct SplitMix64(u64);

impl SplitMix64 {
    pub(crate) fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// An index below `len` (which must be non-zero); the modulo bias is irrelevant for tables this small.
    pub(crate) fn below(&mut self, len: usize) -> usize {
        (self.next_u64() % len as u64) as usize
    }
}

/// Rewrites `text` in the style at `style_index` with the local rules. See [`crate::local_rewrite`].
pub(crate) fn local_rewrite_indexed(style_index: usize, text: &str, seed: u64) -> String {
    let rules = &STYLES[style_index].local;
    // Mixing the style in keeps the same seed from picking the same table positions in every style.
    let mut rng = SplitMix64::new(seed ^ (style_index as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93));
    let opener = rules.openers[rng.below(rules.openers.len())];
    let interjection = rules.interjections[rng.below(rules.interjections.len())];
    let closer_first = rules.closers[rng.below(rules.closers.len())];
    let mut closer_second = rules.closers[rng.below(rules.closers.len())];
    let wants_second =
        rules.closers_max > 1 && rng.below(2) == 1 && closer_second.text != closer_first.text;
    let emoji = if rules.emoji.is_empty() {
        None
    } else {
        Some(rules.emoji[rng.below(rules.emoji.len())])
    };
    let mid_shift = rng.below(3);

    let mut out = String::with_capacity(text.len() + 96);
    out.push_str(opener.text);
    out.push(' ');
    let text_start = out.len();
    let summary = sanitize::push_sanitized(&mut out, text, STYLED_CHARS_MAX);
    if summary.chars == 0 {
        // Nothing of the message survived sanitising: the decorations alone still make a non-empty message.
        out.truncate(text_start - 1);
        out.push(' ');
        out.push_str(closer_first.text);
        return out;
    }
    let text_chars = summary.chars;

    // The decorations are optional and dropped, least important first, when the message is long: the user's words
    // always take priority over the style.
    let mut budget = STYLED_CHARS_MAX.saturating_sub(text_chars);
    let keep_opener = budget > opener.chars;
    if keep_opener {
        budget -= opener.chars + 1;
    }
    let keep_closer = budget > closer_first.chars + 1;
    if keep_closer {
        budget -= closer_first.chars + 2;
    }
    let keep_emoji = emoji.is_some_and(|e| budget > e.chars);
    if let Some(e) = emoji
        && keep_emoji
    {
        budget -= e.chars + 1;
    }
    let keep_second = wants_second && budget > closer_second.chars;
    if keep_second {
        budget -= closer_second.chars + 1;
    } else {
        closer_second = p("");
    }
    let keep_mid = summary.words >= MID_WORDS_MIN && budget > interjection.chars + 2;

    if keep_mid {
        // A word boundary near the middle, shifted by the seed so repeated messages vary.
        // The search is over bytes: a space is ASCII, so the byte after it always starts a character even when
        // `middle` falls inside a multi-byte one.
        let segment = &out.as_bytes()[text_start..];
        let middle = (segment.len() / 2 + mid_shift * segment.len() / 8).min(segment.len());
        if let Some(offset) = segment[middle..].iter().position(|&byte| byte == b' ') {
            // "word, interjection, word": the commas make it a parenthetical that never changes the words around it.
            let at = text_start + middle + offset;
            let mut parenthetical = [0u8; INTERJECTION_BYTES_MAX + 3];
            let length = interjection.text.len() + 3;
            parenthetical[..2].copy_from_slice(b", ");
            parenthetical[2..length - 1].copy_from_slice(interjection.text.as_bytes());
            parenthetical[length - 1] = b',';
            // The buffer holds ASCII punctuation around a whole `&str`, so it is UTF-8; one insert moves the tail once.
            if let Ok(parenthetical) = std::str::from_utf8(&parenthetical[..length]) {
                out.insert_str(at, parenthetical);
            }
        }
    }
    if keep_closer {
        if out[text_start..]
            .chars()
            .next_back()
            .is_some_and(char::is_alphanumeric)
        {
            out.push(rules.terminal);
        }
        out.push(' ');
        out.push_str(closer_first.text);
    }
    if keep_second {
        out.push(' ');
        out.push_str(closer_second.text);
    }
    if let Some(e) = emoji
        && keep_emoji
    {
        out.push(' ');
        out.push_str(e.text);
    }
    if !keep_opener {
        out.replace_range(..text_start, "");
    }
    debug_assert!(out.chars().count() <= STYLED_CHARS_MAX);
    out
}

/// The length in bytes of the prompt [`prompt`] builds, without building it.
pub(crate) fn prompt_len(style_index: usize, sanitized_text: &str) -> usize {
    STYLES[style_index].prompt_template.len() - PROMPT_MESSAGE_SLOT.len() + sanitized_text.len()
}

/// Builds the completion prompt for a sanitised message.
pub(crate) fn prompt(style_index: usize, sanitized_text: &str) -> String {
    let template = STYLES[style_index].prompt_template;
    let mut out = String::with_capacity(template.len() + sanitized_text.len());
    match template.split_once(PROMPT_MESSAGE_SLOT) {
        Some((before, after)) => {
            out.push_str(before);
            out.push_str(sanitized_text);
            out.push_str(after);
        }
        None => out.push_str(template),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sanitize::sanitize_text;

    /// Every word of the sanitised message appears in the rewrite, in order.
    fn assert_words_survive(input: &str, output: &str) {
        let sanitized = sanitize_text(input, STYLED_CHARS_MAX);
        let mut from = 0;
        for word in sanitized.split(' ').filter(|word| !word.is_empty()) {
            match output[from..].find(word) {
                Some(at) => from += at + word.len(),
                None => panic!("word {word:?} of {input:?} lost in {output:?}"),
            }
        }
    }

    fn assert_invariants(input: &str, output: &str) {
        assert!(!output.is_empty(), "empty rewrite of {input:?}");
        assert!(
            output.chars().count() <= STYLED_CHARS_MAX,
            "too long: {} chars",
            output.chars().count()
        );
        assert!(
            !output.chars().any(char::is_control),
            "control character in {output:?}"
        );
        assert!(!output.contains('\u{202E}'), "bidi override in {output:?}");
        assert_eq!(output, output.trim(), "untrimmed rewrite {output:?}");
    }

    #[test]
    fn every_style_has_rules_and_a_prompt_slot() {
        assert_eq!(
            STYLE_NAMES,
            ["brainrot", "pirate", "shakespeare", "corporate"]
        );
        for style in &STYLES {
            assert!(
                style.prompt_template.contains(PROMPT_MESSAGE_SLOT),
                "{}",
                style.name
            );
            assert!(!style.local.openers.is_empty() && !style.local.closers.is_empty());
            assert!(!style.local.interjections.is_empty());
            assert!(
                style
                    .local
                    .interjections
                    .iter()
                    .all(|piece| piece.text.len() <= INTERJECTION_BYTES_MAX)
            );
            for piece in style
                .local
                .openers
                .iter()
                .chain(style.local.closers)
                .chain(style.local.interjections)
            {
                assert_eq!(piece.chars, piece.text.chars().count());
                assert_eq!(
                    piece.text,
                    sanitize_text(piece.text, STYLED_CHARS_MAX),
                    "decoration needs sanitising"
                );
            }
        }
    }

    #[test]
    fn rewrites_are_deterministic_styled_and_keep_the_words() {
        let inputs = [
            "hi there",
            "gg that was the best clutch I have ever seen on this stream, absolutely insane play",
            "שלום לכולם, מה שלומכם היום? أهلا وسهلا بكم",
            "e\u{301}le\u{300}ve cafe\u{301} na\u{303}o 👨‍👩‍👧 🏳️‍🌈 👍🏽",
            "tab\tnew\nline \u{1b}[2Jclear \u{202E}reversed",
            "a",
        ];
        for (index, style) in STYLES.iter().enumerate() {
            for input in inputs {
                let output = local_rewrite_indexed(index, input, 42);
                assert_eq!(
                    output,
                    local_rewrite_indexed(index, input, 42),
                    "not deterministic"
                );
                assert_invariants(input, &output);
                assert_words_survive(input, &output);
                assert_ne!(
                    output,
                    sanitize_text(input, STYLED_CHARS_MAX),
                    "{} added no style",
                    style.name
                );
            }
            let variants: std::collections::HashSet<String> = (0..64)
                .map(|seed| local_rewrite_indexed(index, "hi there", seed))
                .collect();
            assert!(
                variants.len() >= 8,
                "{} has only {} variants",
                style.name,
                variants.len()
            );
        }
        let pirate = local_rewrite_indexed(1, "hi there", 7);
        let corporate = local_rewrite_indexed(3, "hi there", 7);
        assert_ne!(pirate, corporate);
    }

    #[test]
    fn long_messages_keep_the_words_and_the_limit() {
        let exactly = "x".repeat(STYLED_CHARS_MAX);
        let output = local_rewrite_indexed(0, &exactly, 1);
        assert_eq!(
            output, exactly,
            "a full-length message leaves no room for style"
        );
        let over = "word ".repeat(200);
        let output = local_rewrite_indexed(2, &over, 1);
        assert_invariants(&over, &output);
        assert_words_survive(&over, &output);
        let emoji = "🔥".repeat(800);
        let output = local_rewrite_indexed(1, &emoji, 3);
        assert_eq!(output.chars().count(), STYLED_CHARS_MAX);
        let near = "y".repeat(STYLED_CHARS_MAX - 20);
        let output = local_rewrite_indexed(3, &near, 9);
        assert_invariants(&near, &output);
        assert!(output.contains(&near));
    }

    #[test]
    fn empty_messages_still_get_text() {
        for (index, _) in STYLES.iter().enumerate() {
            for input in ["", "   ", "\u{0}\u{1}\n", "\u{202E}\u{2066}"] {
                let output = local_rewrite_indexed(index, input, 5);
                assert_invariants(input, &output);
            }
        }
    }

    #[test]
    fn randomized_inputs_hold_the_invariants() {
        const PALETTE: &[char] = &[
            'a', 'b', 'Z', ' ', ' ', ' ', '\t', '\n', '\u{0}', '\u{7f}', '\u{85}', 'é', '\u{301}',
            '\u{200D}', '\u{FE0F}', '👍', '🏽', '🔥', 'ש', 'ל', 'ع', '\u{202E}', '\u{2067}',
            '\u{FFFD}', '中', '\u{2028}', '"', '\\',
        ];
        let seed = 0x5EED_u64;
        let mut rng = SplitMix64::new(seed);
        for case in 0..3_000 {
            let len = rng.below(700);
            let input: String = (0..len)
                .map(|_| PALETTE[rng.below(PALETTE.len())])
                .collect();
            let style = rng.below(STYLES.len());
            let output = local_rewrite_indexed(style, &input, rng.next_u64());
            let check = std::panic::catch_unwind(|| {
                assert_invariants(&input, &output);
                if sanitize_text(&input, STYLED_CHARS_MAX).chars().count() < STYLED_CHARS_MAX - 100
                {
                    assert_words_survive(&input, &output);
                }
            });
            assert!(
                check.is_ok(),
                "randomized case {case} failed (generator seed {seed:#x}): {input:?}"
            );
        }
    }

    #[test]
    fn prompts_embed_the_message_on_one_line() {
        let prompt = prompt(1, "hi there");
        assert!(prompt.contains("Message: hi there\nRewritten:"));
        assert!(prompt.ends_with("Rewritten:"));
        assert_eq!(prompt.len(), prompt_len(1, "hi there"));
    }
}
