//! Prints a few local rewrites per style: `cargo run --release -p twitchy-inference --example samples`.

fn main() {
    for style in twitchy_inference::style_names() {
        for seed in 0..3 {
            println!(
                "{style}: {}",
                twitchy_inference::local_rewrite(style, "hi there", seed)
            );
        }
        println!(
            "{style}: {}",
            twitchy_inference::local_rewrite(
                style,
                "gg that was the best clutch I have ever seen on this stream",
                9
            )
        );
    }
}
