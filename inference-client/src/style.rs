//! The styles: the LLM's prompt parts and quality markers, and the local rewriter's rules, per style.
//!
//! The local rewriter never deletes or changes the user's words. It sanitises them (see [`crate::sanitize`]) and
//! dresses them in the style: an opener, an interjection at a word boundary near the middle of longer messages, one
//! or two closers and an emoji tail, each picked by a seeded generator. That keeps every message recognisable,
//! makes the output a pure function of `(style, text, seed)`, and costs one allocation per message.
//!
//! Protected words (see [`crate::protect`]) come through untouched and in order: the interjection goes after a word
//! that may take its comma, a message that ends in a protected word gets no closing punctuation glued to it, a
//! decoration that contains a protected word is left out, and a message of protected words alone is returned as it
//! is, sanitised: there is nothing to style, and an emote-only room stays emote-only.
//!
//! Architecture invariant: nothing here does IO, reads a clock or draws unseeded randomness.

use crate::STYLED_CHARS_MAX;
use crate::protect::ProtectedWords;

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

/// One style: its name, its one-line description, its LLM rules and its local rules.
#[derive(Debug)]
pub(crate) struct Style {
    pub name: &'static str,
    pub description: &'static str,
    /// How the LLM is asked for the style, and how its answer is judged.
    pub llm: LlmRules,
    pub local: LocalRules,
}

/// The LLM's side of a style: the prompt's parts (see [`crate::prompt`]) and what the quality gate looks for.
#[derive(Debug)]
pub(crate) struct LlmRules {
    /// The system turn.
    pub system: &'static str,
    /// Opens every user turn, before `": "` and the message.
    pub instruction: &'static str,
    /// Few-shot examples, `(message, rewrite)`. Each rewrite starts with one of the openers, keeps the message's
    /// words and adds the style's own: the pattern a small model copies best.
    pub shots: &'static [(&'static str, &'static str)],
    /// The assistant's answer is started with one of these (picked by the message's seed) and the model continues
    /// it: a small model that has begun in the style stays in it, where one that begins on its own often answers the
    /// message or repeats it plainly.
    pub openers: &'static [&'static str],
    /// Most tokens a completion in this style may take.
    pub max_tokens: u32,
    /// Tokens a completion may take beyond twice the message's.
    pub extra_tokens: u32,
    /// Lower-case words, phrases and emoji that mark text as this style. A completion is in style when it has one
    /// that the message does not. A phrase matches on word boundaries; an emoji anywhere.
    pub markers: &'static [&'static str],
    /// Word endings that mark the style (`"in'"` for the pirate's dropped g, `"eth"` for the Bard's verbs), for
    /// words at least two letters longer than the ending.
    pub marker_suffixes: &'static [&'static str],
}

/// The longest interjection, in bytes; checked by a test so the rewriter can build its parenthetical on the stack.
pub(crate) const INTERJECTION_BYTES_MAX: usize = 40;

/// Messages with fewer words than this get no mid-message interjection: it would swamp them.
pub(crate) const MID_WORDS_MIN: usize = 6;

