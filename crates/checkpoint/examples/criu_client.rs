//! A tiny command-line front to the engine, for trying CRIU by hand in a lab guest.
//!
//! ```text
//! criu_client probe
//! criu_client pre-dump <pid> <images-dir>
//! criu_client dump     <pid> <images-dir> [<parent-images-dir>]
//! criu_client restore  <images-dir>
//! ```
//! In a busybox guest (6.1 cloud kernel) CRIU 3.17.1 needs the `nf_tables` and socket-diag
//! modules loaded or its kerndat fails; `probe`'s check also wants `/dev/ptmx` (devpts).
//! `CRIU` names the binary (default `criu` on `PATH`). Every notification is printed and
//! accepted. Errors are printed as a whole cause chain; the exit code is 1.

use std::process::ExitCode;

use overboot_checkpoint::{
    error_chain, CheckpointError, Criu, DumpRequest, Engine, Notification, RestoreRequest,
};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[String]) -> Result<(), CheckpointError> {
    let mut criu = Criu::new(std::env::var("CRIU").unwrap_or_else(|_| "criu".to_owned()));
    let mut print = |n: &Notification| -> Result<(), String> {
        println!("notify: {} pid={:?}", n.script, n.pid);
        Ok(())
    };
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["probe"] => println!("{:?}", criu.probe()?),
        ["pre-dump", pid, dir] => {
            let req = DumpRequest::new(parse_pid(pid), *dir);
            println!("{:?}", criu.pre_dump(&req, &mut print)?);
        }
        ["dump", pid, dir, rest @ ..] => {
            let mut req = DumpRequest::new(parse_pid(pid), *dir);
            if let [parent] = rest {
                req.parent_images = Some(parent.into());
                req.track_mem = true;
            }
            println!("{:?}", criu.dump(&req, &mut print)?);
        }
        ["restore", dir] => {
            println!(
                "{:?}",
                criu.restore(&RestoreRequest::new(*dir), &mut print)?
            );
        }
        _ => {
            eprintln!(
                "usage: criu_client probe | pre-dump PID DIR | dump PID DIR [PARENT] | restore DIR"
            );
            std::process::exit(2);
        }
    }
    Ok(())
}

fn parse_pid(s: &str) -> i32 {
    s.parse().unwrap_or_else(|_| {
        eprintln!("not a pid: {s}");
        std::process::exit(2);
    })
}
