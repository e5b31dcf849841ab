//! The victim's language runtime and the memory ceiling its settings give: the JVM's max heap,
//! V8's max old space, Go's GOMEMLIMIT; Python has none. A runtime whose ceiling does not fit
//! its container is the most common story behind an OOMKilled container.
//!
//! [`recognise`] is pure: a process's argv, the few environment variables that carry runtime
//! options ([`EnvVar`]) and the limit in, a [`Runtime`] out. What it cannot read (an options
//! file, a value the runtime itself would refuse, a `valueFrom`) makes the ceiling unknown,
//! never a guess. The inputs come from procfs at the kill ([`procfs`]) or, when that was too
//! late, from the pod spec ([`SpecHints`], kept by the pod index).
mod jvm;
pub mod procfs;
mod spec;

pub use spec::SpecHints;

use crate::model::{Ceiling, Knob, Runtime, RuntimeName, RuntimeSource};

/// The environment variables that carry runtime options; no other is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum EnvVar {
    /// Read by the JVM itself, before the command line.
    JavaToolOptions,
    /// Read by the `java` launcher (JDK 9+), between JAVA_TOOL_OPTIONS and the command line.
    JdkJavaOptions,
    /// `_JAVA_OPTIONS`: read by the JVM after the command line, so it wins.
    JavaOptions,
    /// `JAVA_OPTS`: not read by the JVM; start scripts pass it on by convention.
    JavaOpts,
    NodeOptions,
    GoMemLimit,
}

impl EnvVar {
    const ALL: [EnvVar; 6] = [
        EnvVar::JavaToolOptions,
        EnvVar::JdkJavaOptions,
        EnvVar::JavaOptions,
        EnvVar::JavaOpts,
        EnvVar::NodeOptions,
        EnvVar::GoMemLimit,
    ];

    pub fn name(self) -> &'static str {
        match self {
            EnvVar::JavaToolOptions => "JAVA_TOOL_OPTIONS",
            EnvVar::JdkJavaOptions => "JDK_JAVA_OPTIONS",
            EnvVar::JavaOptions => "_JAVA_OPTIONS",
            EnvVar::JavaOpts => "JAVA_OPTS",
            EnvVar::NodeOptions => "NODE_OPTIONS",
            EnvVar::GoMemLimit => "GOMEMLIMIT",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.name() == name)
    }
}

/// The [`EnvVar`]s a process has. A value of `None` may be set but cannot be read (the pod
/// spec's `valueFrom` / `envFrom`, or an environ procfs did not give).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Env(Vec<(EnvVar, Option<String>)>);

impl Env {
    /// Keeps `value` if `name` is one of the [`EnvVar`]s; the first of a name wins, as for
    /// `getenv`.
    pub fn keep(&mut self, name: &str, value: Option<&str>) {
        if let Some(var) = EnvVar::parse(name) {
            if self.get(var).is_none() {
                self.0.push((var, value.map(str::to_string)));
            }
        }
    }

    /// `None`: not set; `Some(None)`: set, value unknown.
    pub fn get(&self, var: EnvVar) -> Option<Option<&str>> {
        self.0
            .iter()
            .find(|(v, _)| *v == var)
            .map(|(_, val)| val.as_deref())
    }

    fn has(&self, var: EnvVar) -> bool {
        self.get(var).is_some()
    }
}

/// What is known of a process: its argv (empty when the program is unknown, as for a pod
/// whose image's entrypoint runs), its [`EnvVar`]s, and whether its executable is a Go
/// binary (`None`: not known).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Process {
    pub argv: Vec<String>,
    pub env: Env,
    pub go_binary: Option<bool>,
}

/// What a runtime's settings give: the ceiling in bytes, how to say it, what sets it.
struct Found {
    bytes: Option<u64>,
    setting: String,
    ceiling: Ceiling,
}

impl Found {
    fn unknown(setting: impl Into<String>) -> Self {
        Found {
            bytes: None,
            setting: setting.into(),
            ceiling: Ceiling::Unknown,
        }
    }
}

/// The runtime of `p` and its ceiling; `limit` is the memory limit the process ran under
/// (the JVM sizes its default heap from it). `None` when `p` is no runtime known here.
pub fn recognise(p: &Process, limit: Option<u64>, source: RuntimeSource) -> Option<Runtime> {
    let name = kind(p)?;
    let found = match name {
        RuntimeName::Jvm => jvm::ceiling(p, limit, source),
        RuntimeName::Node => node_ceiling(p),
        RuntimeName::Go => go_ceiling(&p.env),
        RuntimeName::Python => Found {
            bytes: None,
            setting: "none (CPython has no heap ceiling)".into(),
            ceiling: Ceiling::None,
        },
    };
    Some(Runtime {
        name,
        heap_max_bytes: found.bytes,
        setting: found.setting,
        source,
        ceiling: found.ceiling,
    })
}