pub(crate) static STYLES: [Style; 4] = [
    Style {
        name: "brainrot",
        description: "Gen-Z brainrot: no cap, it's giving main character energy fr fr.",
        llm: LlmRules {
            system: "You rewrite Twitch chat messages in Gen-Z brainrot slang. Keep the words of the message and add \
                     slang like fr fr, no cap, bestie, lowkey, ngl, it's giving, and an emoji.",
            instruction: "Rewrite in Gen-Z slang",
            shots: &[
                ("gg that was close", "fr fr gg that was so close 😭"),
                ("what game is this", "bestie, what game is this no cap 💀"),
                (
                    "i need to go to bed soon",
                    "ngl i need to go to bed soon, this stream is bussin 😴",
                ),
                (
                    "the boss just one shot him lol",
                    "no cap, the boss just one shot him, he got cooked 💀",
                ),
                (
                    "nice outfit today",
                    "lowkey the outfit today is giving slay ✨",
                ),
            ],
            openers: &["ngl", "bestie,", "lowkey", "no cap,", "fr fr"],
            max_tokens: 32,
            extra_tokens: 10,
            markers: &[
                "fr",
                "fr fr",
                "no cap",
                "bestie",
                "besties",
                "slay",
                "slayed",
                "slaying",
                "slayyy",
                "bussin",
                "lowkey",
                "highkey",
                "ngl",
                "deadass",
                "ong",
                "on god",
                "rizz",
                "sigma",
                "skibidi",
                "gyatt",
                "sus",
                "bruh",
                "it's giving",
                "main character",
                "cooked",
                "based",
                "mid",
                "goated",
                "periodt",
                "sheesh",
                "fam",
                "bet",
                "npc",
                "aura",
                "lmao",
                "lmfao",
                "yeet",
                "vibe check",
                "vibing",
                "icl",
                "tbh",
                "iykyk",
                "delulu",
                "big w",
                "huge w",
                "ratio",
                "💀",
                "😭",
                "✨",
                "🔥",
                "💅",
                "🤪",
                "🗿",
                "👀",
                "😤",
                "🙏",
                "😂",
                "🤣",
                "🥺",
                "😩",
                "🫠",
                "💯",
                "😎",
                "😴",
            ],
            marker_suffixes: &[],
        },
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
        llm: LlmRules {
            system: "You rewrite Twitch chat messages as a pirate would say them. Keep every word of the message and \
                     add pirate words like arr, matey, ye, aye, ahoy.",
            instruction: "Rewrite as a pirate",
            shots: &[
                ("gg that was close", "Arr, gg mateys, that be a close one!"),
                (
                    "what game is this",
                    "Ahoy, what game be this ye be playin'?",
                ),
                (
                    "i need to go to bed soon",
                    "Aye, I be needin' to go to me bed soon, matey.",
                ),
                (
                    "the boss just one shot him lol",
                    "Har har, the boss just sent him to Davy Jones in one shot!",
                ),
                (
                    "nice outfit today",
                    "Avast, a fine outfit ye wear today, arr!",
                ),
            ],
            openers: &["Arr,", "Ahoy,", "Aye,", "Har har,", "Avast,"],
            max_tokens: 36,
            extra_tokens: 10,
            markers: &[
                "arr",
                "arrr",
                "arrgh",
                "matey",
                "mateys",
                "ye",
                "yer",
                "aye",
                "ahoy",
                "avast",
                "me hearty",
                "hearties",
                "hearty",
                "scallywag",
                "scallywags",
                "landlubber",
                "landlubbers",
                "plunder",
                "treasure",
                "booty",
                "ship",
                "sail",
                "sails",
                "seas",
                "the sea",
                "captain",
                "cap'n",
                "davy jones",
                "plank",
                "yo ho",
                "yo-ho-ho",
                "shiver me timbers",
                "timbers",
                "parrot",
                "doubloons",
                "grog",
                "savvy",
                "blimey",
                "har",
                "harr",
                "buccaneer",
                "pirate",
                "pirates",
                "🏴‍☠️",
                "⚓",
                "🦜",
                "💰",
                "🗺️",
            ],
            marker_suffixes: &["in'"],
        },
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
        llm: LlmRules {
            system: "You rewrite Twitch chat messages in the English of Shakespeare. Keep the words of the message and \
                     add old English like thou, thy, hath, doth, 'tis, forsooth, prithee.",
            instruction: "Rewrite in Shakespearean English",
            shots: &[
                (
                    "gg that was close",
                    "Forsooth, good game, 'twas close indeed!",
                ),
                (
                    "what game is this",
                    "Prithee, what game is this thou playest?",
                ),
                (
                    "i need to go to bed soon",
                    "Alas, I needs must go to my bed soon, good sir.",
                ),
                (
                    "the boss just one shot him lol",
                    "Hark! The boss hath slain him in one shot, methinks.",
                ),
                (
                    "nice outfit today",
                    "Verily, thy outfit today is fair, my lord.",
                ),
            ],
            openers: &["Hark!", "Prithee,", "Forsooth,", "Alas,", "Verily,"],
            max_tokens: 36,
            extra_tokens: 10,
            markers: &[
                "thou",
                "thee",
                "thy",
                "thine",
                "thyself",
                "hath",
                "doth",
                "dost",
                "art",
                "'tis",
                "'twas",
                "tis",
                "twas",
                "ere",
                "forsooth",
                "prithee",
                "hark",
                "alas",
                "verily",
                "methinks",
                "wherefore",
                "anon",
                "nay",
                "yea",
                "good sir",
                "fair",
                "o'er",
                "e'en",
                "whence",
                "hence",
                "hither",
                "thither",
                "mayhap",
                "perchance",
                "pray",
                "fie",
                "zounds",
                "marry",
                "lo",
                "behold",
                "my lord",
                "my lady",
                "liege",
                "sir",
                "madam",
                "dame",
                "'twill",
                "'twould",
                "naught",
                "aught",
                "ne'er",
                "mightest",
                "shall",
                "shalt",
                "wilt",
                "canst",
                "hast",
                "didst",
                "wouldst",
                "couldst",
                "shouldst",
                "oft",
                "ye",
                "good morrow",
                "morrow",
                "fare thee well",
                "knave",
                "villain",
                "noble",
                "sirrah",
                "🎭",
                "🪶",
                "📜",
                "👑",
            ],
            marker_suffixes: &["eth"],
        },
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
        llm: LlmRules {
            system: "You rewrite Twitch chat messages in corporate jargon. Keep the words of the message and add \
                     office words like circle back, align, synergy, leverage, action item, bandwidth.",
            instruction: "Rewrite in corporate jargon",
            shots: &[
                (
                    "gg that was close",
                    "Quick sync: gg, that was close, great synergy team.",
                ),
                (
                    "what game is this",
                    "Circling back: can we align on what game this is?",
                ),
                (
                    "i need to go to bed soon",
                    "Heads up: I need to go to bed soon, my bandwidth is limited.",
                ),
                (
                    "the boss just one shot him lol",
                    "Key takeaway: the boss just one shot him, let's circle back on strategy.",
                ),
                (
                    "nice outfit today",
                    "Per my last message, nice outfit today, a real value add.",
                ),
            ],
            openers: &[
                "Quick sync:",
                "Circling back:",
                "Heads up:",
                "Key takeaway:",
                "Per my last message,",
            ],
            max_tokens: 40,
            extra_tokens: 12,
            markers: &[
                "synergy",
                "synergies",
                "leverage",
                "leveraging",
                "align",
                "aligned",
                "alignment",
                "circle back",
                "circling back",
                "bandwidth",
                "deliverable",
                "deliverables",
                "stakeholder",
                "stakeholders",
                "action item",
                "action items",
                "kpi",
                "kpis",
                "roi",
                "going forward",
                "moving forward",
                "touch base",
                "loop in",
                "looping",
                "per my last",
                "q1",
                "q2",
                "q3",
                "q4",
                "quarter",
                "quarterly",
                "bottom line",
                "best practice",
                "best practices",
                "value add",
                "pivot",
                "scalable",
                "streamline",
                "optimize",
                "onboard",
                "onboarding",
                "offline",
                "sync",
                "team",
                "deep dive",
                "low-hanging fruit",
                "win-win",
                "paradigm",
                "strategic",
                "strategy",
                "metrics",
                "roadmap",
                "cadence",
                "ecosystem",
                "ping",
                "heads up",
                "fyi",
                "asap",
                "eod",
                "takeaway",
                "key takeaway",
                "brand",
                "kudos",
                "meeting",
                "agenda",
                "workflow",
                "productivity",
                "pipeline",
                "proactive",
                "proactively",
                "initiative",
                "quick sync",
                "key takeaway",
                "next steps",
                "great synergy",
                "circle",
                "📈",
                "💼",
                "🤝",
                "📊",
            ],
            marker_suffixes: &[],
        },
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

/// Rewrites `text` in the style at `style_index` with the local rules, leaving `protected` words as they are. See
/// [`crate::local_rewrite_protected`].
pub(crate) fn local_rewrite_indexed(
    style_index: usize,
    text: &str,
    seed: u64,
    protected: &ProtectedWords,
) -> String {
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
    let summary = protected.push_sanitized(&mut out, text, STYLED_CHARS_MAX);
    if summary.chars == 0 {
        // Nothing of the message survived sanitising: the decorations alone still make a non-empty message.
        out.clear();
        for piece in [opener, closer_first] {
            if !protected.bans(piece.text) {
                if !out.is_empty() {
                    out.push(' ');
                }
                out.push_str(piece.text);
            }
        }
        if out.is_empty() {
            out.push('…');
        }
        return out;
    }
    if protected.covers(&out[text_start..]) {
        out.replace_range(..text_start, "");
        return out;
    }
    let text_chars = summary.chars;

    // The decorations are optional and dropped, least important first, when the message is long: the user's words
    // always take priority over the style. A decoration with a protected word in it would add an occurrence.
    let mut budget = STYLED_CHARS_MAX.saturating_sub(text_chars);
    let keep_opener = budget > opener.chars && !protected.bans(opener.text);
    if keep_opener {
        budget -= opener.chars + 1;
    }
    let keep_closer = budget > closer_first.chars + 1 && !protected.bans(closer_first.text);
    if keep_closer {
        budget -= closer_first.chars + 2;
    }
    let keep_emoji = emoji.is_some_and(|e| budget > e.chars && !protected.bans(e.text));
    if let Some(e) = emoji
        && keep_emoji
    {
        budget -= e.chars + 1;
    }
    let keep_second =
        wants_second && budget > closer_second.chars && !protected.bans(closer_second.text);
    if keep_second {
        budget -= closer_second.chars + 1;
    } else {
        closer_second = p("");
    }
    let keep_mid = summary.words >= MID_WORDS_MIN
        && budget > interjection.chars + 2
        && !protected.bans(interjection.text);

    if keep_mid {
        // A word boundary near the middle, shifted by the seed so repeated messages vary, after a word that may take
        // the comma: a protected word with a comma glued to it would no longer be one.
        // The search is over bytes: a space is ASCII, so the byte after it always starts a character even when
        // `middle` falls inside a multi-byte one.
        let segment = &out.as_bytes()[text_start..];
        let middle = (segment.len() / 2 + mid_shift * segment.len() / 8).min(segment.len());
        let mut from = middle;
        let mut boundary = None;
        while let Some(offset) = segment[from..].iter().position(|&byte| byte == b' ') {
            let space = from + offset;
            let before = &out[text_start..text_start + space];
            let word = before.rsplit(' ').next().unwrap_or(before);
            if !protected.contains(word) && !protected.forms_with(word, ',') {
                boundary = Some(space);
                break;
            }
            from = space + 1;
        }
        if let Some(space) = boundary {
            // "word, interjection, word": the commas make it a parenthetical that never changes the words around it.
            let at = text_start + space;
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
        let last_word = out[text_start..].rsplit(' ').next().unwrap_or("");
        if last_word
            .chars()
            .next_back()
            .is_some_and(char::is_alphanumeric)
            && !protected.contains(last_word)
            && !protected.forms_with(last_word, rules.terminal)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sanitize::sanitize_text;

    /// The rewrite with no protected words, as before they existed.
    fn rewrite(style_index: usize, text: &str, seed: u64) -> String {
        local_rewrite_indexed(style_index, text, seed, &ProtectedWords::default())
    }

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
    fn every_style_has_local_and_llm_rules() {
        assert_eq!(
            STYLE_NAMES,
            ["brainrot", "pirate", "shakespeare", "corporate"]
        );
        for style in &STYLES {
            let llm = &style.llm;
            assert!(!llm.system.contains('\n') && !llm.instruction.is_empty());
            assert!(llm.shots.len() >= 3 && llm.max_tokens > 0);
            // Markers are matched against lower-cased text.
            assert!(
                llm.markers
                    .iter()
                    .all(|marker| *marker == marker.to_lowercase())
            );
            for (message, rewrite) in llm.shots {
                assert!(!message.contains('\n') && !rewrite.contains('\n'));
            }
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
                let output = rewrite(index, input, 42);
                assert_eq!(output, rewrite(index, input, 42), "not deterministic");
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
                .map(|seed| rewrite(index, "hi there", seed))
                .collect();
            assert!(
                variants.len() >= 8,
                "{} has only {} variants",
                style.name,
                variants.len()
            );
        }
        let pirate = rewrite(1, "hi there", 7);
        let corporate = rewrite(3, "hi there", 7);
        assert_ne!(pirate, corporate);
    }

    #[test]
    fn long_messages_keep_the_words_and_the_limit() {
        let exactly = "x".repeat(STYLED_CHARS_MAX);
        let output = rewrite(0, &exactly, 1);
        assert_eq!(
            output, exactly,
            "a full-length message leaves no room for style"
        );
        let over = "word ".repeat(200);
        let output = rewrite(2, &over, 1);
        assert_invariants(&over, &output);
        assert_words_survive(&over, &output);
        let emoji = "🔥".repeat(800);
        let output = rewrite(1, &emoji, 3);
        assert_eq!(output.chars().count(), STYLED_CHARS_MAX);
        let near = "y".repeat(STYLED_CHARS_MAX - 20);
        let output = rewrite(3, &near, 9);
        assert_invariants(&near, &output);
        assert!(output.contains(&near));
    }

    #[test]
    fn empty_messages_still_get_text() {
        for (index, _) in STYLES.iter().enumerate() {
            for input in ["", "   ", "\u{0}\u{1}\n", "\u{202E}\u{2066}"] {
                let output = rewrite(index, input, 5);
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
            let output = rewrite(style, &input, rng.next_u64());
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

    /// The emote codes the tests protect (a sample of the engine's; the crate itself knows none).
    const EMOTES: [&str; 6] = [
        "twiGG",
        "twiHype",
        "twiSkibidi",
        "twiLOL",
        "twiPirate",
        "twiSkull",
    ];

    fn emotes() -> ProtectedWords {
        ProtectedWords::new(EMOTES)
    }

    /// The protected words of a text, in order.
    fn protected_sequence<'a>(protected: &'a ProtectedWords, text: &'a str) -> Vec<&'a str> {
        protected.occurrences(text).collect()
    }

    /// The protected words of the sanitised input are exactly those of the output, in order, as whole words.
    fn assert_protected_survive(protected: &ProtectedWords, input: &str, output: &str) {
        let sanitized = sanitize_text(input, STYLED_CHARS_MAX);
        assert_eq!(
            protected_sequence(protected, output),
            protected_sequence(protected, &sanitized),
            "protected words of {input:?} changed in {output:?}"
        );
    }

    #[test]
    fn emote_codes_survive_every_style_in_place_and_in_order() {
        let protected = emotes();
        // Each case puts codes where a decoration meets the message: first (after the opener), last (before the
        // closing punctuation and closer), next to the middle (where the interjection and its comma go), repeated,
        // adjacent, and beside punctuation.
        let messages = [
            "twiGG that was close",
            "that was close twiGG",
            "what a play twiHype by the streamer in this round",
            "twiHype twiHype twiHype twiHype twiHype twiHype twiHype gg",
            "gg twiGG twiGG twiGG twiGG twiGG twiGG twiGG twiGG",
            "a b c twiSkibidi twiLOL d e f twiSkull",
            "twiGG twiHype twiSkibidi twiLOL twiPirate wp",
            "one two three twiGG five six seven twiGG nine ten",
            "\ttwiGG\n  twiHype\u{202E} lol  ",
            "twiGG! twiGG, twiGG. (twiGG) twiGG",
            "twigg TWIGG twiGG twiGGs gg",
            "ok twiLOL",
        ];
        for (index, style) in STYLES.iter().enumerate() {
            for message in messages {
                for seed in 0..64 {
                    let output = local_rewrite_indexed(index, message, seed, &protected);
                    assert_invariants(message, &output);
                    assert_words_survive(message, &output);
                    assert_protected_survive(&protected, message, &output);
                    assert_eq!(
                        output,
                        local_rewrite_indexed(index, message, seed, &protected),
                        "not deterministic"
                    );
                }
                // The rest of the message is still styled.
                let output = local_rewrite_indexed(index, message, 1, &protected);
                assert_ne!(
                    output,
                    sanitize_text(message, STYLED_CHARS_MAX),
                    "{} added no style",
                    style.name
                );
            }
        }
    }

    #[test]
    fn without_protection_the_decorations_would_break_the_codes() {
        // The same table without protected words: the closing punctuation and the interjection's comma land on the
        // codes. This is what the protected rewrite prevents, and shows the cases above reach those spots.
        let protected = emotes();
        let mut broken = 0;
        for index in 0..STYLES.len() {
            for message in [
                "that was close twiGG",
                "twiHype twiHype twiHype twiHype twiHype twiHype twiHype gg",
            ] {
                for seed in 0..16 {
                    let output = rewrite(index, message, seed);
                    let before = protected_sequence(&protected, message).len();
                    if protected_sequence(&protected, &output).len() != before {
                        broken += 1;
                    }
                }
            }
        }
        assert!(broken > 0, "the cases never reach a decoration");
    }

    #[test]
    fn codes_with_punctuation_glued_on_are_ordinary_words() {
        let protected = emotes();
        // Twitch matches emotes on whole words only, so `twiGG!` is not the emote: a message of such words is styled
        // like any other, and a code next to it still survives.
        for (index, _) in STYLES.iter().enumerate() {
            for message in ["twiGG!", "twiGG! twiHype?", "(twiGG)"] {
                let output = local_rewrite_indexed(index, message, 3, &protected);
                assert_ne!(output, message, "{message:?} was taken for emotes alone");
                assert!(output.contains(message), "{output:?}");
            }
            let output = local_rewrite_indexed(index, "twiGG! twiGG", 3, &protected);
            assert_eq!(
                protected_sequence(&protected, &output),
                ["twiGG"],
                "{output:?}"
            );
        }
    }

    #[test]
    fn messages_of_codes_alone_come_back_as_they_are() {
        let protected = emotes();
        for (index, _) in STYLES.iter().enumerate() {
            for seed in 0..16 {
                for (message, expected) in [
                    ("twiGG", "twiGG"),
                    ("twiGG twiGG twiHype", "twiGG twiGG twiHype"),
                    ("  twiSkull\t\ttwiLOL \n", "twiSkull twiLOL"),
                ] {
                    assert_eq!(
                        local_rewrite_indexed(index, message, seed, &protected),
                        expected
                    );
                }
            }
            // Without protected words they are styled like any other text.
            assert_ne!(rewrite(index, "twiGG", 0), "twiGG");
        }
    }

    #[test]
    fn decorations_that_hold_a_protected_word_are_left_out() {
        // Protected words are configuration, not emote codes by construction: one may be spelled like a decoration,
        // and then the rewriter must not add it.
        let protected =
            ProtectedWords::new(["Arr!", "Savvy?", "Skibidi.", "Lowkey", "gg!", "play,"]);
        for (index, _) in STYLES.iter().enumerate() {
            for seed in 0..256 {
                for message in [
                    "gg",
                    "what a play from the streamer in this round gg",
                    "Arr! gg",
                    "",
                ] {
                    let output = local_rewrite_indexed(index, message, seed, &protected);
                    assert_invariants(message, &output);
                    assert_protected_survive(&protected, message, &output);
                }
            }
        }
    }

    #[test]
    fn a_long_message_is_never_cut_into_a_code() {
        let protected = emotes();
        let message = format!("{} twiGGs", "x".repeat(STYLED_CHARS_MAX - 6));
        for (index, _) in STYLES.iter().enumerate() {
            let output = local_rewrite_indexed(index, &message, 1, &protected);
            assert_invariants(&message, &output);
            assert!(
                protected_sequence(&protected, &output).is_empty(),
                "{output:?}"
            );
            // The plain rewrite cuts the message into `... twiGG`.
            assert!(rewrite(index, &message, 1).ends_with(" twiGG"));
        }
    }

    #[test]
    fn randomized_messages_keep_their_codes() {
        // Words drawn from codes, near-codes, codes with punctuation, ordinary and non-Latin words, joined by random
        // whitespace and control characters; every style, random seeds.
        const VOCABULARY: &[&str] = &[
            "twiGG",
            "twiHype",
            "twiSkibidi",
            "twiLOL",
            "twiPirate",
            "twiSkull",
            "twiGG!",
            "twiGG,",
            ",twiGG",
            "twigg",
            "twiHYPE",
            "twi",
            "gg",
            "wp",
            "lol",
            "what",
            "a",
            "play",
            "the",
            "שלום",
            "中文",
            "🔥",
            "👨‍👩‍👧",
            "e\u{301}",
            "[E1]",
            "...",
        ];
        const SEPARATORS: &[&str] = &[" ", " ", " ", "  ", "\t", "\n", "\u{0}", "\u{202E}"];
        let protected = emotes();
        let seed = 0xE307_u64;
        let mut rng = SplitMix64::new(seed);
        for case in 0..5_000 {
            let words = rng.below(40);
            let mut input = String::new();
            for _ in 0..words {
                input.push_str(VOCABULARY[rng.below(VOCABULARY.len())]);
                input.push_str(SEPARATORS[rng.below(SEPARATORS.len())]);
            }
            let style = rng.below(STYLES.len());
            let rewrite_seed = rng.next_u64();
            let output = local_rewrite_indexed(style, &input, rewrite_seed, &protected);
            let check = std::panic::catch_unwind(|| {
                assert_invariants(&input, &output);
                assert_words_survive(&input, &output);
                assert_protected_survive(&protected, &input, &output);
            });
            assert!(
                check.is_ok(),
                "randomized case {case} failed (generator seed {seed:#x}, style {style}, rewrite seed \
                 {rewrite_seed}): {input:?} -> {output:?}"
            );
        }
    }
}
