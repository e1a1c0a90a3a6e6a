//! The local rewriter (`twitchy_inference::local_rewrite`) against a naive baseline measured in the same run, on
//! ~150-byte chat messages (ASCII, emoji, right-to-left with combining marks, messages with control characters).
//!
//! The baseline does what a first version would: filter characters into a new `String`, collapse whitespace with
//! `split_whitespace().collect().join()`, add the style with `format!`, sprinkle interjections with `.replace()`,
//! and cut to the limit by collecting `chars()`. Throughput is in messages, so the report reads as messages/s on
//! one core.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

const STYLED_CHARS_MAX: usize = twitchy_inference::STYLED_CHARS_MAX;

/// Chat-like messages of about 150 bytes each.
const MESSAGES: [&str; 4] = [
    "gg that was the cleanest clutch I have seen all week, chat is going absolutely wild right now lets go team \
     pog pog pog, clip it before the vod gets muted",
    "no way 😂😂 he really did that 🔥🔥 on stream 💀 chat clip it 📎 before the mods wake up 👀 LUL KEKW pog 🤪 \
     👍🏽 gg wp",
    "שלום לכולם! מה קורה בצ'אט היום? ma\u{301}s cafe\u{301} por favor, ¿qué tal el stream? بسم الله \
     مرحبا يا شباب",
    "hey\tchat\n\nfirst time here\u{7} love the \u{202E}vibes\u{202C} and the music, what game is next? \u{1b}[1m \
     been watching the vods all week, you are the best",
];

/// The first-version rewriter: correct, but allocation- and pass-heavy.
fn naive_rewrite(style: &str, text: &str, seed: u64) -> String {
    let openers = ["Hey bestie! ✨💅", "Okay so", "POV:", "Lowkey"];
    let closers = ["No cap, slayyy.", "Busssin.", "Periodt.", "Fr fr."];
    let cleaned: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .filter(|c| !matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'))
        .collect();
    let words: Vec<&str> = cleaned.split_whitespace().collect();
    let joined = words.join(" ");
    let opener = openers[(seed % 4) as usize];
    let closer = closers[((seed >> 2) % 4) as usize];
    let styled = if style == "brainrot" {
        format!(
            "{opener} {} {closer}",
            joined
                .replacen(" the ", " the, fr fr, ", 1)
                .replace(" and ", " and, no cap, ")
        )
    } else {
        format!("{opener} {joined} {closer}")
    };
    if styled.chars().count() > STYLED_CHARS_MAX {
        styled.chars().take(STYLED_CHARS_MAX).collect()
    } else {
        styled
    }
}

fn rewriter(c: &mut Criterion) {
    for message in MESSAGES {
        assert!(
            (100..=200).contains(&message.len()),
            "message of {} bytes",
            message.len()
        );
    }
    let mut group = c.benchmark_group("local_rewrite");
    group.throughput(Throughput::Elements(MESSAGES.len() as u64));
    for style in twitchy_inference::style_names() {
        group.bench_with_input(BenchmarkId::new("twitchy", style), style, |b, style| {
            let mut seed = 0u64;
            b.iter(|| {
                for message in MESSAGES {
                    seed = seed.wrapping_add(1);
                    black_box(twitchy_inference::local_rewrite(
                        style,
                        black_box(message),
                        seed,
                    ));
                }
            })
        });
    }
    group.bench_function(BenchmarkId::new("naive_baseline", "brainrot"), |b| {
        let mut seed = 0u64;
        b.iter(|| {
            for message in MESSAGES {
                seed = seed.wrapping_add(1);
                black_box(naive_rewrite("brainrot", black_box(message), seed));
            }
        })
    });
    group.finish();
}

criterion_group!(benches, rewriter);
criterion_main!(benches);
