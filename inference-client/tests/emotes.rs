//! Protected words (emote codes) on the vLLM path, against the in-process OpenAI-compatible server: the model sees
//! placeholders, the codes come back in its completion, and a completion that drops, alters, repeats or invents one
//! is replaced by the local rewrite, counted under `emotes`.

mod fake_server;

use std::future::Future;
use std::rc::Rc;
use std::sync::Arc;

use fake_server::{FakeServer, Mode, STYLE_TAIL};
use twitchy_inference::{
    ClusterStylerFactory, FallbackReason, ProtectedWords, Styled, StyledBy, Styler, StylerConfig,
    StylerFactory,
};

const EMOTES: [&str; 4] = ["twiGG", "twiHype", "twiSkull", "twiLOL"];

/// The style every message here is styled in; the fake server's tail passes its quality gate.
const STYLE: &str = "pirate";

fn on_shard<G, F, T>(body: G) -> T
where
    G: FnOnce() -> F + Send + 'static,
    F: Future<Output = T> + 'static,
    T: Send + 'static,
{
    twitchy_inference::rt::run_on_new_shard(512 << 10, body).expect("executor runs")
}

fn config(url: String) -> StylerConfig {
    StylerConfig {
        vllm_endpoints: vec![url],
        // Generous: these tests are about texts, not time, and share two cores with builds.
        deadline_ms: 2_000,
        health_interval_ms: 50,
        // The fake server's answers are whole: no opener before them keeps the expected texts exact.
        assistant_prefill: false,
        protected_words: EMOTES.iter().map(|code| code.to_string()).collect(),
        ..StylerConfig::default()
    }
}

fn protected() -> ProtectedWords {
    ProtectedWords::new(EMOTES)
}

/// What the local rewriter makes of a message: what a fallback must deliver.
fn local(message: &str, seed: u64) -> String {
    twitchy_inference::local_rewrite_protected(STYLE, message, seed, &protected())
}

fn codes_of(text: &str) -> Vec<String> {
    protected().occurrences(text).map(str::to_owned).collect()
}

fn sorted(mut codes: Vec<String>) -> Vec<String> {
    codes.sort();
    codes
}

/// Styles one message at a time on `styler`, under the server's current behaviour.
async fn style_one(styler: &Rc<dyn Styler>, message: &str, seed: u64) -> Styled {
    styler.style(STYLE, message, seed).await
}

