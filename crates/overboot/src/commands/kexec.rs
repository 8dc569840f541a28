//! `overboot kexec`: load a kernel with our own `kexec_file_load` and jump into it, or unload.
//! No process is preserved: this is the bare kernel switch (the benchmark's floor).

use std::io::Write;
use std::path::PathBuf;

use overboot_kexec::{KernelImage, LoadRequest};

use super::error::{print, CommandError};

/// Arguments of `overboot kexec`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The new kernel (an x86 bzImage).
    #[arg(long, required_unless_present_any = ["unload", "exec"])]
    kernel: Option<PathBuf>,
    /// Its initrd.
    #[arg(long, conflicts_with = "unload")]
    initrd: Option<PathBuf>,
    /// Command line of the new kernel.
    #[arg(long, conflicts_with_all = ["reuse_cmdline", "unload"])]
    append: Option<String>,
    /// Give the new kernel the running kernel's command line (/proc/cmdline).
    #[arg(long, conflicts_with = "unload")]
    reuse_cmdline: bool,
    /// Load only; jump later with `overboot kexec --exec`.
    #[arg(long, conflicts_with = "unload")]
    load_only: bool,
    /// Jump into the kernel loaded before.
    #[arg(long, conflicts_with_all = ["kernel", "unload", "load_only"])]
    exec: bool,
    /// Unload the kernel loaded for kexec.
    #[arg(long)]
    unload: bool,
}

/// What was loaded, as `--json` prints it.
#[derive(Debug, serde::Serialize)]
struct Loaded<'a> {
    kernel: &'a std::path::Path,
    release: &'a str,
    version: &'a str,
    boot_protocol: String,
    initrd: Option<&'a std::path::Path>,
    cmdline: &'a str,
    jump: bool,
}

pub fn run(args: Args, json: bool) -> Result<(), CommandError> {
    if args.unload {
        overboot_kexec::unload()?;
        return print(json, "unloaded", &serde_json::json!({ "unloaded": true }));
    }
    if args.exec {
        print(
            json,
            "jumping into the loaded kernel",
            &serde_json::json!({ "jump": true }),
        )?;
        overboot_kexec::jump()?;
        return Ok(());
    }
    let kernel = args
        .kernel
        .ok_or_else(|| CommandError::Usage("--kernel is required".into()))?;
    let cmdline = match (args.append, args.reuse_cmdline) {
        (Some(append), _) => append,
        (None, true) => std::fs::read_to_string("/proc/cmdline")
            .map_err(CommandError::Output)?
            .trim()
            .to_string(),
        (None, false) => String::new(),
    };
    // Check the image before touching the running kernel's kexec state.
    let checked = overboot_kexec::inspect(&kernel)?;
    print_image(json, &checked)?;
    let request = LoadRequest {
        kernel,
        initrd: args.initrd,
        cmdline,
    };
    let image = overboot_kexec::load(&request)?;
    let loaded = Loaded {
        kernel: &image.path,
        release: &image.release,
        version: &image.version_string,
        boot_protocol: format!("{}.{:02}", image.boot_protocol.0, image.boot_protocol.1),
        initrd: request.initrd.as_deref(),
        cmdline: &request.cmdline,
        jump: !args.load_only,
    };
    if args.load_only {
        return print(json, &format!("loaded {}", image.release), &loaded);
    }
    print(json, &format!("jumping into {}", image.release), &loaded)?;
    overboot_kexec::jump()?;
    Ok(())
}

fn print_image(json: bool, image: &KernelImage) -> Result<(), CommandError> {
    if json {
        return Ok(());
    }
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "kernel {}: {} (boot protocol {}.{:02})",
        image.path.display(),
        image.version_string,
        image.boot_protocol.0,
        image.boot_protocol.1
    )
    .and_then(|()| out.flush())
    .map_err(CommandError::Output)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn parse(argv: &[&str]) -> Result<Args, clap::Error> {
        Cli::try_parse_from(std::iter::once("kexec").chain(argv.iter().copied())).map(|c| c.args)
    }

    #[test]
    fn exec_and_unload_need_no_kernel_and_a_load_does() {
        assert!(parse(&["--exec"]).unwrap().exec);
        assert!(parse(&["--unload"]).unwrap().unload);
        assert!(parse(&["--kernel", "/k", "--load-only"]).unwrap().load_only);
        assert!(parse(&[]).is_err());
        assert!(parse(&["--load-only"]).is_err());
        assert!(parse(&["--exec", "--kernel", "/k"]).is_err());
    }
}
