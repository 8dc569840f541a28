//! The configuration file: settings for `plan` and `update` that the command line overrides,
//! read before anything on the machine is looked at, let alone frozen. The package installs it
//! as `/etc/overboot/overboot.toml` with every setting commented out; `--config PATH` or
//! `$OVERBOOT_CONFIG` names another file.
//!
//! ```text
//! [update]       preserve, store, pre_copy_rounds, lazy_restore, criu_log_level, append,
//!                reuse_cmdline, state_dir, work_dir
//! [rollback]     kernel, initrd
//! [failed_boot]  rollback (true only: a failed restore always rolls back),
//!                panic_reboot_secs (N > 0: the new kernel gets panic=N)
//! ```
//!
//! For each setting the command line wins, then the file, then the built-in default (the state
//! directory: `--state-dir`, `$OVERBOOT_STATE_DIR`, the file, `/var/lib/overboot`; `status` and
//! the agent, `resume`, read it from the file too). `args.rs` does the merging.
//!
//! A missing default file is no file. A missing file that `--config` or `$OVERBOOT_CONFIG`
//! names, bad TOML, an unknown section or key, or a value of the wrong type is a
//! [`ConfigError`] naming the file, the line and the key (exit code 2, usage).

use std::path::{Path, PathBuf};

use overboot::host::store::Handover;
use overboot::host::target::Target;
use overboot::model::report::{state_dir_from_env, DEFAULT_STATE_DIR};
use serde::Deserialize;

/// Where the package installs the file; read when no other is named.
pub const DEFAULT_CONFIG: &str = "/etc/overboot/overboot.toml";

/// Why the configuration file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Missing (when named), or unreadable.
    #[error("cannot read the config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Not TOML, or not the settings overboot knows.
    #[error("config file {path}, line {line}{key}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        /// ` (key …)`, or empty when the error is not about one key.
        key: String,
        message: String,
    },
    /// Two settings that exclude each other.
    #[error("config file {path}: {problem}")]
    Conflict {
        path: PathBuf,
        problem: &'static str,
    },
}

/// The file's settings; every one is optional (absent: the built-in default).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The file these settings come from; `None`: no file (built-in defaults).
    #[serde(skip)]
    pub path: Option<PathBuf>,
    /// `[update]`: what `plan` and `update` do when their options are left out.
    #[serde(default)]
    pub update: UpdateSettings,
    /// `[rollback]`: the kernel a failed restore goes back to.
    #[serde(default)]
    pub rollback: RollbackSettings,
    /// `[failed_boot]`: what happens when the new boot does not bring the services back.
    #[serde(default)]
    pub failed_boot: FailedBootSettings,
}

/// `[update]`, one key per option of `plan` and `update`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateSettings {
    /// `--preserve`, used only when the command line gives none.
    #[serde(default, deserialize_with = "parsed_list")]
    pub preserve: Option<Vec<Target>>,
    /// `--handover`.
    #[serde(default, deserialize_with = "parsed")]
    pub store: Option<Handover>,
    /// `--pre-copy-rounds`.
    pub pre_copy_rounds: Option<u32>,
    /// `--lazy-restore` (true) or `--no-lazy-restore` (false).
    pub lazy_restore: Option<bool>,
    /// `--criu-log-level`, 0–4.
    #[serde(default, deserialize_with = "log_level")]
    pub criu_log_level: Option<u8>,
    /// `--append`.
    pub append: Option<String>,
    /// `--reuse-cmdline`.
    pub reuse_cmdline: Option<bool>,
    /// `--state-dir`.
    pub state_dir: Option<PathBuf>,
    /// `--work-dir`.
    pub work_dir: Option<PathBuf>,
}

/// `[rollback]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackSettings {
    /// `--rollback-kernel`.
    pub kernel: Option<PathBuf>,
    /// `--rollback-initrd`.
    pub initrd: Option<PathBuf>,
}

/// `[failed_boot]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailedBootSettings {
    /// Roll back when the restore fails in the new kernel: always, so only `true` is accepted
    /// (checked while parsing; nothing reads it).
    #[allow(dead_code)]
    #[serde(default, deserialize_with = "always_true")]
    pub rollback: Option<bool>,
    /// N > 0: `panic=N` on the new kernel's command line (unless it has a `panic=` already),
    /// so that a new kernel that panics reboots after N seconds.
    pub panic_reboot_secs: Option<u32>,
}