#[test]
fn completions_that_keep_the_placeholders_deliver_the_codes_others_fall_back() {
    let server = Arc::new(FakeServer::start());
    let url = server.url();
    let control = Arc::clone(&server);
    // (what the model does to the message it was shown, whether the completion is used)
    type Case = (&'static str, fn(&str) -> String, bool);
    let cases: Vec<Case> = vec![
        ("keep", |m| format!("styled: {m} {STYLE_TAIL}"), true),
        (
            "reorder",
            |m| {
                format!(
                    "styled: {} {STYLE_TAIL}",
                    m.replace("[E1]", "@")
                        .replace("[E2]", "[E1]")
                        .replace('@', "[E2]")
                )
            },
            true,
        ),
        (
            "glue punctuation after",
            |m| format!("styled: {}! {STYLE_TAIL}", m.replace("[E1]", "[E1],")),
            true,
        ),
        (
            "drop one",
            |m| format!("styled: {} {STYLE_TAIL}", m.replace("[E2]", "")),
            false,
        ),
        (
            "re-case one",
            |m| format!("styled: {} {STYLE_TAIL}", m.replace("[E1]", "[e1]")),
            false,
        ),
        (
            "glue text before",
            |m| format!("styled: {} {STYLE_TAIL}", m.replace("[E1]", "lol[E1]")),
            false,
        ),
        (
            "repeat one",
            |m| format!("styled: {} {STYLE_TAIL}", m.replace("[E1]", "[E1] [E1]")),
            false,
        ),
        (
            "invent a placeholder",
            |m| format!("styled: {m} [E3] {STYLE_TAIL}"),
            false,
        ),
        (
            "invent a code",
            |m| format!("styled: {m} twiSkull {STYLE_TAIL}"),
            false,
        ),
        (
            "spell the codes out",
            |m| {
                format!(
                    "styled: {} {STYLE_TAIL}",
                    m.replace("[E1]", "twiGG").replace("[E2]", "twiHype")
                )
            },
            false,
        ),
    ];
    let names: Vec<&str> = cases.iter().map(|(name, _, _)| *name).collect();
    let expected_used: Vec<bool> = cases.iter().map(|(_, _, used)| *used).collect();
    let transforms: Vec<fn(&str) -> String> = cases.iter().map(|(_, f, _)| *f).collect();
    let (results, seen, totals, metrics) = on_shard(move || async move {
        let factory = ClusterStylerFactory::new(config(url));
        let styler = factory.local_styler(0);
        let mut results = Vec::new();
        for (index, transform) in transforms.into_iter().enumerate() {
            control.set_transform(transform);
            // A message per case, so that none is answered from the cache.
            let message = format!("twiGG case {index} was close twiHype");
            results.push((
                message.clone(),
                style_one(&styler, &message, index as u64).await,
            ));
        }
        (
            results,
            control.messages(),
            factory.totals(),
            factory.metrics_text(),
        )
    });
    for (index, seen) in seen.iter().enumerate() {
        assert_eq!(
            seen,
            &format!("[E1] case {index} was close [E2]"),
            "the model saw the codes"
        );
    }
    let mut fallbacks = 0;
    for (seed, (((message, styled), name), used)) in
        results.iter().zip(&names).zip(&expected_used).enumerate()
    {
        let seed = seed as u64;
        if *used {
            assert_eq!(styled.by, StyledBy::Llm, "{name}: {styled:?}");
            assert!(styled.text.starts_with("styled: "), "{name}: {styled:?}");
        } else {
            fallbacks += 1;
            assert_eq!(styled.by, StyledBy::Local, "{name}: {styled:?}");
            assert_eq!(styled.text, local(message, seed), "{name}");
        }
        assert_eq!(
            sorted(codes_of(&styled.text)),
            sorted(codes_of(message)),
            "{name}: {styled:?}"
        );
        assert!(!styled.text.contains("[E"), "{name}: {styled:?}");
    }
    assert_eq!(
        results[0].1.text,
        format!("styled: twiGG case 0 was close twiHype {STYLE_TAIL}")
    );
    assert_eq!(
        results[1].1.text,
        format!("styled: twiHype case 1 was close twiGG {STYLE_TAIL}")
    );
    assert_eq!(
        results[2].1.text,
        format!("styled: twiGG case 2 was close twiHype {STYLE_TAIL}"),
        "punctuation glued to a placeholder goes, so the code stays a word of its own"
    );
    assert_eq!(totals.fallback(FallbackReason::Emotes), fallbacks);
    assert_eq!(totals.llm, 3);
    assert!(
        metrics.contains(&format!(
            "twitchy_styler_fallbacks_total{{reason=\"emotes\"}} {fallbacks}\n"
        )),
        "{metrics}"
    );
}

#[test]
fn plain_messages_go_as_they_are_and_may_not_gain_a_code() {
    let server = Arc::new(FakeServer::start());
    let url = server.url();
    let control = Arc::clone(&server);
    let (kept, glued, invented, seen, totals) = on_shard(move || async move {
        let factory = ClusterStylerFactory::new(config(url));
        let styler = factory.local_styler(0);
        control.set_mode(Mode::Echo);
        let kept = style_one(&styler, "what a play gg", 1).await;
        // Twitch matches whole words only: `twiGG!` is no emote, so the model sees it as it is.
        let glued = style_one(&styler, "what a play twiGG!", 2).await;
        control.set_transform(|m| format!("styled: {m} twiLOL {STYLE_TAIL}"));
        let invented = style_one(&styler, "no codes in here", 3).await;
        (kept, glued, invented, control.messages(), factory.totals())
    });
    assert_eq!(
        seen,
        ["what a play gg", "what a play twiGG!", "no codes in here"]
    );
    assert_eq!(
        kept,
        Styled {
            text: format!("styled: what a play gg {STYLE_TAIL}"),
            by: StyledBy::Llm
        }
    );
    assert_eq!(
        glued,
        Styled {
            text: format!("styled: what a play twiGG! {STYLE_TAIL}"),
            by: StyledBy::Llm
        }
    );
    assert_eq!(
        invented,
        Styled {
            text: local("no codes in here", 3),
            by: StyledBy::Local
        }
    );
    assert!(codes_of(&invented.text).is_empty());
    assert_eq!(totals.fallback(FallbackReason::Emotes), 1);
}

#[test]
fn messages_of_codes_alone_and_lookalike_placeholders_never_reach_the_model() {
    let server = Arc::new(FakeServer::start());
    let url = server.url();
    let control = Arc::clone(&server);
    let (only, conflict, prompts, totals, metrics) = on_shard(move || async move {
        let factory = ClusterStylerFactory::new(config(url));
        let styler = factory.local_styler(0);
        control.set_mode(Mode::Echo);
        let only = style_one(&styler, "  twiGG\ttwiHype twiGG ", 1).await;
        // Text that reads as a placeholder next to a code: the two could not be told apart in the completion.
        let conflict = style_one(&styler, "[E1] means twiGG", 2).await;
        (
            only,
            conflict,
            control.prompts(),
            factory.totals(),
            factory.metrics_text(),
        )
    });
    assert_eq!(prompts, 0, "the model was asked");
    assert_eq!(
        only,
        Styled {
            text: "twiGG twiHype twiGG".into(),
            by: StyledBy::Local
        },
        "a message of codes alone is delivered as it is"
    );
    assert_eq!(
        conflict,
        Styled {
            text: local("[E1] means twiGG", 2),
            by: StyledBy::Local
        }
    );
    assert_eq!(codes_of(&conflict.text), ["twiGG"]);
    assert_eq!(totals.fallback(FallbackReason::EmoteOnly), 1);
    assert_eq!(totals.fallback(FallbackReason::Emotes), 1);
    assert!(
        metrics.contains("twitchy_styler_fallbacks_total{reason=\"emote_only\"} 1\n"),
        "{metrics}"
    );
}

#[test]
fn the_cache_holds_placeholders_and_each_message_gets_its_own_codes() {
    let server = Arc::new(FakeServer::start());
    let url = server.url();
    let control = Arc::clone(&server);
    let (results, prompts, totals) = on_shard(move || async move {
        let factory = ClusterStylerFactory::new(config(url));
        let styler = factory.local_styler(0);
        control.set_mode(Mode::Echo);
        let mut results = Vec::new();
        // One completion, for `gg [E1]`, serves all three: each gets its own code, or the literal text.
        for message in ["gg twiGG", "gg twiHype", "gg [E1]"] {
            results.push(style_one(&styler, message, 0).await);
        }
        // A completion cached for a message without codes need not keep text that looks like a placeholder; a
        // message with a code that hits it must not be delivered without its code.
        control.set_transform(|m| format!("styled: {} {STYLE_TAIL}", m.replace("[E1]", "")));
        results.push(style_one(&styler, "wp [E1]", 0).await);
        results.push(style_one(&styler, "wp twiSkull", 5).await);
        (results, control.prompts(), factory.totals())
    });
    let llm = |text: String| Styled {
        text,
        by: StyledBy::Llm,
    };
    assert_eq!(
        results,
        [
            llm(format!("styled: gg twiGG {STYLE_TAIL}")),
            llm(format!("styled: gg twiHype {STYLE_TAIL}")),
            llm(format!("styled: gg [E1] {STYLE_TAIL}")),
            llm(format!("styled: wp {STYLE_TAIL}")),
            Styled {
                text: local("wp twiSkull", 5),
                by: StyledBy::Local
            },
        ]
    );
    assert_eq!(prompts, 2, "the cache answered the rest");
    assert_eq!(totals.cache_hits, 2);
    assert_eq!(totals.fallback(FallbackReason::Emotes), 1);
}

#[test]
fn the_local_only_factory_protects_the_configured_codes() {
    let results = on_shard(|| async {
        let factory = ClusterStylerFactory::new(StylerConfig {
            vllm_endpoints: Vec::new(),
            ..config(String::new())
        });
        let styler = factory.local_styler(0);
        let mut results = Vec::new();
        for seed in 0..32 {
            for message in [
                "that was close twiGG",
                "twiHype twiHype twiHype twiHype twiHype twiHype gg",
                "twiGG twiLOL",
            ] {
                results.push((message, seed, styler.style(STYLE, message, seed).await));
            }
        }
        results
    });
    for (message, seed, styled) in results {
        assert_eq!(styled.by, StyledBy::Local);
        assert_eq!(styled.text, local(message, seed));
        assert_eq!(codes_of(&styled.text), codes_of(message), "{styled:?}");
    }
}
