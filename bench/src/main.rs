//! voicegate-bench: the project's load generator and benchmarks.
//!
//! - `load`: N concurrent calls (profile `echo` or `dialog`) through the real HTTP offer API and
//!   real WebRTC, with pre-encoded Opus; one step, or a ramp of steps that finds the largest N
//!   that still holds the quality bar. Against a server it starts itself (`--spawn`, optionally
//!   pinned with `--pin`) or one already running (`--server`, `--pid`).
//! - `soak`: one long step, the server's RSS sampled over time.
//! - `sequential`: many echo calls one after another, ended every way a call ends, and the
//!   server's open files, threads, live calls, actors, driver tasks, routes and RSS compared with
//!   a baseline afterwards.
//! - `hostile`: N echo calls measured like a `load` step while garbage UDP, an offer flood
//!   from one address and a misbehaving dialog app run against the same server (with its
//!   default limits); fails unless every call connected, got its echo back and lost no uplink.
//! - `floor`: the Opus decode + encode work of N calls alone, no WebRTC.
//! - `sansio`: the per-packet work of N echo calls' WebRTC transport in webrtc-rs's sans-IO
//!   core (`rtc`) driven directly on one thread, no async wrapper: what a call would cost with
//!   media bypassing the `webrtc` crate's driver (issue 15's evidence).
//! - `speech`: speech latencies (TTS first audio, interrupt, turns) against a running server.
//! - `recognize`: pocketsphinx on a WAV file.
//! - `stand-ins`: local speech vendors (recognition: Deepgram streaming, OpenAI-compatible;
//!   synthesis: OpenAI-compatible, ElevenLabs, Cartesia) with a fixed first-result delay, for
//!   `speech` runs that compare the engines.
//! - `denoise`: the speech path on phrases in babble, fan and typing noise, with and without
//!   `listen.denoise`: false starts, exact recognition with a grammar, the denoiser's CPU.
//!
//! Every load figure is of calls that really happened: it exits non-zero when no call connected
//! or no audio flowed (and, for `hostile`, when an attacker did not run).

use anyhow::{Context as _, bail};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

mod denoise;
mod dialog;
mod floor;
mod hostile;
mod load;
mod recognize;
mod sansio;
mod sequential;
mod speech;
mod stand_ins;
mod target;

use load::{Profile, StepPlan};
use target::{Limits, Source};

const USAGE: &str = "usage:
  voicegate-bench load  [--profile echo|dialog] (--spawn <voicegate binary> | --server http://ip:port [--pid PID])
                        [--calls N | --ramp FROM:STEP:TO] [--seconds S] [--stagger-ms MS] [--pin SERVER_CPUS/BENCH_CPUS] [--json]
  voicegate-bench soak  [--profile echo|dialog] (--spawn ... | --server ...) --calls N --minutes M [--sample-s S] [--pin ...] [--json]
  voicegate-bench hostile --spawn <voicegate binary> [--calls 40] [--seconds 20] [--stagger-ms MS]
                        [--attacks garbage,flood,app] [--json]
  voicegate-bench sequential --spawn <voicegate binary> [--calls 10000] [--warmup 100] [--frames 5]
                        [--sample-every 1000] [--rss-slack-pct 5] [--json]
  voicegate-bench floor [--calls N] [--seconds S] [--complexity C] [--fec on|off]
                        [--phase spread|lockstep] [--json]
  voicegate-bench sansio [--calls N] [--seconds S] [--udp] [--json]
  voicegate-bench speech --server http://ip:port --dialog-listen ip:port [--runs N]
  voicegate-bench recognize <file.wav> [--grammar <file.gram>]
  voicegate-bench denoise [--grammar <file.gram>] [--verbose]   (default tests/fixtures/test.gram)
  voicegate-bench stand-ins [--delay-ms 100] [--deepgram-listen ip:port] [--openai-listen ip:port]
                            [--openai-tts-listen ip:port] [--elevenlabs-listen ip:port] [--cartesia-listen ip:port]
                            [--connection-setup-ms 0] [--no-keep-alive]
                        (speech vendors on this machine for `speech` runs, until stopped; each
                        holds a new connection --connection-setup-ms, the handshakes' round trips
                        over a network (the WebSocket ones before the upgrade); the OpenAI-compatible
                        ones keep connections unless told not to)
  (`voicegate-bench echo ...` is `load --profile echo ...`)";

/// Calls per step (and floor calls) when `--calls` is not given.
const DEFAULT_CALLS: usize = 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Load,
    Soak,
    Hostile,
    Floor,
    SansIo,
    Speech,
    Sequential,
}

