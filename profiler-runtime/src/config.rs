//! Run-time configuration: defaults, builder values, and `THREADPROF_*` environment overrides.
//!
//! Precedence is defaults < builder < environment, so an operator can change behaviour without
//! a rebuild. A bad value never panics: it is reported with a warning naming the source and
//! the value, and the default is used instead.

use std::path::PathBuf;
use std::time::Duration;

use crate::diagnostics::{error, warn};

/// Default output directory.
pub const DEFAULT_DIR: &str = "./profiles";
/// Default time between dumps.
pub const DEFAULT_DUMP_INTERVAL: Duration = Duration::from_secs(60);
/// Default CPU sampling frequency in Hz.
pub const DEFAULT_FREQUENCY: u32 = 99;
/// Highest accepted sampling frequency in Hz.
pub const MAX_FREQUENCY: u32 = 1000;
/// Default bound on distinct label sets (see [`Config::max_label_sets`]).
pub const DEFAULT_MAX_LABEL_SETS: usize = 1024;
/// Highest accepted bound on distinct label sets.
pub const MAX_LABEL_SETS: usize = 1 << 20;
/// Default mean number of bytes between heap samples (512 KiB, as Go and tcmalloc).
pub const DEFAULT_HEAP_INTERVAL: u64 = 512 * 1024;
/// Largest accepted heap sampling interval (1 TiB).
pub const MAX_HEAP_INTERVAL: u64 = 1 << 40;
/// Longest accepted dump interval (one day).
pub const MAX_DUMP_INTERVAL: Duration = Duration::from_secs(86_400);

/// How much debug information symbolization reads (`THREADPROF_DEBUGINFO`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DebugInfo {
    /// Symbol tables only: function names, no inline frames, no `file:line`.
    Off,
    /// Also the DWARF inside each object file (inline frames and `file:line` where the binary
    /// has debug info), and the symbol table of a separate debug file
    /// (`/usr/lib/debug/.build-id/..`) for an object stripped of its own, whose internal
    /// functions would otherwise go unnamed. The default.
    #[default]
    Auto,
    /// Also the DWARF of separate debug files, for every object that has one installed (inline
    /// frames and `file:line` inside system libraries; parsing it costs time at the dump that
    /// first needs it, and memory while it runs).
    On,
}

/// Every environment variable the runtime reads.
pub const ENV_VARS: &[&str] = &[
    "THREADPROF_ENABLED",
    "THREADPROF_DIR",
    "THREADPROF_DUMP_INTERVAL",
    "THREADPROF_FREQUENCY",
    "THREADPROF_WALL_FREQUENCY",
    "THREADPROF_HTTP_ADDR",
    "THREADPROF_HTTP_TOKEN",
    "THREADPROF_HTTP_ALLOW_UNAUTHENTICATED",
    "THREADPROF_MAX_LABEL_SETS",
    "THREADPROF_DEBUGINFO",
    "THREADPROF_HEAP_INTERVAL",
];

/// The prefix the variables had before the crate was named `threadprof`. Such a variable is
/// not read; when one is set, a warning names its new name.
const OLD_PREFIX: &str = "PROFILER_";

/// `(old name, new name)` for each variable set under its pre-rename name.
fn renamed_variables(env: &impl Fn(&str) -> Option<String>) -> Vec<(String, &'static str)> {
    ENV_VARS
        .iter()
        .filter_map(|new| {
            let old = format!("{OLD_PREFIX}{}", new.strip_prefix("THREADPROF_")?);
            env(&old).map(|_| (old, *new))
        })
        .collect()
}