/// The file `--config` names (`flag`), else `$OVERBOOT_CONFIG` (when set and not empty).
pub fn named(flag: Option<PathBuf>) -> Option<PathBuf> {
    flag.or_else(|| {
        std::env::var_os("OVERBOOT_CONFIG")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    })
}

impl Config {
    /// The settings of the file `named` (by `--config` or `$OVERBOOT_CONFIG`), else of
    /// [`DEFAULT_CONFIG`] if it exists, else none.
    pub fn load(named: Option<&Path>) -> Result<Config, ConfigError> {
        Config::load_from(named, Path::new(DEFAULT_CONFIG))
    }

    /// [`Config::load`] with `default` for [`DEFAULT_CONFIG`].
    pub fn load_from(named: Option<&Path>, default: &Path) -> Result<Config, ConfigError> {
        let path = named.unwrap_or(default);
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if named.is_none() && e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Config::default())
            }
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        Config::parse(path, &text)
    }

    /// The settings in `text`, the contents of `path`.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| parse_error(path, text, &e))?;
        let update = &config.update;
        if update.append.is_some() && update.reuse_cmdline == Some(true) {
            return Err(ConfigError::Conflict {
                path: path.to_path_buf(),
                problem: "[update] append and reuse_cmdline = true exclude each other: \
                          leave one out",
            });
        }
        config.path = Some(path.to_path_buf());
        Ok(config)
    }

    /// The state directory: `given` (`--state-dir`), else `$OVERBOOT_STATE_DIR`, else the
    /// file's `state_dir`, else `/var/lib/overboot`.
    pub fn state_dir(&self, given: Option<PathBuf>) -> PathBuf {
        pick_state_dir(given, state_dir_from_env(), self.update.state_dir.clone())
    }

    /// The file read, for people: its path or `none`.
    pub fn source(&self) -> String {
        self.path
            .as_ref()
            .map_or_else(|| "none".to_string(), |p| p.display().to_string())
    }
}

/// The first state directory given, in order of precedence.
fn pick_state_dir(given: Option<PathBuf>, env: Option<PathBuf>, file: Option<PathBuf>) -> PathBuf {
    given
        .or(env)
        .or(file)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR))
}

/// A toml error as one line: the file, the line, the key written on that line (toml's messages
/// about a value do not name its key) and toml's message.
fn parse_error(path: &Path, text: &str, e: &toml::de::Error) -> ConfigError {
    let start = e.span().map_or(0, |span| span.start.min(text.len()));
    let line = text[..start].matches('\n').count() + 1;
    let key = text
        .lines()
        .nth(line - 1)
        .and_then(|l| l.split_once('='))
        .map(|(key, _)| key.trim())
        .filter(|key| !key.is_empty() && !e.message().contains(&format!("`{key}`")))
        .map_or_else(String::new, |key| format!(" (key {key})"));
    ConfigError::Parse {
        path: path.to_path_buf(),
        line,
        key,
        message: e.message().trim_end().to_string(),
    }
}

/// A string parsed as its option on the command line parses it.
fn parsed<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    let text = String::deserialize(d)?;
    text.parse().map(Some).map_err(serde::de::Error::custom)
}

/// A list of strings, each parsed as its option on the command line parses it.
fn parsed_list<'de, D, T>(d: D) -> Result<Option<Vec<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    let texts = Vec::<String>::deserialize(d)?;
    let items = texts
        .iter()
        .map(|t| t.parse().map_err(serde::de::Error::custom));
    items.collect::<Result<Vec<T>, _>>().map(Some)
}

/// CRIU's log level, 0–4 as on the command line.
fn log_level<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u8>, D::Error> {
    match u8::deserialize(d)? {
        level @ 0..=4 => Ok(Some(level)),
        level => Err(serde::de::Error::custom(format!(
            "CRIU's log level is 0 to 4, not {level}"
        ))),
    }
}

