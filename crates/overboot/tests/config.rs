//! The config file through the binary: a bad one stops the verb with a usage error (exit 2)
//! that names the file, the line and the key, before the verb does anything. `status` with an
//! empty state directory stands for the verbs that read it: it would exit 10 (no report).

use std::path::Path;
use std::process::{Command, Output};

fn status(state: &Path, config: &[&str], env: Option<&Path>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_overboot"));
    cmd.args(config)
        .arg("status")
        .arg("--state-dir")
        .arg(state)
        .env_remove("OVERBOOT_CONFIG")
        .env_remove("OVERBOOT_STATE_DIR");
    if let Some(env) = env {
        cmd.env("OVERBOOT_CONFIG", env);
    }
    cmd.output().expect("run overboot")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_bad_config_file_is_a_usage_error_naming_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("overboot.toml");
    let path = file.to_str().unwrap();
    std::fs::write(&file, "[update]\n\npre_copy_rounds = \"3\"\n").unwrap();
    let out = status(dir.path(), &["--config", path], None);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!(
            "overboot: error: config file {path}, line 3 (key pre_copy_rounds): invalid type"
        )),
        "{}",
        stderr(&out)
    );
    std::fs::write(&file, "[update]\nlazy_restore = true\n[failed-boot]\n").unwrap();
    let out = status(dir.path(), &[], Some(&file));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("line 3: unknown field `failed-boot`"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_config_file_named_must_exist() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.toml");
    for out in [
        status(dir.path(), &["--config", missing.to_str().unwrap()], None),
        status(dir.path(), &[], Some(&missing)),
    ] {
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        assert!(
            stderr(&out).contains(&format!(
                "cannot read the config file {}",
                missing.display()
            )),
            "{}",
            stderr(&out)
        );
    }
    // A good file: status goes on and finds no report.
    let good = dir.path().join("good.toml");
    std::fs::write(&good, "[update]\npre_copy_rounds = 1\n").unwrap();
    let out = status(dir.path(), &["--config", good.to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(10), "{}", stderr(&out));
}