/// The runtime a program name (argv[0], any directory) names.
fn by_program(argv0: &str) -> Option<RuntimeName> {
    let base = argv0.rsplit('/').next().unwrap_or(argv0);
    let python = base.strip_prefix("python").is_some_and(|v| {
        v.is_empty()
            || v.split('.')
                .all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    });
    match base {
        "java" => Some(RuntimeName::Jvm),
        "node" | "nodejs" => Some(RuntimeName::Node),
        _ if python => Some(RuntimeName::Python),
        _ => None,
    }
}

/// The program names a runtime, or its executable is a Go binary; with the program unknown
/// (a pod spec that leaves the entrypoint to the image), the one runtime its settings
/// belong to, if they belong to exactly one.
fn kind(p: &Process) -> Option<RuntimeName> {
    if let Some(argv0) = p.argv.first() {
        return by_program(argv0).or((p.go_binary == Some(true)).then_some(RuntimeName::Go));
    }
    let java = [
        EnvVar::JavaToolOptions,
        EnvVar::JdkJavaOptions,
        EnvVar::JavaOptions,
        EnvVar::JavaOpts,
    ]
    .into_iter()
    .any(|v| p.env.has(v));
    let hints = [
        (RuntimeName::Jvm, java),
        (RuntimeName::Node, p.env.has(EnvVar::NodeOptions)),
        (RuntimeName::Go, p.env.has(EnvVar::GoMemLimit)),
    ];
    let mut named = hints.into_iter().filter(|(_, h)| *h).map(|(n, _)| n);
    match (named.next(), named.next()) {
        (Some(n), None) => Some(n),
        _ => None,
    }
}

/// Splits an options variable as the runtimes do: on whitespace, with '…' and "…" grouping.
pub fn split_options(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quote = None;
    let mut any = false;
    for c in s.chars() {
        match (quote, c) {
            (None, '\'' | '"') => {
                quote = Some(c);
                any = true;
            }
            (Some(q), c) if c == q => quote = None,
            (None, c) if c.is_whitespace() => {
                if any {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            (_, c) => {
                cur.push(c);
                any = true;
            }
        }
    }
    if any {
        out.push(cur);
    }
    out
}

/// A run of decimal digits as a number, saturating (a hostile value must not wrap).
fn saturating_digits(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(s.bytes().fold(0u64, |n, b| {
        n.saturating_mul(10).saturating_add(u64::from(b - b'0'))
    }))
}

const MIB: u64 = 1 << 20;

/// Node options that take their value as the next argument.
const NODE_VALUE_OPTIONS: &[&str] = &[
    "-e",
    "--eval",
    "-p",
    "--print",
    "-r",
    "--require",
    "--import",
    "--loader",
    "--experimental-loader",
    "-C",
    "--conditions",
    "--input-type",
    "--inspect-port",
    "--title",
    "--env-file",
    "--watch-path",
    "--icu-data-dir",
    "--openssl-config",
    "--redirect-warnings",
    "--disable-warning",
];

/// The options of a `node` command line: up to the script (or `--`).
fn node_options(argv: &[String]) -> impl Iterator<Item = &str> {
    leading_options(argv, NODE_VALUE_OPTIONS, |a| a != "--" && a != "-" && a.starts_with('-'))
}

/// The options before a launcher's program argument: `argv[1..]` while `is_option` holds,
/// each option in `value_options` taking the next argument along as its value.
fn leading_options<'a>(
    argv: &'a [String],
    value_options: &'static [&'static str],
    is_option: impl Fn(&str) -> bool,
) -> impl Iterator<Item = &'a str> {
    let mut takes_value = false;
    argv.iter().skip(1).map(String::as_str).take_while(move |a| {
        if std::mem::take(&mut takes_value) {
            return true;
        }
        let option = is_option(a);
        takes_value = option && value_options.contains(a);
        option
    })
}

