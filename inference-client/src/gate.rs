//! The quality gate, sans IO: judges a sanitised completion against the message it rewrites before any viewer
//! sees it. A small model echoes its input, recites its prompt, answers the message instead of rewriting it, or
//! drifts off into text of its own; the gate turns each of those into a fallback with a reason.
//!
//! When the client starts the answer with a style opener (see [`crate::prompt`]), the delivered text is the opener
//! followed by the model's words; the checks on content look at the model's words alone, so an opener followed by
//! the message unchanged is an echo, not a rewrite.
//!
//! The checks are lexical, on lower-cased words (runs of letters, digits and apostrophes) and emoji:
//! - **prompt leak**: template tokens or prompt labels in the text; four words in a row from the style's system
//!   line or from an example's message, or from an example's rewrite when they carry a word of that example's
//!   message (its topic, not the style's stock phrases), none of them in the user's message; or a bare list of the
//!   style's marker words;
//! - **echo**: the model's words add no word (and no emoji) that the message does not already have;
//! - **off topic**: none of the message's content words kept (a word counts as kept when the completion has it or a
//!   form of it sharing its stem, like `lagging`/`laggin'`), or rambling: far longer than a rewrite needs, or the
//!   same words over and over;
//! - **off style**: none of the style's marker words, phrases or emoji that the message lacks in the delivered text.
//!
//! Architecture invariant: a pure function of `(style, message, completion)`; no IO, no clock, no randomness.

use crate::style::{LlmRules, STYLES};

/// Why the gate turned a completion away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// The completion adds nothing to the message.
    Echo,
    /// The completion repeats the prompt (template tokens, instructions, examples, the marker list).
    PromptLeak,
    /// The completion keeps none of the message's content words, or rambles far beyond it.
    OffTopic,
    /// The completion has none of the style's markers.
    OffStyle,
}

impl Rejection {
    pub const ALL: [Rejection; 4] = [
        Rejection::Echo,
        Rejection::PromptLeak,
        Rejection::OffTopic,
        Rejection::OffStyle,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::Echo => "echo",
            Rejection::PromptLeak => "prompt_leak",
            Rejection::OffTopic => "off_topic",
            Rejection::OffStyle => "off_style",
        }
    }
}

/// Everything the gate measured about one completion; the evaluation reports these separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Assessment {
    pub prompt_leak: bool,
    pub echo: bool,
    /// Content words of the message the completion kept, of how many it had (0 of 0 for a message of emoji only).
    pub content_words_kept: usize,
    pub content_words: usize,
    /// Far longer than a rewrite of the message needs, or repeating itself.
    pub rambling: bool,
    /// The delivered text (opener and model's words) has a style marker the message lacks.
    pub in_style: bool,
    /// The model's own words have a style marker the message lacks (without the opener's help).
    pub model_in_style: bool,
}

impl Assessment {
    /// The gate's decision: the first failed check in the order leak, echo, off topic, off style.
    pub fn verdict(&self) -> Result<(), Rejection> {
        if self.prompt_leak {
            Err(Rejection::PromptLeak)
        } else if self.echo {
            Err(Rejection::Echo)
        } else if self.is_off_topic() {
            Err(Rejection::OffTopic)
        } else if !self.in_style {
            Err(Rejection::OffStyle)
        } else {
            Ok(())
        }
    }

    pub fn is_off_topic(&self) -> bool {
        self.rambling || (self.content_words > 0 && self.content_words_kept == 0)
    }
}

/// Judges a completion as a rewrite of `message` in the named style: `opener` is the text the answer was started
/// with (empty for none) and `generated` the model's continuation; `None` for an unknown style. The texts should be
/// sanitised already.
pub fn assess_completion(
    style: &str,
    message: &str,
    opener: &str,
    generated: &str,
) -> Option<Assessment> {
    crate::style::style_index(style).map(|index| assess(index, message, opener, generated))
}

/// Words a completion may add beyond twice the message's before it counts as rambling.
const RAMBLING_WORDS_EXTRA: usize = 20;

/// Words in a row that, copied from the prompt's fixed text and absent from the message, make a leak.
const LEAK_RUN_WORDS: usize = 4;