struct Args {
    mode: Mode,
    profile: Profile,
    spawn: Option<String>,
    server: SocketAddr,
    pid: Option<u32>,
    /// `--calls`, when given (the default depends on the mode).
    calls: Option<usize>,
    ramp: Option<(usize, usize, usize)>,
    seconds: u64,
    minutes: u64,
    sample_s: u64,
    stagger_ms: u64,
    pin: Option<(String, String)>,
    complexity: i32,
    fec: bool,
    lockstep: bool,
    udp: bool,
    dialog_listen: SocketAddr,
    runs: usize,
    attacks: hostile::Attacks,
    warmup: usize,
    frames: usize,
    sample_every: usize,
    rss_slack_pct: f64,
    json: bool,
}

fn parse_args(argv: &[String]) -> anyhow::Result<Args> {
    let mut a = Args {
        mode: Mode::Load,
        profile: Profile::Echo,
        spawn: None,
        server: "127.0.0.1:8080".parse()?,
        pid: None,
        calls: None,
        ramp: None,
        seconds: 20,
        minutes: 10,
        sample_s: 10,
        stagger_ms: 10,
        pin: None,
        complexity: 5,
        fec: true,
        lockstep: false,
        udp: false,
        dialog_listen: "127.0.0.1:18100".parse()?,
        runs: 20,
        attacks: hostile::Attacks::ALL,
        warmup: 100,
        frames: 5,
        sample_every: 1000,
        rss_slack_pct: 5.0,
        json: false,
    };
    let mut it = argv.iter().skip(1);
    let mut first = true;
    while let Some(arg) = it.next() {
        let mut val = || {
            it.next()
                .cloned()
                .with_context(|| format!("{arg} needs a value\n{USAGE}"))
        };
        match arg.as_str() {
            "load" | "echo" if first => a.mode = Mode::Load,
            "soak" if first => a.mode = Mode::Soak,
            "hostile" if first => a.mode = Mode::Hostile,
            "floor" if first => a.mode = Mode::Floor,
            "sansio" if first => a.mode = Mode::SansIo,
            "speech" if first => a.mode = Mode::Speech,
            "sequential" if first => a.mode = Mode::Sequential,
            "--profile" => {
                a.profile = match val()?.as_str() {
                    "echo" => Profile::Echo,
                    "dialog" => Profile::Dialog,
                    p => bail!("--profile {p}: want echo or dialog"),
                }
            }
            "--spawn" => a.spawn = Some(val()?),
            "--server" => {
                let v = val()?;
                let hostport = v.trim_start_matches("http://").trim_end_matches('/');
                a.server = hostport
                    .parse()
                    .with_context(|| format!("--server {v}: want http://ip:port"))?;
            }
            "--pid" => a.pid = Some(val()?.parse()?),
            "--calls" => a.calls = Some(val()?.parse()?),
            "--ramp" => {
                let v = val()?;
                let p: Vec<usize> = v
                    .split(':')
                    .map(str::parse)
                    .collect::<Result<_, _>>()
                    .with_context(|| format!("--ramp {v}: want FROM:STEP:TO"))?;
                let [from, step, to] = p[..] else {
                    bail!("--ramp {v}: want FROM:STEP:TO")
                };
                anyhow::ensure!(
                    from > 0 && step > 0 && to >= from,
                    "--ramp {v}: want 0 < FROM <= TO, STEP > 0"
                );
                a.ramp = Some((from, step, to));
            }
            "--seconds" => a.seconds = val()?.parse()?,
            "--minutes" => a.minutes = val()?.parse()?,
            "--sample-s" => a.sample_s = val()?.parse()?,
            "--stagger-ms" => a.stagger_ms = val()?.parse()?,
            "--pin" => {
                let v = val()?;
                let (s, b) = v
                    .split_once('/')
                    .with_context(|| format!("--pin {v}: want SERVER_CPUS/BENCH_CPUS, e.g. 0/1"))?;
                a.pin = Some((s.to_owned(), b.to_owned()));
            }
            "--complexity" => a.complexity = val()?.parse()?,
            "--fec" => {
                a.fec = match val()?.as_str() {
                    "on" => true,
                    "off" => false,
                    v => bail!("--fec {v}: want on or off"),
                }
            }
            "--phase" => {
                a.lockstep = match val()?.as_str() {
                    "spread" => false,
                    "lockstep" => true,
                    v => bail!("--phase {v}: want spread or lockstep"),
                }
            }
            "--udp" => a.udp = true,
            "--dialog-listen" => a.dialog_listen = val()?.parse()?,
            "--runs" => a.runs = val()?.parse()?,
            "--attacks" => a.attacks = hostile::Attacks::parse(&val()?)?,
            "--warmup" => a.warmup = val()?.parse()?,
            "--frames" => a.frames = val()?.parse()?,
            "--sample-every" => a.sample_every = val()?.parse()?,
            "--rss-slack-pct" => a.rss_slack_pct = val()?.parse()?,
            "--json" => a.json = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}\n{USAGE}"),
        }
        first = false;
    }
    if a.profile == Profile::Dialog
        && a.spawn.is_none()
        && !matches!(a.mode, Mode::Floor | Mode::SansIo)
    {
        bail!(
            "--profile dialog needs --spawn: the bench points the server at its own dialog app and engines"
        );
    }
    if a.mode == Mode::Hostile {
        anyhow::ensure!(
            a.spawn.is_some(),
            "hostile needs --spawn: it runs the server with its default limits and its own dialog app"
        );
        anyhow::ensure!(
            a.profile == Profile::Echo && a.pin.is_none() && a.ramp.is_none(),
            "hostile takes no --profile, --pin or --ramp: it is one step of echo calls"
        );
    }
    if a.mode == Mode::Sequential {
        anyhow::ensure!(
            a.spawn.is_some() && a.profile == Profile::Echo && a.pin.is_none() && a.ramp.is_none(),
            "sequential needs --spawn (it runs the server with short media timeouts and reads its /proc) and takes no --profile, --pin or --ramp"
        );
    }
    if a.pin.is_some() && a.spawn.is_none() {
        bail!("--pin needs --spawn (pin a server you run yourself with taskset)");
    }
    Ok(a)
}