/// `true`, the only behaviour there is.
fn always_true<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    match bool::deserialize(d)? {
        true => Ok(Some(true)),
        false => Err(serde::de::Error::custom(
            "a failed restore always rolls back: false is not a choice",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("/etc/overboot/overboot.toml"), text)
    }

    fn error(text: &str) -> String {
        parse(text).expect_err(text).to_string()
    }

    #[test]
    fn every_key_is_read() {
        let config = parse(
            r#"
[update]
preserve = ["unit:nginx.service", "pid:42"]
store = "dir:/srv/ssm"
pre_copy_rounds = 5
lazy_restore = true
criu_log_level = 4
append = "console=ttyS0 quiet"
reuse_cmdline = false
state_dir = "/srv/overboot"
work_dir = "/dev/shm/overboot"

[rollback]
kernel = "/boot/vmlinuz-6.1.0-18-amd64"
initrd = "/boot/initrd.img-6.1.0-18-amd64"

[failed_boot]
rollback = true
panic_reboot_secs = 10
"#,
        )
        .unwrap();
        let u = &config.update;
        assert_eq!(
            u.preserve,
            Some(vec![Target::Unit("nginx.service".into()), Target::Pid(42)])
        );
        assert_eq!(u.store, Some(Handover::Dir("/srv/ssm".into())));
        assert_eq!(u.pre_copy_rounds, Some(5));
        assert_eq!(u.lazy_restore, Some(true));
        assert_eq!(u.criu_log_level, Some(4));
        assert_eq!(u.append.as_deref(), Some("console=ttyS0 quiet"));
        assert_eq!(u.reuse_cmdline, Some(false));
        assert_eq!(u.state_dir, Some("/srv/overboot".into()));
        assert_eq!(u.work_dir, Some("/dev/shm/overboot".into()));
        assert_eq!(
            config.rollback.kernel,
            Some("/boot/vmlinuz-6.1.0-18-amd64".into())
        );
        assert_eq!(
            config.rollback.initrd,
            Some("/boot/initrd.img-6.1.0-18-amd64".into())
        );
        assert_eq!(config.failed_boot.rollback, Some(true));
        assert_eq!(config.failed_boot.panic_reboot_secs, Some(10));
        assert_eq!(config.source(), "/etc/overboot/overboot.toml");
    }

    #[test]
    fn the_shipped_file_sets_nothing() {
        let shipped = include_str!("../../../../packaging/deb/overboot.toml");
        let config = parse(shipped).unwrap();
        assert_eq!(
            format!("{:?}", config.update),
            format!("{:?}", UpdateSettings::default())
        );
        assert!(config.rollback.kernel.is_none() && config.rollback.initrd.is_none());
        assert!(config.failed_boot.panic_reboot_secs.is_none());
    }

    #[test]
    fn the_shipped_defaults_uncommented_are_valid() {
        // Every `#key = value` line of the shipped file, uncommented, parses (the examples of
        // [rollback] included).
        let shipped = include_str!("../../../../packaging/deb/overboot.toml");
        let uncommented: String = shipped
            .lines()
            .map(|l| match l.strip_prefix('#') {
                Some(setting) if setting.contains(" = ") && !setting.starts_with(' ') => setting,
                _ => l,
            })
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(
            uncommented.contains("\npre_copy_rounds = 3\n"),
            "{uncommented}"
        );
        let config = parse(&uncommented).unwrap();
        assert_eq!(config.update.pre_copy_rounds, Some(3));
        assert_eq!(config.update.criu_log_level, Some(2));
        assert_eq!(config.update.lazy_restore, Some(false));
        assert_eq!(config.update.preserve, Some(vec![]));
        assert_eq!(config.failed_boot.panic_reboot_secs, Some(10));
    }

    #[test]
    fn an_unknown_key_is_named_with_its_line() {
        let e = error("[update]\npre_copy_rounds = 2\npre_copy_round = 3\n");
        assert!(
            e.starts_with("config file /etc/overboot/overboot.toml, line 3"),
            "{e}"
        );
        assert!(e.contains("unknown field `pre_copy_round`"), "{e}");
        let e = error("[update]\n\n[upgrade]\nstore = \"initrd\"\n");
        assert!(e.contains("line 3") && e.contains("`upgrade`"), "{e}");
    }

    #[test]
    fn a_value_of_the_wrong_type_is_named_with_its_key_and_line() {
        let e = error("[update]\nlazy_restore = true\npre_copy_rounds = \"3\"\n");
        assert!(e.contains("line 3 (key pre_copy_rounds)"), "{e}");
        assert!(e.contains("invalid type: string \"3\""), "{e}");
        let e = error("[update]\npreserve = \"pid:42\"\n");
        assert!(e.contains("line 2 (key preserve)"), "{e}");
        let e = error("[update]\npre_copy_rounds = -1\n");
        assert!(e.contains("line 2 (key pre_copy_rounds)"), "{e}");
    }

    #[test]
    fn values_are_checked_as_the_command_line_checks_them() {
        let e = error("[update]\npreserve = [\"pid:1\", \"nginx\"]\n");
        assert!(e.contains("line 2 (key preserve)"), "{e}");
        assert!(
            e.contains("\"nginx\": expected pid:N or unit:NAME.service"),
            "{e}"
        );
        let e = error("[update]\nstore = \"dir:relative\"\n");
        assert!(e.contains("(key store)") && e.contains("absolute"), "{e}");
        let e = error("[update]\ncriu_log_level = 5\n");
        assert!(
            e.contains("(key criu_log_level)") && e.contains("0 to 4"),
            "{e}"
        );
        let e = error("[failed_boot]\nrollback = false\n");
        assert!(
            e.contains("(key rollback)") && e.contains("always rolls back"),
            "{e}"
        );
    }

    #[test]
    fn bad_toml_is_named_with_its_line() {
        let e = error("[update]\nstore = initrd\n");
        assert!(
            e.starts_with("config file /etc/overboot/overboot.toml, line 2"),
            "{e}"
        );
    }

    #[test]
    fn append_and_reuse_cmdline_exclude_each_other() {
        let e = error("[update]\nappend = \"quiet\"\nreuse_cmdline = true\n");
        assert!(e.contains("exclude each other"), "{e}");
        assert!(parse("[update]\nappend = \"quiet\"\nreuse_cmdline = false\n").is_ok());
    }

    #[test]
    fn the_state_dir_given_beats_the_environment_beats_the_file() {
        let p = |s: &str| Some(PathBuf::from(s));
        let pick = pick_state_dir;
        assert_eq!(
            pick(p("/cli"), p("/env"), p("/file")),
            PathBuf::from("/cli")
        );
        assert_eq!(pick(None, p("/env"), p("/file")), PathBuf::from("/env"));
        assert_eq!(pick(None, None, p("/file")), PathBuf::from("/file"));
        assert_eq!(pick(None, None, None), PathBuf::from("/var/lib/overboot"));
    }

    #[test]
    fn a_missing_default_file_is_no_file_but_a_named_one_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("overboot.toml");
        let config = Config::load_from(None, &missing).unwrap();
        assert!(config.path.is_none());
        assert_eq!(config.source(), "none");
        let e = Config::load_from(Some(&missing), Path::new("/nonexistent")).unwrap_err();
        assert!(matches!(&e, ConfigError::Read { source, .. }
            if source.kind() == std::io::ErrorKind::NotFound));
        assert!(
            e.to_string().contains(&missing.display().to_string()),
            "{e}"
        );
    }

    #[test]
    fn a_named_file_is_read_instead_of_the_default() {
        let dir = tempfile::tempdir().unwrap();
        let default = dir.path().join("default.toml");
        let named = dir.path().join("named.toml");
        std::fs::write(&default, "[update]\npre_copy_rounds = 1\n").unwrap();
        std::fs::write(&named, "[update]\npre_copy_rounds = 7\n").unwrap();
        let config = Config::load_from(None, &default).unwrap();
        assert_eq!(config.update.pre_copy_rounds, Some(1));
        assert_eq!(config.path.as_deref(), Some(default.as_path()));
        let config = Config::load_from(Some(&named), &default).unwrap();
        assert_eq!(config.update.pre_copy_rounds, Some(7));
        assert_eq!(config.path.as_deref(), Some(named.as_path()));
    }
}