/// The resolved configuration of a runtime.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Whether sampling and dumps run at all.
    pub enabled: bool,
    /// Where dump files go.
    pub output_dir: PathBuf,
    /// Time between dumps.
    pub dump_interval: Duration,
    /// CPU-time sampling frequency per thread, in Hz.
    pub frequency: u32,
    /// Wall-clock sampling frequency per thread, in Hz; 0 means off.
    pub wall_frequency: u32,
    /// Address the HTTP endpoint listens on (`http` feature); `None` means no server. An empty
    /// token (from the builder or an empty `THREADPROF_HTTP_TOKEN`) is a configuration error:
    /// one error is logged and this is `None`, so no server starts.
    pub http_addr: Option<String>,
    /// Bearer token every HTTP request must carry, if set; never empty (see `http_addr`).
    pub http_token: Option<String>,
    /// Serve a non-loopback address without a token. Off by default: such an address without a
    /// token logs one error and no server starts.
    pub http_allow_unauthenticated: bool,
    /// Most distinct label sets kept (label sets set with `with_labels`, `labeled`,
    /// `#[profiled(labels(..))]` or the tracing layer, and their merges). Past it, samples of
    /// a new set carry `labels=overflow` and one warning is logged. Default 1,024.
    pub max_label_sets: usize,
    /// How much debug information symbolization reads (default [`DebugInfo::Auto`]).
    pub debuginfo: DebugInfo,
    /// Mean bytes allocated between two heap samples (cargo feature `heap`, with
    /// `threadprof::Allocator` as the global allocator); 0 turns heap sampling off. Default
    /// 512 KiB.
    pub heap_interval: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            enabled: true,
            output_dir: PathBuf::from(DEFAULT_DIR),
            dump_interval: DEFAULT_DUMP_INTERVAL,
            frequency: DEFAULT_FREQUENCY,
            wall_frequency: 0,
            http_addr: None,
            http_token: None,
            http_allow_unauthenticated: false,
            max_label_sets: DEFAULT_MAX_LABEL_SETS,
            debuginfo: DebugInfo::Auto,
            heap_interval: DEFAULT_HEAP_INTERVAL,
        }
    }
}

/// Values set on the builder; `None` means "not set".
#[derive(Clone, Debug, Default)]
pub(crate) struct Requested {
    pub enabled: Option<bool>,
    pub output_dir: Option<PathBuf>,
    pub dump_interval: Option<Duration>,
    pub frequency: Option<u32>,
    pub wall_frequency: Option<u32>,
    pub http_addr: Option<String>,
    pub http_token: Option<String>,
    pub http_allow_unauthenticated: Option<bool>,
    pub max_label_sets: Option<usize>,
    pub debuginfo: Option<DebugInfo>,
    pub heap_interval: Option<u64>,
}

/// Where a value came from, for warnings.
#[derive(Clone, Copy)]
enum Source<'a> {
    Builder(&'a str),
    Env(&'a str),
}

impl std::fmt::Display for Source<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Builder(m) => write!(f, "Profiler::builder().{m}()"),
            Source::Env(v) => write!(f, "environment variable {v}"),
        }
    }
}

fn fallback<T: std::fmt::Debug>(source: Source, shown: &str, why: &str, default: T) -> T {
    warn(
        &format!("config:{source}:{shown}"),
        &format!("{source} = {shown:?} is invalid ({why}); using the default {default:?}"),
    );
    default
}

fn check_frequency(source: Source, hz: u32, default: u32, zero_ok: bool) -> u32 {
    if hz == 0 && !zero_ok {
        fallback(source, "0", "must be 1..=1000 Hz", default)
    } else if hz > MAX_FREQUENCY {
        fallback(source, &hz.to_string(), "must be at most 1000 Hz", default)
    } else {
        hz
    }
}

fn check_interval(source: Source, shown: &str, interval: Option<Duration>) -> Duration {
    match interval {
        Some(d) if d.is_zero() => {
            fallback(source, shown, "must be above zero", DEFAULT_DUMP_INTERVAL)
        }
        Some(d) if d > MAX_DUMP_INTERVAL => fallback(
            source,
            shown,
            "must be at most 86400 seconds",
            DEFAULT_DUMP_INTERVAL,
        ),
        Some(d) => d,
        None => fallback(
            source,
            shown,
            "not a number of seconds",
            DEFAULT_DUMP_INTERVAL,
        ),
    }
}

fn check_label_sets(source: Source, n: usize) -> usize {
    if n > MAX_LABEL_SETS {
        fallback(
            source,
            &n.to_string(),
            "must be at most 1048576",
            DEFAULT_MAX_LABEL_SETS,
        )
    } else {
        n
    }
}

fn check_heap_interval(source: Source, bytes: u64) -> u64 {
    if bytes > MAX_HEAP_INTERVAL {
        fallback(
            source,
            &bytes.to_string(),
            "must be at most 1099511627776 bytes (1 TiB)",
            DEFAULT_HEAP_INTERVAL,
        )
    } else {
        bytes
    }
}

fn parse_bool(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

fn parse_seconds(s: &str) -> Option<Duration> {
    let secs: f64 = s.trim().parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(1e12)))
}