/// `--max-old-space-size=<MiB>` (V8 takes `_` for `-`): `Some(None)` for a value V8 refuses.
fn old_space(opt: &str) -> Option<Option<u64>> {
    let v = opt.strip_prefix("--")?.split_once('=')?;
    (v.0.replace('_', "-") == "max-old-space-size")
        .then(|| saturating_digits(v.1).map(|m| m.saturating_mul(MIB)))
}

/// V8's max old space: NODE_OPTIONS first, then the command line; the last one wins.
fn node_ceiling(p: &Process) -> Found {
    let from_env_var = p.env.get(EnvVar::NodeOptions);
    let env = from_env_var
        .flatten()
        .map(split_options)
        .unwrap_or_default();
    let from_env = env.iter().map(|o| (o.as_str(), Some(EnvVar::NodeOptions)));
    let from_argv = node_options(&p.argv).map(|o| (o, None));
    let last = from_env
        .chain(from_argv)
        .filter_map(|(o, var)| old_space(o).map(|b| (o, var, b)))
        .last();
    match last {
        Some((opt, var, Some(bytes))) => {
            let value = opt.split_once('=').map_or("", |(_, v)| v).to_string();
            Found {
                bytes: Some(bytes),
                setting: with_origin(opt, var),
                ceiling: Ceiling::Set(Knob {
                    name: "max-old-space-size",
                    flag: "--max-old-space-size",
                    value,
                }),
            }
        }
        Some((opt, _, None)) => Found::unknown(format!("unreadable ({opt})")),
        None if from_env_var == Some(None) => Found::unknown("unknown (NODE_OPTIONS not readable)"),
        None => Found::unknown("default (V8 sizes old space from the memory it sees)"),
    }
}

