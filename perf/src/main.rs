//! `twitchy-perf`: load scenarios, idle-connection memory, and RESULTS.md.

use std::path::PathBuf;

use anyhow::{Context as _, anyhow};
use clap::{Args, Parser, Subcommand};
use twitchy_perf::conn::Target;
use twitchy_perf::scenario::{PRESETS, Scenario, Transport};
use twitchy_perf::{load, report, results};

#[derive(Debug, Parser)]
#[command(about = "Load generator for Twitchy Chat and servers speaking its dialect")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a load scenario against one or more targets (compared with the first).
    Run(RunArgs),
    /// Open idle connections and report the server's memory per connection.
    Memory(MemoryArgs),
    /// Write RESULTS.md from the summaries in an output folder.
    Results(ResultsArgs),
    /// Print the named presets as JSON.
    Presets {
        #[arg(long)]
        quick: bool,
    },
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Targets as NAME=HTTP_ADDR[,irc=ADDR][,pid=PID][,log=PATH]; the first is
    /// the one ratios are stated for.
    #[arg(long = "target", required = true)]
    targets: Vec<Target>,
    /// A named preset; flags below override its fields.
    #[arg(long, default_value = "average")]
    preset: String,
    /// The preset's short variant.
    #[arg(long)]
    quick: bool,
    /// Name written into the summary and used for output files.
    #[arg(long)]
    name: Option<String>,
    #[arg(long, value_enum)]
    transport: Option<Transport>,
    #[arg(long)]
    rooms: Option<u32>,
    #[arg(long)]
    senders_per_room: Option<u32>,
    #[arg(long)]
    viewers_per_room: Option<u32>,
    #[arg(long)]
    slow_viewers_per_room: Option<u32>,
    /// Messages per second offered over all rooms.
    #[arg(long)]
    rate: Option<f64>,
    #[arg(long)]
    duration_ms: Option<u64>,
    #[arg(long)]
    drain_ms_max: Option<u64>,
    #[arg(long)]
    message_bytes: Option<u32>,
    /// Connections opened at once; 0 opens all at once.
    #[arg(long)]
    connect_concurrency: Option<u32>,
    #[arg(long)]
    connect_timeout_ms: Option<u64>,
    /// Folder for the JSON summary, HTML report and SVG charts.
    #[arg(long, default_value = "perf/out")]
    out: PathBuf,
    /// Run id carried in every nonce; defaults to one derived from the clock.
    #[arg(long)]
    run_id: Option<u32>,
    #[arg(long)]
    no_progress: bool,
}

#[derive(Debug, Args)]
struct MemoryArgs {
    #[arg(long = "target", required = true)]
    targets: Vec<Target>,
    /// Idle connections to open per target (this process holds them all).
    #[arg(long, default_value_t = 5_000)]
    connections: u64,
    #[arg(long, value_enum, default_value = "ws")]
    transport: Transport,
    /// Pause before each RSS reading.
    #[arg(long, default_value_t = 1_000)]
    settle_ms: u64,
    #[arg(long, default_value = "perf/out")]
    out: PathBuf,
    #[arg(long)]
    no_progress: bool,
}

#[derive(Debug, Args)]
struct ResultsArgs {
    #[arg(long, default_value = "perf/out")]
    out: PathBuf,
    #[arg(long, default_value = "target/criterion")]
    criterion: PathBuf,
    /// Only criterion results written at or after this Unix time.
    #[arg(long, default_value_t = 0)]
    since: u64,
    /// Commands to list in the report (repeatable).
    #[arg(long = "command")]
    commands: Vec<String>,
    #[arg(long)]
    quick: bool,
    #[arg(long, default_value = "perf/RESULTS.md")]
    write: PathBuf,
}

/// Most connections one load-generator process opens in the memory mode;
/// the per-process open-file cap is 20000 and the process needs headroom.
const MEMORY_CONNECTIONS_MAX: u64 = 18_000;