fn parse_hz(source: Source, s: &str, default: u32, zero_ok: bool) -> u32 {
    match s.trim().parse::<u64>() {
        Ok(hz) => check_frequency(
            source,
            u32::try_from(hz).unwrap_or(u32::MAX),
            default,
            zero_ok,
        ),
        Err(_) => fallback(source, s, "not a whole number of Hz", default),
    }
}

impl Config {
    /// Resolves builder values and the environment (read through `env`) into a configuration.
    pub(crate) fn resolve(req: &Requested, env: impl Fn(&str) -> Option<String>) -> Config {
        for (old, new) in renamed_variables(&env) {
            warn(
                &format!("renamed-env:{old}"),
                &format!("{old} is set but no longer read; the variable is now named {new}"),
            );
        }
        let mut c = Config::default();
        if let Some(e) = req.enabled {
            c.enabled = e;
        }
        if let Some(dir) = &req.output_dir {
            if dir.as_os_str().is_empty() {
                fallback(Source::Builder("output_dir"), "", "empty path", DEFAULT_DIR);
            } else {
                c.output_dir = dir.clone();
            }
        }
        if let Some(d) = req.dump_interval {
            let src = Source::Builder("dump_interval");
            c.dump_interval = check_interval(src, &format!("{d:?}"), Some(d));
        }
        if let Some(hz) = req.frequency {
            c.frequency =
                check_frequency(Source::Builder("frequency"), hz, DEFAULT_FREQUENCY, false);
        }
        if let Some(hz) = req.wall_frequency {
            c.wall_frequency = check_frequency(Source::Builder("wall_frequency"), hz, 0, true);
        }

        c.http_addr = req.http_addr.clone();
        // An empty token never means "no authentication": it is refused below, and an empty
        // variable does not erase the token set in code.
        let mut empty_token = None;
        match &req.http_token {
            Some(t) if t.trim().is_empty() => empty_token = Some(Source::Builder("http_token")),
            t => c.http_token = t.clone(),
        }
        if let Some(allow) = req.http_allow_unauthenticated {
            c.http_allow_unauthenticated = allow;
        }
        if let Some(d) = req.debuginfo {
            c.debuginfo = d;
        }
        if let Some(n) = req.max_label_sets {
            c.max_label_sets = check_label_sets(Source::Builder("max_label_sets"), n);
        }
        if let Some(n) = req.heap_interval {
            c.heap_interval = check_heap_interval(Source::Builder("heap_interval"), n);
        }

        if let Some(v) = env("THREADPROF_ENABLED") {
            let src = Source::Env("THREADPROF_ENABLED");
            c.enabled = parse_bool(&v).unwrap_or_else(|| {
                fallback(src, &v, "expected 1/0, true/false, yes/no, on/off", true)
            });
        }
        if let Some(v) = env("THREADPROF_DIR") {
            if v.trim().is_empty() {
                let src = Source::Env("THREADPROF_DIR");
                c.output_dir = fallback(src, &v, "empty path", PathBuf::from(DEFAULT_DIR));
            } else {
                c.output_dir = PathBuf::from(v);
            }
        }
        if let Some(v) = env("THREADPROF_DUMP_INTERVAL") {
            c.dump_interval = check_interval(
                Source::Env("THREADPROF_DUMP_INTERVAL"),
                &v,
                parse_seconds(&v),
            );
        }
        if let Some(v) = env("THREADPROF_FREQUENCY") {
            c.frequency = parse_hz(
                Source::Env("THREADPROF_FREQUENCY"),
                &v,
                DEFAULT_FREQUENCY,
                false,
            );
        }
        if let Some(v) = env("THREADPROF_WALL_FREQUENCY") {
            c.wall_frequency = parse_hz(Source::Env("THREADPROF_WALL_FREQUENCY"), &v, 0, true);
        }
        if let Some(v) = env("THREADPROF_HTTP_ADDR") {
            c.http_addr = Some(v).filter(|a| !a.trim().is_empty());
        }
        if let Some(v) = env("THREADPROF_HTTP_TOKEN") {
            if v.trim().is_empty() {
                empty_token = Some(Source::Env("THREADPROF_HTTP_TOKEN"));
            } else {
                c.http_token = Some(v);
            }
        }
        if let Some(v) = env("THREADPROF_HTTP_ALLOW_UNAUTHENTICATED") {
            let src = Source::Env("THREADPROF_HTTP_ALLOW_UNAUTHENTICATED");
            c.http_allow_unauthenticated = parse_bool(&v).unwrap_or_else(|| {
                fallback(src, &v, "expected 1/0, true/false, yes/no, on/off", false)
            });
        }
        if let Some(v) = env("THREADPROF_MAX_LABEL_SETS") {
            let src = Source::Env("THREADPROF_MAX_LABEL_SETS");
            c.max_label_sets = match v.trim().parse::<u64>() {
                Ok(n) => check_label_sets(src, usize::try_from(n).unwrap_or(usize::MAX)),
                Err(_) => fallback(src, &v, "not a whole number", DEFAULT_MAX_LABEL_SETS),
            };
        }
        if let Some(v) = env("THREADPROF_DEBUGINFO") {
            let src = Source::Env("THREADPROF_DEBUGINFO");
            c.debuginfo = match v.trim().to_ascii_lowercase().as_str() {
                "off" | "0" | "no" | "false" => DebugInfo::Off,
                "auto" => DebugInfo::Auto,
                "on" | "1" | "yes" | "true" => DebugInfo::On,
                _ => fallback(src, &v, "expected off, auto or on", DebugInfo::Auto),
            };
        }
        if let Some(v) = env("THREADPROF_HEAP_INTERVAL") {
            let src = Source::Env("THREADPROF_HEAP_INTERVAL");
            c.heap_interval = match v.trim().parse::<u64>() {
                Ok(n) => check_heap_interval(src, n),
                Err(_) => fallback(
                    src,
                    &v,
                    "not a whole number of bytes",
                    DEFAULT_HEAP_INTERVAL,
                ),
            };
        }
        // An empty variable beside a token set in code: the code's token stays in force.
        if matches!(empty_token, Some(Source::Env(_))) && c.http_token.is_some() {
            warn(
                "config:http-token-env-empty",
                "THREADPROF_HTTP_TOKEN is set but empty; it is ignored, and the token set in \
                 code stays in force",
            );
            empty_token = None;
        }
        if let (Some(source), Some(addr)) = (empty_token, &c.http_addr) {
            error(
                "config:http-token-empty",
                &format!(
                    "{source} is empty; an empty token is a configuration error, not \"no \
                     authentication\": the HTTP server on {addr} is not started (set a token, or \
                     unset it to serve a loopback address without one)"
                ),
            );
            c.http_addr = None;
        }
        c
    }