/// GOMEMLIMIT as the Go runtime parses it: bytes with an optional B, KiB, MiB, GiB or TiB
/// suffix, at most 2^63-1, or `off`. What Go refuses (it would not have started) is unknown.
fn parse_gomemlimit(s: &str) -> Option<Option<u64>> {
    if s == "off" {
        return Some(None);
    }
    let (digits, mult) = [
        ("TiB", 1u64 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
        ("B", 1),
    ]
    .into_iter()
    .find_map(|(suf, m)| s.strip_suffix(suf).map(|d| (d, m)))
    .unwrap_or((s, 1));
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    let bytes = n.checked_mul(mult).filter(|b| *b <= i64::MAX as u64)?;
    Some(Some(bytes))
}

fn go_ceiling(env: &Env) -> Found {
    match env.get(EnvVar::GoMemLimit) {
        None => Found {
            bytes: None,
            setting: "none (GOMEMLIMIT unset)".into(),
            ceiling: Ceiling::None,
        },
        Some(None) => Found::unknown("unknown (GOMEMLIMIT not readable)"),
        Some(Some(v)) => match parse_gomemlimit(v) {
            Some(Some(bytes)) => Found {
                bytes: Some(bytes),
                setting: format!("GOMEMLIMIT={v}"),
                ceiling: Ceiling::Set(Knob {
                    name: "GOMEMLIMIT",
                    flag: "GOMEMLIMIT",
                    value: v.to_string(),
                }),
            },
            Some(None) => Found {
                bytes: None,
                setting: "none (GOMEMLIMIT=off)".into(),
                ceiling: Ceiling::None,
            },
            None => Found::unknown(format!("unreadable (GOMEMLIMIT={v})")),
        },
    }
}

/// `opt`, and the variable it came from when not the command line.
fn with_origin(opt: &str, var: Option<EnvVar>) -> String {
    match var {
        None => opt.to_string(),
        Some(EnvVar::JavaOpts) => {
            format!("{opt} (JAVA_OPTS, which start scripts pass to java by convention)")
        }
        Some(v) => format!("{opt} ({})", v.name()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn process(argv: &[&str], env: &[(&str, &str)]) -> Process {
        let mut e = Env::default();
        for (k, v) in env {
            e.keep(k, Some(v));
        }
        Process {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            env: e,
            go_binary: Some(false),
        }
    }

    fn rt(argv: &[&str], env: &[(&str, &str)]) -> Option<Runtime> {
        recognise(&process(argv, env), Some(256 * MIB), RuntimeSource::Procfs)
    }

    #[test]
    fn programs() {
        for (argv0, name) in [
            (
                "/usr/lib/jvm/java-17-openjdk-amd64/bin/java",
                Some(RuntimeName::Jvm),
            ),
            ("node", Some(RuntimeName::Node)),
            ("/usr/bin/nodejs", Some(RuntimeName::Node)),
            ("python3", Some(RuntimeName::Python)),
            ("/usr/local/bin/python3.12", Some(RuntimeName::Python)),
            ("python", Some(RuntimeName::Python)),
            ("python3-config", None),
            ("python3.", None),
            ("javac", None),
            ("nodemon", None),
            ("oomtrace-hog", None),
            ("", None),
        ] {
            assert_eq!(rt(&[argv0], &[]).map(|r| r.name), name, "{argv0}");
        }
        let py = rt(&["python3", "app.py"], &[]).unwrap();
        assert_eq!(
            (py.heap_max_bytes, py.setting.as_str()),
            (None, "none (CPython has no heap ceiling)")
        );
        assert_eq!(py.ceiling, Ceiling::None);
    }

    #[test]
    fn a_go_binary_is_known_by_its_executable_not_by_its_environment() {
        let mut p = process(&["/app/server"], &[("GOMEMLIMIT", "512MiB")]);
        assert_eq!(
            recognise(&p, None, RuntimeSource::Procfs),
            None,
            "not a Go binary"
        );
        p.go_binary = Some(true);
        let r = recognise(&p, None, RuntimeSource::Procfs).unwrap();
        assert_eq!(
            (r.name, r.heap_max_bytes),
            (RuntimeName::Go, Some(512 * MIB))
        );
        assert_eq!(r.setting, "GOMEMLIMIT=512MiB");
        p.env = Env::default();
        let r = recognise(&p, None, RuntimeSource::Procfs).unwrap();
        assert_eq!(
            (r.heap_max_bytes, r.setting.as_str()),
            (None, "none (GOMEMLIMIT unset)")
        );
        assert_eq!(r.ceiling, Ceiling::None);
    }

    #[test]
    fn an_unknown_program_is_named_by_its_settings_when_they_agree() {
        let p = |env: &[(&str, &str)]| Process {
            argv: vec![],
            go_binary: None,
            ..process(&[], env)
        };
        let kind =
            |env: &[(&str, &str)]| recognise(&p(env), None, RuntimeSource::PodSpec).map(|r| r.name);
        assert_eq!(
            kind(&[("JAVA_TOOL_OPTIONS", "-Xmx1g")]),
            Some(RuntimeName::Jvm)
        );
        assert_eq!(kind(&[("JAVA_OPTS", "-Xmx1g")]), Some(RuntimeName::Jvm));
        assert_eq!(
            kind(&[("NODE_OPTIONS", "--max-old-space-size=100")]),
            Some(RuntimeName::Node)
        );
        assert_eq!(kind(&[("GOMEMLIMIT", "1GiB")]), Some(RuntimeName::Go));
        assert_eq!(
            kind(&[("GOMEMLIMIT", "1GiB"), ("NODE_OPTIONS", "")]),
            None,
            "two runtimes: unknown"
        );
        assert_eq!(kind(&[("PATH", "/bin")]), None);
    }

    #[test]
    fn gomemlimit_syntax() {
        for (s, want) in [
            ("0", Some(Some(0))),
            ("1048576", Some(Some(MIB))),
            ("100B", Some(Some(100))),
            ("4KiB", Some(Some(4096))),
            ("600MiB", Some(Some(600 * MIB))),
            ("2GiB", Some(Some(2 << 30))),
            ("1TiB", Some(Some(1 << 40))),
            ("off", Some(None)),
            ("9223372036854775807", Some(Some(i64::MAX as u64))),
            ("9223372036854775808", None),
            ("8388608TiB", None),
            ("99999999999999999999999", None),
            ("", None),
            ("B", None),
            ("MiB", None),
            ("600M", None),
            ("600mib", None),
            ("600 MiB", None),
            ("-1", None),
            ("+1", None),
            ("1.5GiB", None),
            ("OFF", None),
        ] {
            assert_eq!(parse_gomemlimit(s), want, "{s:?}");
        }
        let bad = go_ceiling(&process(&[], &[("GOMEMLIMIT", "lots")]).env);
        assert_eq!((bad.bytes, bad.ceiling), (None, Ceiling::Unknown));
        assert_eq!(bad.setting, "unreadable (GOMEMLIMIT=lots)");
        let off = go_ceiling(&process(&[], &[("GOMEMLIMIT", "off")]).env);
        assert_eq!(
            (off.bytes, off.ceiling, off.setting.as_str()),
            (None, Ceiling::None, "none (GOMEMLIMIT=off)")
        );
    }

    #[test]
    fn node_old_space_the_command_line_beats_node_options_and_the_last_wins() {
        let heap = |argv: &[&str], env: &[(&str, &str)]| {
            let r = rt(argv, env).unwrap();
            (r.heap_max_bytes, r.setting)
        };
        assert_eq!(
            heap(&["node", "--max-old-space-size=512", "app.js"], &[]),
            (Some(512 * MIB), "--max-old-space-size=512".into())
        );
        assert_eq!(
            heap(&["node", "--max_old_space_size=200", "app.js"], &[]).0,
            Some(200 * MIB)
        );
        assert_eq!(
            heap(
                &["node", "app.js"],
                &[(
                    "NODE_OPTIONS",
                    "--max-old-space-size=100 --max-old-space-size=150"
                )]
            ),
            (
                Some(150 * MIB),
                "--max-old-space-size=150 (NODE_OPTIONS)".into()
            )
        );
        assert_eq!(
            heap(
                &["node", "--max-old-space-size=300", "app.js"],
                &[("NODE_OPTIONS", "--max-old-space-size=100")]
            )
            .0,
            Some(300 * MIB)
        );
        // Options go on after -e's value (no script file); after the script they are its own.
        assert_eq!(
            heap(&["node", "-e", "x()", "--max-old-space-size=300"], &[]).0,
            Some(300 * MIB)
        );
        assert_eq!(
            heap(&["node", "app.js", "--max-old-space-size=300"], &[]).0,
            None
        );
        assert_eq!(
            heap(&["node", "--", "--max-old-space-size=300"], &[]).0,
            None
        );
        assert_eq!(
            heap(&["node", "app.js"], &[]),
            (
                None,
                "default (V8 sizes old space from the memory it sees)".into()
            )
        );
        // A value V8 refuses, or a hostile one.
        assert_eq!(
            heap(&["node", "--max-old-space-size=1.5", "a.js"], &[]).0,
            None
        );
        assert_eq!(
            heap(&["node", "--max-old-space-size=", "a.js"], &[]).0,
            None
        );
        assert_eq!(
            heap(
                &[
                    "node",
                    "--max-old-space-size=99999999999999999999999999",
                    "a.js"
                ],
                &[]
            )
            .0,
            Some(u64::MAX)
        );
        let r = rt(&["node", "--max-old-space-size=512", "a.js"], &[]).unwrap();
        assert_eq!(
            r.ceiling,
            Ceiling::Set(Knob {
                name: "max-old-space-size",
                flag: "--max-old-space-size",
                value: "512".into()
            })
        );
    }

    #[test]
    fn options_split_like_the_runtimes_split_them() {
        assert_eq!(
            split_options("  -Xmx1g\t-XX:+UseG1GC \n"),
            ["-Xmx1g", "-XX:+UseG1GC"]
        );
        assert_eq!(
            split_options("'-Xmx100m' \"-Dname=a b\" -Da=''"),
            ["-Xmx100m", "-Dname=a b", "-Da="]
        );
        assert_eq!(
            split_options("-Dx=\"unterminated -Xmx1g"),
            ["-Dx=unterminated -Xmx1g"]
        );
        assert!(split_options("   ").is_empty());
    }

    #[test]
    fn the_first_of_a_name_wins_and_only_the_runtime_variables_are_kept() {
        let mut e = Env::default();
        e.keep("PATH", Some("/bin"));
        e.keep("GOMEMLIMIT", Some("1GiB"));
        e.keep("GOMEMLIMIT", Some("2GiB"));
        e.keep("JAVA_OPTS", None);
        assert_eq!(e.get(EnvVar::GoMemLimit), Some(Some("1GiB")));
        assert_eq!(e.get(EnvVar::JavaOpts), Some(None));
        assert_eq!(e.get(EnvVar::NodeOptions), None);
        assert_eq!(e.0.len(), 2);
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_processes_never_panic(
            argv in proptest::collection::vec("\\PC{0,24}", 0..6),
            env in proptest::collection::vec((proptest::sample::select(EnvVar::ALL.to_vec()), "\\PC{0,40}"), 0..4),
            limit in proptest::option::of(proptest::num::u64::ANY),
            go in proptest::option::of(proptest::bool::ANY),
        ) {
            let mut e = Env::default();
            for (k, v) in &env {
                e.keep(k.name(), Some(v));
            }
            let p = Process { argv, env: e, go_binary: go };
            let _ = recognise(&p, limit, RuntimeSource::Procfs);
        }
    }
}
