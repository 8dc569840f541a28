//! `overboot-lab`: prepare the lab and run the demo (tests use the library directly).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The overboot lab: real Debian kernels in QEMU.
#[derive(Debug, Parser)]
#[command(name = "overboot-lab", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Install host packages, fetch kernels A, B and C, build our binaries and the guests'
    /// CRIU (the pinned release unless OVERBOOT_LAB_CRIU=distro); with `--profile trixie`,
    /// build the Debian 13 tree and image instead. Boots no guest.
    Prepare {
        /// `busybox` (the lab's initramfs guests) or `trixie` (the Debian 13 image).
        #[arg(long, default_value = "busybox", value_parser = ["busybox", "trixie"])]
        profile: String,
    },
    /// Redis on kernel A in a throwaway guest, a host client on one connection, `overboot
    /// update` to B (or C); the last stdout line is a JSON summary. Exits 1 when the client's
    /// connection broke or a key was lost.
    Demo {
        /// Kernel to switch to: B (6.1 stable update) or C (6.12) (busybox profile).
        #[arg(long, default_value = "B")]
        to: String,
        /// `busybox` (the lab's initramfs guest, kernel A → --to) or `trixie` (a Debian 13
        /// server with systemd: redis-server.service carried from 6.12 to 7.3).
        #[arg(long, default_value = "busybox", value_parser = ["busybox", "trixie"])]
        profile: String,
    },
    /// The benchmark: client-observed blackout of overboot against the floor (bare kexec),
    /// a machine restart reloading Redis from disk, and a dump to disk; writes results.json,
    /// results.md and SVG plots. Exits 1 when a run failed.
    Bench(BenchArgs),
}

/// Arguments of `overboot-lab bench`.
#[derive(Debug, clap::Args)]
struct BenchArgs {
    /// One size (64 MiB), one run per method.
    #[arg(long)]
    quick: bool,
    /// Dataset sizes in MiB (default 64,512,2048).
    #[arg(long, value_delimiter = ',')]
    sizes: Option<Vec<u32>>,
    /// Runs per method and size (default 3; 1 with --quick).
    #[arg(long)]
    runs: Option<u32>,
    /// Methods (default all: overboot,initrd,naive,floor,restart,disk).
    #[arg(long, value_delimiter = ',')]
    methods: Option<Vec<overboot_lab::bench::Method>>,
    /// Kernel to switch to from A.
    #[arg(long, default_value = "B")]
    to: String,
    /// Output directory.
    #[arg(long, default_value = "target/bench")]
    out: std::path::PathBuf,
    /// Only redraw results.md and the plots from an existing results.json.
    #[arg(long)]
    render_only: bool,
    /// `--pre-copy-rounds` for `overboot update` (default: overboot's own; 0 turns
    /// pre-copy off).
    #[arg(long, value_name = "N")]
    pre_copy_rounds: Option<u32>,
    /// `--lazy-restore` for `overboot update`: memory restored lazily in the new kernel.
    #[arg(long)]
    lazy_restore: bool,
    /// `--criu-log-level` for `overboot update` (3 or more: CRIU's timestamps in its
    /// logs, and the bench prints the lines after each pause of 20 ms or more).
    #[arg(long, value_name = "N")]
    criu_log_level: Option<u8>,
    /// Boots every kernel with `initcall_debug` (logged, not printed: the command line keeps
    /// `quiet`) and saves the new kernel's `dmesg` of each update and floor run as
    /// `dmesg-<method>-<MiB>-<run>.txt` in the output directory: where its boot went.
    #[arg(long)]
    boot_trace: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result: Result<bool, Box<dyn std::error::Error>> = match cli.command {
        Command::Prepare { profile } => prepare(&profile),
        Command::Demo { to, profile } => {
            let result = if profile == "trixie" {
                overboot_lab::demo::run_trixie()
            } else {
                overboot_lab::demo::run(&to)
            };
            result
                .map(|result| {
                    println!(
                        "{}",
                        serde_json::to_string(&result)
                            .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
                    );
                    result.ok()
                })
                .map_err(Into::into)
        }
        Command::Bench(args) => bench(args),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("overboot-lab: error: {err}");
            let mut source = err.source();
            while let Some(cause) = source {
                eprintln!("  caused by: {cause}");
                source = cause.source();
            }
            ExitCode::FAILURE
        }
    }
}

fn prepare(profile: &str) -> Result<bool, Box<dyn std::error::Error>> {
    use overboot_lab::criu::{self, Engine};
    if profile == "trixie" {
        let trixie = overboot_lab::trixie::Trixie::prepare()?;
        println!("image: {}", trixie.image().display());
        return Ok(true);
    }
    let lab = overboot_lab::Lab::prepare(&["A", "B", "C"])?;
    for label in ["A", "B", "C"] {
        if let Ok(k) = lab.kernel(label) {
            println!("{label}: {} ({})", k.release, k.package);
        }
    }
    match Engine::from_env_or(Engine::Distro)? {
        Engine::Pinned => {
            let built = criu::for_bookworm()?;
            println!(
                "criu: {} ({})",
                built.binary.display(),
                criu::describe(&built)
            );
        }
        Engine::Distro => println!(
            "criu: /usr/sbin/criu ({})",
            criu::describe_distro(std::path::Path::new("/var/lib/dpkg"))
        ),
    }
    Ok(true)
}

fn bench(args: BenchArgs) -> Result<bool, Box<dyn std::error::Error>> {
    use overboot_lab::bench::{self, BenchOptions, RunRecord};
    let BenchArgs {
        quick,
        sizes,
        runs,
        methods,
        to,
        out,
        render_only,
        pre_copy_rounds,
        lazy_restore,
        criu_log_level,
        boot_trace,
    } = args;
    if render_only {
        let path = out.join("results.json");
        let records: Vec<RunRecord> = serde_json::from_slice(&std::fs::read(&path)?)?;
        bench::write_outputs(&out, &records)?;
        print!("{}", bench::markdown(&records));
        return Ok(records.iter().all(|r| r.ok));
    }
    let mut options = if quick {
        BenchOptions::quick(out)
    } else {
        BenchOptions::full(out)
    };
    if let Some(sizes) = sizes {
        options.sizes_mib = sizes;
    }
    if let Some(runs) = runs {
        options.runs = runs;
    }
    if let Some(methods) = methods {
        options.methods = methods;
    }
    options.to = to;
    options.pre_copy_rounds = pre_copy_rounds;
    options.lazy_restore = lazy_restore;
    options.criu_log_level = criu_log_level;
    options.boot_trace = boot_trace;
    let records = bench::run(&options)?;
    print!("{}", bench::markdown(&records));
    eprintln!("bench: results in {}", options.out.display());
    Ok(records.iter().all(|r| r.ok))
}