    /// Resolves builder values and the process environment.
    pub(crate) fn from_env(req: &Requested) -> Config {
        Config::resolve(req, |k| std::env::var(k).ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_env(pairs: &[(&str, &str)]) -> Config {
        Config::resolve(&Requested::default(), |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        })
    }

    #[test]
    fn old_variable_names_are_named_and_not_read() {
        let env = |k: &str| {
            ["PROFILER_DIR", "PROFILER_FREQUENCY", "PROFILER_HTTP_TOKEN"]
                .contains(&k)
                .then(|| "7".to_string())
        };
        let renamed = renamed_variables(&env);
        let news: Vec<&str> = renamed.iter().map(|(_, n)| *n).collect();
        assert_eq!(
            news,
            [
                "THREADPROF_DIR",
                "THREADPROF_FREQUENCY",
                "THREADPROF_HTTP_TOKEN"
            ]
        );
        assert_eq!(renamed[0].0, "PROFILER_DIR");
        let c = Config::resolve(&Requested::default(), env);
        assert_eq!(c, Config::default(), "old names must not be read");
    }

    #[test]
    fn environment_overrides_builder() {
        let req = Requested {
            frequency: Some(500),
            output_dir: Some("/builder".into()),
            ..Requested::default()
        };
        let c = Config::resolve(&req, |k| {
            (k == "THREADPROF_DIR").then(|| "/env".to_string())
        });
        assert_eq!(c.output_dir, PathBuf::from("/env"));
        assert_eq!(c.frequency, 500);
    }

    #[test]
    fn bad_values_fall_back_to_defaults() {
        for bad in ["0", "-5", "abc", "1001", "", "99.5"] {
            assert_eq!(
                with_env(&[("THREADPROF_FREQUENCY", bad)]).frequency,
                DEFAULT_FREQUENCY,
                "{bad}"
            );
        }
        for bad in ["0", "-1", "x", "NaN", "1e9", ""] {
            let c = with_env(&[("THREADPROF_DUMP_INTERVAL", bad)]);
            assert_eq!(c.dump_interval, DEFAULT_DUMP_INTERVAL, "{bad}");
        }
        assert!(with_env(&[("THREADPROF_ENABLED", "maybe")]).enabled);
        assert_eq!(
            with_env(&[("THREADPROF_DIR", " ")]).output_dir,
            PathBuf::from(DEFAULT_DIR)
        );
        assert_eq!(
            with_env(&[("THREADPROF_WALL_FREQUENCY", "2000")]).wall_frequency,
            0
        );
        assert_eq!(
            with_env(&[("THREADPROF_DEBUGINFO", "sometimes")]).debuginfo,
            DebugInfo::Auto
        );
        for bad in ["-1", "many", "2000000", ""] {
            let c = with_env(&[("THREADPROF_MAX_LABEL_SETS", bad)]);
            assert_eq!(c.max_label_sets, DEFAULT_MAX_LABEL_SETS, "{bad}");
        }
        for bad in ["-1", "512k", "1.5", "", "1099511627777"] {
            let c = with_env(&[("THREADPROF_HEAP_INTERVAL", bad)]);
            assert_eq!(c.heap_interval, DEFAULT_HEAP_INTERVAL, "{bad}");
        }
    }

    #[test]
    fn good_values_are_taken() {
        let c = with_env(&[
            ("THREADPROF_ENABLED", "off"),
            ("THREADPROF_DUMP_INTERVAL", "0.25"),
            ("THREADPROF_FREQUENCY", "1000"),
            ("THREADPROF_WALL_FREQUENCY", "0"),
            ("THREADPROF_MAX_LABEL_SETS", "16"),
            ("THREADPROF_DEBUGINFO", "On"),
            ("THREADPROF_HEAP_INTERVAL", "0"),
        ]);
        assert_eq!(c.heap_interval, 0);
        assert_eq!(
            with_env(&[("THREADPROF_HEAP_INTERVAL", " 65536 ")]).heap_interval,
            65536
        );
        assert!(!c.enabled);
        assert_eq!(c.max_label_sets, 16);
        assert_eq!(c.debuginfo, DebugInfo::On);
        assert_eq!(c.dump_interval, Duration::from_millis(250));
        assert_eq!(c.frequency, 1000);
        assert_eq!(c.wall_frequency, 0);
    }

    #[test]
    fn bad_builder_values_fall_back() {
        let req = Requested {
            frequency: Some(0),
            dump_interval: Some(Duration::ZERO),
            wall_frequency: Some(5000),
            heap_interval: Some(u64::MAX),
            ..Requested::default()
        };
        let c = Config::resolve(&req, |_| None);
        assert_eq!(c.heap_interval, DEFAULT_HEAP_INTERVAL);
        assert_eq!(c.frequency, DEFAULT_FREQUENCY);
        assert_eq!(c.dump_interval, DEFAULT_DUMP_INTERVAL);
        assert_eq!(c.wall_frequency, 0);
    }

    #[test]
    fn an_empty_token_stops_the_server_and_an_empty_variable_keeps_the_code_token() {
        let addr = ("THREADPROF_HTTP_ADDR", "127.0.0.1:6060");
        for empty in ["", " "] {
            let c = with_env(&[addr, ("THREADPROF_HTTP_TOKEN", empty)]);
            assert_eq!((c.http_addr, c.http_token), (None, None), "{empty:?}");
        }
        let req = Requested {
            http_addr: Some("127.0.0.1:6060".into()),
            http_token: Some("s3cret".into()),
            ..Requested::default()
        };
        let c = Config::resolve(&req, |k| (k == "THREADPROF_HTTP_TOKEN").then(String::new));
        assert_eq!(c.http_addr.as_deref(), Some("127.0.0.1:6060"), "served");
        assert_eq!(
            c.http_token.as_deref(),
            Some("s3cret"),
            "with the code's token"
        );
        let req = Requested {
            http_token: Some(String::new()),
            ..req
        };
        let c = Config::resolve(&req, |_| None);
        assert_eq!((c.http_addr, c.http_token), (None, None));
    }

    #[test]
    fn unauthenticated_opt_in() {
        assert!(!Config::default().http_allow_unauthenticated);
        let on = with_env(&[("THREADPROF_HTTP_ALLOW_UNAUTHENTICATED", "1")]);
        assert!(on.http_allow_unauthenticated);
        let bad = with_env(&[("THREADPROF_HTTP_ALLOW_UNAUTHENTICATED", "maybe")]);
        assert!(!bad.http_allow_unauthenticated);
        let req = Requested {
            http_allow_unauthenticated: Some(true),
            ..Requested::default()
        };
        assert!(Config::resolve(&req, |_| None).http_allow_unauthenticated);
    }
}