fn scenario_from(args: &RunArgs) -> anyhow::Result<Scenario> {
    let mut s = Scenario::preset(&args.preset, args.quick).ok_or_else(|| {
        anyhow!(
            "unknown preset {:?}; known: {}",
            args.preset,
            PRESETS.join(", ")
        )
    })?;
    if let Some(name) = &args.name {
        s.name = name.clone();
    }
    if let Some(v) = args.transport {
        s.transport = v;
    }
    macro_rules! apply {
        ($($field:ident <- $arg:ident),*) => { $( if let Some(v) = args.$arg { s.$field = v; } )* };
    }
    apply!(
        rooms <- rooms,
        senders_per_room <- senders_per_room,
        viewers_per_room <- viewers_per_room,
        slow_viewers_per_room <- slow_viewers_per_room,
        rate_msgs_per_s <- rate,
        duration_ms <- duration_ms,
        drain_ms_max <- drain_ms_max,
        message_bytes <- message_bytes,
        connect_concurrency <- connect_concurrency,
        connect_timeout_ms <- connect_timeout_ms
    );
    s.validate().map_err(|e| anyhow!(e))?;
    Ok(s)
}

fn write_file(path: PathBuf, contents: &str) -> anyhow::Result<()> {
    std::fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))
}

fn safe_file_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => {
            let scenario = scenario_from(&args)?;
            let fd_limit = twitchy_perf::conn::raise_fd_limit();
            let needed =
                u64::from(scenario.viewers() + scenario.senders()) * args.targets.len() as u64;
            if needed + 100 > fd_limit {
                anyhow::bail!(
                    "{needed} connections need more than this process's open-file limit {fd_limit}; \
                     split the run over several processes"
                );
            }
            let run_id = args.run_id.unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| (d.as_millis() % 1_000_000_000) as u32)
                    .unwrap_or(1)
            });
            let options = load::RunOptions {
                run: run_id,
                progress: !args.no_progress,
            };
            let summary =
                runtime()?.block_on(load::run_scenario(&scenario, &args.targets, &options))?;
            std::fs::create_dir_all(&args.out)?;
            let base = safe_file_name(&scenario.name);
            let json = serde_json::to_string_pretty(&summary)?;
            write_file(args.out.join(format!("{base}.json")), &json)?;
            write_file(
                args.out.join(format!("{base}.html")),
                &report::run_html(&summary),
            )?;
            write_file(
                args.out.join(format!("{base}-latency.svg")),
                &report::latency_over_time_svg(&summary),
            )?;
            write_file(
                args.out.join(format!("{base}-throughput.svg")),
                &report::throughput_svg(&summary),
            )?;
            write_file(
                args.out.join(format!("{base}-distribution.svg")),
                &report::distribution_svg(&summary),
            )?;
            println!("{json}");
        }
        Command::Memory(args) => {
            if args.connections == 0 || args.connections > MEMORY_CONNECTIONS_MAX {
                anyhow::bail!(
                    "--connections must be 1..={MEMORY_CONNECTIONS_MAX} per process; run several \
                     processes for more"
                );
            }
            twitchy_perf::conn::raise_fd_limit();
            let summary = runtime()?.block_on(load::run_memory(
                &args.targets,
                args.connections,
                args.transport,
                args.settle_ms,
                !args.no_progress,
            ))?;
            std::fs::create_dir_all(&args.out)?;
            let json = serde_json::to_string_pretty(&summary)?;
            write_file(args.out.join("memory.json"), &json)?;
            write_file(args.out.join("memory.html"), &report::memory_html(&summary))?;
            println!("{json}");
        }
        Command::Results(args) => {
            let (runs, memory) = results::read_summaries(&args.out);
            let benches = results::criterion_figures(&args.criterion, args.since);
            let md = results::render(&runs, &memory, &benches, &args.commands, args.quick);
            write_file(args.write.clone(), &md)?;
            eprintln!(
                "wrote {} ({} scenarios, {} memory runs, {} benchmarks)",
                args.write.display(),
                runs.len(),
                memory.len(),
                benches.len()
            );
        }
        Command::Presets { quick } => {
            let presets: Vec<Scenario> = PRESETS
                .iter()
                .filter_map(|p| Scenario::preset(p, quick))
                .collect();
            println!("{}", serde_json::to_string_pretty(&presets)?);
        }
    }
    Ok(())
}