/// Function words that say nothing about a message's topic.
const STOPWORDS: &[&str] = &[
    "a", "about", "after", "again", "all", "am", "an", "and", "any", "are", "as", "at", "be",
    "been", "but", "by", "can", "could", "did", "do", "does", "doing", "don't", "for", "from",
    "get", "got", "had", "has", "have", "he", "her", "here", "him", "his", "how", "i", "i'm", "if",
    "im", "in", "into", "is", "isn't", "it", "it's", "its", "just", "like", "me", "more", "my",
    "no", "not", "now", "of", "oh", "ok", "okay", "on", "one", "or", "our", "out", "so", "some",
    "than", "that", "that's", "the", "their", "them", "then", "there", "these", "they", "this",
    "those", "to", "too", "u", "up", "us", "very", "was", "we", "were", "what", "when", "where",
    "which", "who", "why", "will", "with", "would", "yes", "you", "your", "you're", "ur", "really",
    "still", "should", "also", "gonna", "wanna", "much", "many", "way", "well", "yeah", "lol",
];

/// Text that only a prompt contains.
const LEAK_MARKERS: &[&str] = &[
    "<|",
    "|>",
    "im_start",
    "im_end",
    "eot_id",
    "header_id",
    "rewritten:",
    "message:",
    "rewrite in ",
    "rewrite as ",
    "rewrite the ",
    "chat message",
];

/// Lower-cased words of `text`: runs of letters, digits and apostrophes (typographic ones folded to `'`).
fn words(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    for c in text.chars() {
        let c = if c == '’' || c == '‘' { '\'' } else { c };
        if c.is_alphanumeric() || c == '\'' {
            word.extend(c.to_lowercase());
        } else if !word.is_empty() {
            out.push(std::mem::take(&mut word));
        }
    }
    if !word.is_empty() {
        out.push(word);
    }
    out.retain(|word| word.chars().any(char::is_alphanumeric));
    out
}

/// A word without its surrounding apostrophes.
fn bare(word: &str) -> &str {
    word.trim_matches('\'')
}

/// Whether `a` and `b` are forms of one word: equal, one a longer form of the other, or sharing a long stem.
fn same_stem(a: &str, b: &str) -> bool {
    let (a, b) = (bare(a), bare(b));
    if a == b {
        return true;
    }
    let (short, long) = if a.len() <= b.len() { (a, b) } else { (b, a) };
    if short.len() >= 3 && long.starts_with(short) {
        return true;
    }
    let common = short
        .chars()
        .zip(long.chars())
        .take_while(|(x, y)| x == y)
        .count();
    common >= 5 || (common >= 4 && short.chars().count() <= 6)
}

/// Whether the word sequence `haystack` contains `needle` as a run.
fn contains_run(haystack: &[String], needle: &[String]) -> bool {
    !needle.is_empty()
        && haystack.len() >= needle.len()
        && haystack
            .windows(needle.len())
            .any(|window| window == needle)
}

fn is_emoji_marker(marker: &str) -> bool {
    !marker.chars().any(char::is_alphanumeric)
}

/// Whether `text_words` (or `text` for emoji) has a marker of the style that `message_words` (`message`) lacks.
fn has_new_marker(
    rules: &LlmRules,
    text: &str,
    text_words: &[String],
    message: &str,
    message_words: &[String],
) -> bool {
    for marker in rules.markers {
        if is_emoji_marker(marker) {
            if text.contains(marker) && !message.contains(marker) {
                return true;
            }
            continue;
        }
        let marker_words = words(marker);
        if contains_run(text_words, &marker_words) && !contains_run(message_words, &marker_words) {
            return true;
        }
    }
    text_words.iter().any(|word| {
        rules.marker_suffixes.iter().any(|suffix| {
            word.len() >= suffix.len() + 2
                && word.ends_with(suffix)
                && !message_words.contains(word)
        })
    })
}

/// Whether `text_words` copies a run of [`LEAK_RUN_WORDS`] words of `part` that the message lacks; with `topic`,
/// only a run carrying one of those words (and the message lacking it) counts.
fn copies_run(
    part: &str,
    topic: Option<&[String]>,
    text_words: &[String],
    message_words: &[String],
) -> bool {
    let part_words = words(part);
    part_words
        .windows(LEAK_RUN_WORDS.min(part_words.len().max(1)))
        .any(|run| {
            run.len() == LEAK_RUN_WORDS
                && contains_run(text_words, run)
                && !contains_run(message_words, run)
                && topic.is_none_or(|topic| {
                    run.iter().any(|word| {
                        word.len() >= 3
                            && !STOPWORDS.contains(&word.as_str())
                            && topic.contains(word)
                            && !message_words.contains(word)
                    })
                })
        })
}

