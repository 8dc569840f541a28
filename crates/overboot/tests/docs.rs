//! What the package ships beside the binary: `overboot generate-docs DIR` writes a manual page
//! for the command and for every verb an operator can call, and the bash, zsh and fish
//! completions (`scripts/package` puts them in the .deb).

use std::path::Path;
use std::process::Command;

fn generate(dir: &Path) {
    let out = Command::new(env!("CARGO_BIN_EXE_overboot"))
        .arg("generate-docs")
        .arg(dir)
        .output()
        .expect("run overboot");
    assert!(
        out.status.success(),
        "generate-docs failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn a_manual_page_per_verb_and_three_completions() {
    let dir = tempfile::tempdir().unwrap();
    generate(dir.path());
    let man = dir.path().join("man");
    let top = read(&man.join("overboot.8"));
    assert!(top.contains(".TH overboot 8"), "{top}");
    assert!(top.contains(".SH \"EXIT STATUS\""), "{top}");
    for verb in [
        "kexec", "patch", "plan", "update", "resume", "status", "systemd",
    ] {
        let page = read(&man.join(format!("overboot-{verb}.8")));
        assert!(page.contains(&format!(".TH overboot-{verb} 8")), "{page}");
        assert!(page.contains("\\fBoverboot\\fR(8)"), "{verb}: no SEE ALSO");
        assert!(
            top.contains(&format!("overboot\\-{verb}(8)")),
            "{verb} not listed"
        );
    }
    for verb in [
        "patch-build",
        "patch-apply",
        "systemd-prepare",
        "systemd-install",
    ] {
        assert!(man.join(format!("overboot-{verb}.8")).is_file(), "{verb}");
    }
    let update = read(&man.join("overboot-update.8"));
    for option in [
        "\\-\\-preserve",
        "\\-\\-handover",
        "\\-\\-lazy\\-restore",
        "\\-\\-no\\-lazy\\-restore",
        "\\-\\-config",
    ] {
        assert!(update.contains(option), "{option} not in overboot-update.8");
    }
    // The config file: the option and $OVERBOOT_CONFIG on overboot(8).
    assert!(top.contains("\\-\\-config"), "no --config in overboot.8");
    assert!(
        top.contains("OVERBOOT_CONFIG"),
        "no $OVERBOOT_CONFIG in overboot.8"
    );
    // The verbs no operator calls have no page.
    let pages: Vec<String> = std::fs::read_dir(&man)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    for hidden in ["serve-pages", "generate-docs", "help"] {
        assert!(
            !pages.iter().any(|p| p.contains(hidden)),
            "{hidden}: {pages:?}"
        );
    }
    let completions = dir.path().join("completions");
    for (file, marker) in [
        ("overboot.bash", "complete -F"),
        ("_overboot", "#compdef overboot"),
        ("overboot.fish", "complete -c overboot"),
    ] {
        let text = read(&completions.join(file));
        assert!(text.contains(marker), "{file}: no {marker:?}");
        assert!(text.contains("update"), "{file}: no verbs");
    }
}