fn main() -> anyhow::Result<()> {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("recognize") {
        let wav = argv.get(2).context(USAGE)?.clone();
        let grammar = argv
            .iter()
            .position(|a| a == "--grammar")
            .and_then(|i| argv.get(i + 1))
            .cloned();
        return runtime()?.block_on(recognize::run(&wav, grammar.as_deref()));
    }
    if argv.get(1).map(String::as_str) == Some("denoise") {
        let mut grammar = "tests/fixtures/test.gram".to_owned();
        let mut verbose = false;
        let mut rest = argv[2..].iter();
        while let Some(arg) = rest.next() {
            match arg.as_str() {
                "--grammar" => grammar = rest.next().context(USAGE)?.clone(),
                "--verbose" => verbose = true,
                _ => bail!("unknown argument {arg}\n{USAGE}"),
            }
        }
        return runtime()?.block_on(denoise::run(&grammar, verbose));
    }
    if argv.get(1).map(String::as_str) == Some("stand-ins") {
        let mut s = stand_ins::Args::default();
        let mut rest = argv[2..].iter();
        while let Some(arg) = rest.next() {
            let mut value = || rest.next().context(USAGE);
            match arg.as_str() {
                "--delay-ms" => s.delay = Duration::from_millis(value()?.parse()?),
                "--connection-setup-ms" => {
                    s.connections.setup = Duration::from_millis(value()?.parse()?)
                }
                "--no-keep-alive" => s.connections.keep_alive = false,
                "--deepgram-listen" => s.deepgram = value()?.parse()?,
                "--openai-listen" => s.openai = value()?.parse()?,
                "--openai-tts-listen" => s.openai_tts = value()?.parse()?,
                "--elevenlabs-listen" => s.elevenlabs = value()?.parse()?,
                "--cartesia-listen" => s.cartesia = value()?.parse()?,
                _ => bail!("unknown argument {arg}\n{USAGE}"),
            }
        }
        return runtime()?.block_on(stand_ins::run(s));
    }
    let args = parse_args(&argv)?;
    if args.mode == Mode::Floor {
        let plan = floor::FloorPlan {
            calls: args.calls.unwrap_or(DEFAULT_CALLS),
            seconds: args.seconds,
            complexity: args.complexity,
            fec: args.fec,
            lockstep: args.lockstep,
        };
        return runtime()?.block_on(floor::run(plan, args.json));
    }
    if args.mode == Mode::SansIo {
        let plan = sansio::SansIoPlan {
            calls: args.calls.unwrap_or(DEFAULT_CALLS),
            seconds: args.seconds,
            udp: args.udp,
        };
        return sansio::run(plan, args.json);
    }
    // Pin before the runtime exists, so its worker threads inherit the mask.
    if let Some((_, bench_cpus)) = &args.pin {
        target::pin_self(bench_cpus)?;
    }
    runtime()?.block_on(run(args))
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

async fn run(args: Args) -> anyhow::Result<()> {
    if args.mode == Mode::Speech {
        return speech::run(args.server, args.dialog_listen, args.runs).await;
    }
    if let (Mode::Sequential, Some(binary)) = (args.mode, &args.spawn) {
        let plan = sequential::SequentialPlan {
            calls: args.calls.unwrap_or(10_000),
            warmup: args.warmup,
            frames: args.frames,
            sample_every: args.sample_every,
            rss_slack: args.rss_slack_pct / 100.0,
        };
        return sequential::run(binary, plan, args.json).await;
    }
    if let (Mode::Hostile, Some(binary)) = (args.mode, &args.spawn) {
        let plan = hostile::HostilePlan {
            calls: args.calls.unwrap_or(hostile::DEFAULT_CALLS),
            duration: Duration::from_secs(args.seconds),
            stagger: Duration::from_millis(args.stagger_ms),
            garbage_per_s: hostile::GARBAGE_PER_S,
            flood_per_s: hostile::FLOOD_PER_S,
            dialog_calls: hostile::DIALOG_CALLS,
            attacks: args.attacks,
        };
        return hostile::run(binary, plan, args.json).await;
    }
    let dialog = match args.profile {
        Profile::Dialog => Some(load::bench_dialog().await?),
        Profile::Echo => None,
    };
    let source = match &args.spawn {
        Some(binary) => Source::Spawn {
            binary: binary.clone(),
            cpus: args.pin.as_ref().map(|p| p.0.clone()),
            env: dialog.as_ref().map(|d| d.env.clone()).unwrap_or_default(),
            limits: Limits::Generator,
        },
        None => Source::Running {
            http: args.server,
            pid: args.pid,
        },
    };
    let uplink = Arc::new(load::uplink(args.profile).await?);
    let stagger = Duration::from_millis(args.stagger_ms);
    if !args.json {
        println!(
            "profile {}, {}, {}",
            args.profile.name(),
            match &args.spawn {
                Some(b) => format!("server {b} started per step"),
                None => format!("server at {}", args.server),
            },
            match &args.pin {
                Some((s, b)) => format!("server pinned to CPUs {s}, generator to {b}"),
                None => "unpinned".into(),
            }
        );
        if args.profile == Profile::Dialog {
            println!(
                "dialog profile: the caller asks a question every 5 s; the bench's dialog app answers each asr.final; \
                 speech engines are local stand-ins (a fixed transcription, one cached answer), out of the measurement"
            );
        }
    }
    if args.mode == Mode::Soak {
        let plan = StepPlan {
            sample_every: Some(Duration::from_secs(args.sample_s.max(1))),
            ..StepPlan::new(
                args.calls.unwrap_or(DEFAULT_CALLS),
                Duration::from_secs(args.minutes * 60),
                stagger,
            )
        };
        let r = load::step(&source, args.profile, uplink, dialog.as_ref(), &plan).await?;
        if args.json {
            println!("{r}");
        } else {
            load::print_row(&r, true);
            println!("RSS over time (steady window):");
            for s in r["samples"].as_array().into_iter().flatten() {
                println!(
                    "  t {:>5} s  rss {:>8.1} MB",
                    s["t_s"],
                    s["rss_mb"].as_f64().unwrap_or(f64::NAN)
                );
            }
        }
        return load::check_plausible(&r, args.profile);
    }
    let steps: Vec<usize> = match args.ramp {
        Some((from, step, to)) => (from..=to).step_by(step).collect(),
        None => vec![args.calls.unwrap_or(DEFAULT_CALLS)],
    };
    let mut best = None;
    let mut best_prefix = None;
    let mut best_kernel = None;
    let mut all_held = true;
    let mut first = true;
    for n in steps {
        let plan = StepPlan::new(n, Duration::from_secs(args.seconds), stagger);
        let r = load::step(
            &source,
            args.profile,
            uplink.clone(),
            dialog.as_ref(),
            &plan,
        )
        .await?;
        if args.json {
            println!("{r}");
        } else {
            load::print_row(&r, first);
            if let Some(d) = r.get("dialog") {
                println!("        dialog: {d}");
            }
            for f in r["failures"].as_array().into_iter().flatten() {
                eprintln!("        call failed: {f}");
            }
        }
        first = false;
        load::check_plausible(&r, args.profile)?;
        if r["quality_ok"] == true {
            best = Some(n);
            if all_held {
                best_prefix = Some(n);
            }
        } else {
            all_held = false;
        }
        if r["kernel_quality_ok"] == true {
            best_kernel = Some(n);
        }
        // A step where calls could not even connect is past saturation: larger ones only
        // repeat that. A step that missed the jitter bar may be noise; the ramp goes on.
        if args.ramp.is_some() && r["failed"].as_u64().unwrap_or(0) > 0 {
            break;
        }
    }
    if args.ramp.is_some() {
        let summary = serde_json::json!({
            "largest_calls_holding_quality": best,
            "largest_calls_with_every_step_up_to_it_holding": best_prefix,
            "largest_calls_holding_quality_by_kernel_receive_times": best_kernel,
        });
        if args.json {
            println!("{summary}");
        } else {
            match best {
                Some(n) => println!(
                    "largest N holding quality (all connected, 0 uplink lost, jitter p99 <= {} ms): {n}; every step held up to {}",
                    load::JITTER_P99_MAX_MS,
                    best_prefix.map_or("none".to_owned(), |n| n.to_string())
                ),
                None => println!("no step held the quality bar"),
            }
            match best_kernel {
                Some(n) => println!(
                    "largest N holding it by the kernel's receive times (jitter without the generator's scheduling): {n}"
                ),
                None => println!("no step held it by the kernel's receive times either"),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> anyhow::Result<Args> {
        let argv: Vec<String> = format!("voicegate-bench {line}")
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        parse_args(&argv)
    }

    #[test]
    fn the_floor_spreads_its_calls_over_the_audio_unless_told_lockstep() {
        let a = args("floor --calls 10").unwrap();
        assert!(a.mode == Mode::Floor && !a.lockstep);
        assert!(args("floor --phase lockstep").unwrap().lockstep);
        assert!(!args("floor --phase spread").unwrap().lockstep);
        let Err(e) = args("floor --phase sideways") else {
            panic!("an unknown phase was accepted")
        };
        let e = e.to_string();
        assert!(e.contains("want spread or lockstep"), "{e}");
    }
}