fn leaks_prompt(
    rules: &LlmRules,
    lower: &str,
    text_words: &[String],
    message_words: &[String],
) -> bool {
    if LEAK_MARKERS.iter().any(|marker| lower.contains(marker)) {
        return true;
    }
    if copies_run(rules.system, None, text_words, message_words)
        || copies_run(rules.instruction, None, text_words, message_words)
    {
        return true;
    }
    for (shot_message, shot_rewrite) in rules.shots {
        let topic = words(shot_message);
        if copies_run(shot_message, None, text_words, message_words)
            || copies_run(shot_rewrite, Some(&topic), text_words, message_words)
        {
            return true;
        }
    }
    // A bare list of the style's words ("thou, thee, hark, prithee, forsooth") is the instruction, not a rewrite.
    let marker_words = text_words
        .iter()
        .filter(|word| rules.markers.contains(&word.as_str()) && !message_words.contains(word))
        .count();
    marker_words >= 3 && marker_words * 4 >= text_words.len() * 3
}

/// Whether the words say the same thing over and over: a run of three words three times, or of four twice.
fn repeats_itself(text_words: &[String]) -> bool {
    let count = |run: &[String], size: usize| {
        text_words
            .windows(size)
            .filter(|window| *window == run)
            .count()
    };
    text_words.windows(3).any(|run| count(run, 3) >= 3)
        || text_words.windows(4).any(|run| count(run, 4) >= 2)
}

/// Judges the model's sanitised words, after `opener`, against the sanitised message they rewrite.
pub(crate) fn assess(
    style_index: usize,
    message: &str,
    opener: &str,
    generated: &str,
) -> Assessment {
    let rules = &STYLES[style_index].llm;
    let lower = generated.to_lowercase();
    let message_lower = message.to_lowercase();
    let text_words = words(&lower);
    let message_words = words(&message_lower);

    let prompt_leak = leaks_prompt(rules, &lower, &text_words, &message_words);

    let adds_word = text_words
        .iter()
        .any(|word| !message_words.iter().any(|known| bare(known) == bare(word)));
    let adds_emoji = rules.markers.iter().any(|marker| {
        is_emoji_marker(marker) && lower.contains(marker) && !message_lower.contains(marker)
    });
    let echo = !adds_word && !adds_emoji;

    let mut content: Vec<&str> = message_words
        .iter()
        .map(|word| bare(word))
        .filter(|word| word.len() >= 2 && !STOPWORDS.contains(word))
        .collect();
    if content.is_empty() {
        content = message_words
            .iter()
            .map(|word| bare(word))
            .filter(|word| !word.is_empty())
            .collect();
    }
    content.sort_unstable();
    content.dedup();
    let content_words_kept = content
        .iter()
        .filter(|word| {
            text_words
                .iter()
                .any(|candidate| same_stem(word, candidate))
        })
        .count();
    let rambling = text_words.len() > 2 * message_words.len() + RAMBLING_WORDS_EXTRA
        || repeats_itself(&text_words);

    let model_in_style = has_new_marker(rules, &lower, &text_words, &message_lower, &message_words);
    let in_style = model_in_style || {
        let delivered = format!("{} {lower}", opener.to_lowercase());
        has_new_marker(
            rules,
            &delivered,
            &words(&delivered),
            &message_lower,
            &message_words,
        )
    };
    Assessment {
        prompt_leak,
        echo,
        content_words_kept,
        content_words: content.len(),
        rambling,
        in_style,
        model_in_style,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(style: &str, message: &str, completion: &str) -> Result<(), Rejection> {
        assess_completion(style, message, "", completion)
            .expect("known style")
            .verdict()
    }

    #[test]
    fn table() {
        use Rejection::*;
        let cases: &[(&str, &str, &str, Result<(), Rejection>)] = &[
            (
                "pirate",
                "that last play was amazing",
                "Arr, that last play be amazin', matey!",
                Ok(()),
            ),
            (
                "pirate",
                "that last play was amazing",
                "That last play was amazing!",
                Err(Echo),
            ),
            (
                "pirate",
                "that last play was amazing",
                "that last play was amazing 🦜",
                Ok(()),
            ),
            (
                "pirate",
                "hello everyone how is the stream going",
                "Hello everyone, aye.",
                Ok(()),
            ),
            (
                "pirate",
                "my internet keeps lagging",
                "Arr, me internet keeps laggin', matey!",
                Ok(()),
            ),
            (
                "pirate",
                "my internet keeps lagging",
                "Arr, I love the sea, matey!",
                Err(OffTopic),
            ),
            (
                "pirate",
                "my internet keeps lagging",
                "My internet keeps lagging again today",
                Err(OffStyle),
            ),
            ("pirate", "arr matey", "arr matey!", Err(Echo)),
            (
                "pirate",
                "who won",
                "Arr, the boss just sent him to Davy Jones, who won",
                Err(PromptLeak),
            ),
            (
                "shakespeare",
                "is this a new map",
                "thou, thee, hark, prithee, forsooth",
                Err(PromptLeak),
            ),
            (
                "shakespeare",
                "is this a new map",
                "Prithee, is this a new map?",
                Ok(()),
            ),
            (
                "shakespeare",
                "this song is a banger",
                "This song doth banger",
                Ok(()),
            ),
            (
                "corporate",
                "gg",
                "Quick sync: gg, that was close, great synergy team.",
                Err(PromptLeak),
            ),
            (
                "corporate",
                "the tank is not doing anything",
                "The tank is idle, let's circle back on strategy.",
                Ok(()),
            ),
            (
                "brainrot",
                "nice stream",
                "this stream is giving slay",
                Ok(()),
            ),
            (
                "brainrot",
                "nice stream",
                "the outfit today is giving slay",
                Err(PromptLeak),
            ),
            (
                "brainrot",
                "that was so clean",
                "no way he hit that shot, no way he hit that shot",
                Err(OffTopic),
            ),
            (
                "corporate",
                "gg",
                "Quick win team, gg all round, let's align.",
                Ok(()),
            ),
            (
                "brainrot",
                "ok",
                "<|im_start|>assistant ok bestie",
                Err(PromptLeak),
            ),
            (
                "brainrot",
                "this song is a banger",
                "this song is a banger no cap 🔥",
                Ok(()),
            ),
            (
                "brainrot",
                "this song is a banger",
                "Rewritten: this song is a banger fr",
                Err(PromptLeak),
            ),
            (
                "brainrot",
                "this song is a banger",
                &"this song is a banger it's a banger fr ".repeat(5),
                Err(OffTopic),
            ),
            ("brainrot", "💀💀💀", "bestie I'm dead 💀", Ok(())),
        ];
        for (style, message, completion, expected) in cases {
            assert_eq!(
                verdict(style, message, completion),
                *expected,
                "{style}: {message:?} -> {completion:?}: {:?}",
                assess_completion(style, message, "", completion)
            );
        }
        assert_eq!(assess_completion("klingon", "a", "", "b"), None);
    }

    #[test]
    fn an_opener_makes_the_style_but_not_the_rewrite() {
        let echo = assess_completion(
            "shakespeare",
            "can you play the new map",
            "Prithee,",
            " can you play the new map?",
        )
        .expect("known style");
        assert!(echo.in_style && !echo.model_in_style);
        assert_eq!(echo.verdict(), Err(Rejection::Echo));
        let rewrite = assess_completion(
            "shakespeare",
            "this song is a banger",
            "Forsooth,",
            " this song is a banger, good sir!",
        )
        .expect("known style");
        assert!(rewrite.in_style && rewrite.model_in_style);
        assert_eq!(rewrite.verdict(), Ok(()));
        let plain = assess_completion(
            "corporate",
            "the boss fight is so hard",
            "Heads up:",
            " the boss fight is hard today",
        )
        .expect("known style");
        assert!(plain.in_style && !plain.model_in_style);
        assert_eq!(plain.verdict(), Ok(()));
    }

    #[test]
    fn stems_and_words() {
        assert_eq!(
            words("Arr, ye be playin' — 'tis GG’s"),
            ["arr", "ye", "be", "playin'", "'tis", "gg's"]
        );
        assert!(same_stem("lagging", "laggin'"));
        assert!(same_stem("map", "maps"));
        assert!(same_stem("play", "playing"));
        assert!(!same_stem("map", "mad"));
        assert!(!same_stem("stream", "strong"));
    }

    #[test]
    fn every_shot_passes_its_own_gate_and_leaks_into_others() {
        // The examples are the pattern the model copies: each must read as its style and keep its message, and
        // each copied into the answer to another message must count as a leak.
        for (index, style) in STYLES.iter().enumerate() {
            for (message, rewrite) in style.llm.shots {
                let own = assess(index, message, "", rewrite);
                assert_eq!(
                    own.verdict(),
                    Ok(()),
                    "{}: {message:?} -> {rewrite:?}: {own:?}",
                    style.name
                );
                assert!(own.model_in_style);
                let other = assess(index, "unrelated words here", "", rewrite);
                assert!(
                    other.prompt_leak,
                    "{}: {rewrite:?} is in the prompt",
                    style.name
                );
            }
        }
    }
}
