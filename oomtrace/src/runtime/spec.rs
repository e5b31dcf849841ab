//! What a container spec says about its runtime, for when procfs was too late: kept by the
//! pod index only for containers that say anything, as a few short strings.
//!
//! The command line is `command` + `args` (a `sh -c` line is split into words and read from
//! its runtime on); without `command` the image's entrypoint runs, which the spec does not
//! name. Only the heap flags of the command line and the [`EnvVar`]s are kept.
use super::{by_program, jvm, node_options, old_space, split_options, Env, EnvVar, Process};
use crate::model::RuntimeName;
use serde::Serialize;

/// The runtime settings of one container spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SpecHints {
    /// The runtime's program (`java`), named by the command or, for the image's entrypoint or
    /// a wrapper, by heap flags of one runtime in its arguments.
    program: Option<Box<str>>,
    /// The heap flags of its command line, in order.
    flags: Box<[Box<str>]>,
    /// Its [`EnvVar`]s, the last of a name (as kubelet sets them); `None`: from a reference.
    env: Box<[(EnvVar, Option<Box<str>>)]>,
    /// `envFrom` may set any variable the list does not.
    env_from: bool,
}

const SHELLS: &[&str] = &["sh", "bash", "dash", "ash", "zsh"];

fn basename(a: &str) -> &str {
    a.rsplit('/').next().unwrap_or(a)
}

/// The command line from the runtime on: the words of a `sh -c` line from the first that
/// names a runtime (`exec java …`), less the `$VAR` words the environment speaks for, else
/// `argv` itself.
fn runtime_argv(argv: Vec<String>) -> Vec<String> {
    match argv.as_slice() {
        [sh, c, line, ..] if SHELLS.contains(&basename(sh)) && c == "-c" => {
            let words = split_options(line);
            match words.iter().position(|w| by_program(w).is_some()) {
                Some(i) => words[i..]
                    .iter()
                    .filter(|w| !w.starts_with('$'))
                    .cloned()
                    .collect(),
                None => argv,
            }
        }
        _ => argv,
    }
}

impl SpecHints {
    /// The hints of a container with this `command`, `args` and `env` (name, value: `None`
    /// for a `valueFrom`); `None` when none of it is about a runtime.
    pub fn new<'a>(
        command: &[&str],
        args: &[&str],
        env: impl IntoIterator<Item = (&'a str, Option<&'a str>)>,
        env_from: bool,
    ) -> Option<Box<Self>> {
        let argv = runtime_argv(command.iter().chain(args).map(|s| s.to_string()).collect());
        let named = argv
            .first()
            .filter(|_| !command.is_empty())
            .filter(|a| by_program(a).is_some());
        let (program, flags): (Option<Box<str>>, Vec<&str>) =
            match named.map(|a| (basename(a), by_program(a))) {
                Some((p, Some(RuntimeName::Jvm))) => (
                    Some(p.into()),
                    jvm::launcher_options(&argv)
                        .filter(|o| jvm::is_heap_flag(o))
                        .collect(),
                ),
                Some((p, Some(RuntimeName::Node))) => (
                    Some(p.into()),
                    node_options(&argv)
                        .filter(|o| old_space(o).is_some())
                        .collect(),
                ),
                Some((p, _)) => (Some(p.into()), vec![]),
                // The image's entrypoint or a wrapper: heap flags of one runtime name it.
                None => {
                    let jvm: Vec<&str> = argv
                        .iter()
                        .map(String::as_str)
                        .filter(|a| jvm::is_heap_flag(a))
                        .collect();
                    let node: Vec<&str> = argv
                        .iter()
                        .map(String::as_str)
                        .filter(|a| old_space(a).is_some())
                        .collect();
                    match (jvm.is_empty(), node.is_empty()) {
                        (false, true) => (Some("java".into()), jvm),
                        (true, false) => (Some("node".into()), node),
                        _ => (None, vec![]),
                    }
                }
            };
        let mut vars: Vec<(EnvVar, Option<Box<str>>)> = Vec::new();
        for (name, value) in env {
            if let Some(var) = EnvVar::parse(name) {
                vars.retain(|(v, _)| *v != var);
                vars.push((var, value.map(Box::from)));
            }
        }
        if program.is_none() && vars.is_empty() {
            return None;
        }
        Some(Box::new(SpecHints {
            program,
            flags: flags.into_iter().map(Box::from).collect(),
            env: vars.into_boxed_slice(),
            env_from,
        }))
    }

    /// The process these hints describe, for [`super::recognise`]; its argv is empty when
    /// the program is unknown.
    pub fn process(&self) -> Process {
        let argv = self
            .program
            .iter()
            .chain(self.flags.iter())
            .map(|s| s.to_string())
            .collect();
        let mut env = Env::default();
        for (var, value) in self.env.iter() {
            env.keep(var.name(), value.as_deref());
        }
        if self.env_from {
            for var in EnvVar::ALL {
                env.keep(var.name(), None);
            }
        }
        Process {
            argv,
            env,
            go_binary: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Runtime, RuntimeSource};

    const MIB: u64 = 1 << 20;

    fn spec(
        command: &[&str],
        args: &[&str],
        env: &[(&str, Option<&str>)],
        env_from: bool,
    ) -> Option<Runtime> {
        let hints = SpecHints::new(command, args, env.iter().copied(), env_from)?;
        super::super::recognise(&hints.process(), Some(512 * MIB), RuntimeSource::PodSpec)
    }

    fn heap(r: Option<Runtime>) -> (Option<RuntimeName>, Option<u64>, String) {
        let r = r.expect("recognised");
        (Some(r.name), r.heap_max_bytes, r.setting)
    }

    #[test]
    fn nothing_about_a_runtime_keeps_nothing() {
        assert_eq!(
            SpecHints::new(
                &["/app/server"],
                &["--port=80"],
                [("PATH", Some("/bin"))],
                true
            ),
            None
        );
        assert_eq!(SpecHints::new(&[], &[], [], false), None);
    }

    #[test]
    fn the_command_names_the_runtime_and_its_flags() {
        let jvm = spec(
            &["java", "-XX:MaxRAMPercentage=90", "-cp", "/app", "-Dx=1"],
            &["Main", "-Xmx1g"],
            &[],
            false,
        );
        assert_eq!(
            heap(jvm),
            (
                Some(RuntimeName::Jvm),
                Some(462 * MIB),
                "-XX:MaxRAMPercentage=90".into()
            )
        );
        let node = spec(
            &["node"],
            &["--max-old-space-size=1024", "server.js"],
            &[],
            false,
        );
        assert_eq!(heap(node).1, Some(1024 * MIB));
        let py = spec(&["/usr/bin/python3", "app.py"], &[], &[], false);
        assert_eq!(
            heap(py),
            (
                Some(RuntimeName::Python),
                None,
                "none (CPython has no heap ceiling)".into()
            )
        );
        let hints = SpecHints::new(
            &["java", "-Xmx300m", "-Dfoo=bar", "-jar", "app.jar", "-Xmx1g"],
            &[],
            [],
            false,
        )
        .unwrap();
        assert_eq!(
            &*hints.flags,
            [Box::from("-Xmx300m")],
            "only the JVM's heap flags are kept"
        );
    }

    #[test]
    fn a_shell_line_is_read_from_its_runtime_on() {
        let r = spec(
            &["/bin/sh", "-c"],
            &["exec java $JAVA_OPTS -Xmx256m -jar /app.jar"],
            &[],
            false,
        );
        assert_eq!(heap(r).1, Some(256 * MIB));
        let r = spec(
            &[
                "bash",
                "-c",
                "cd /app && node --max-old-space-size=300 index.js",
            ],
            &[],
            &[],
            false,
        );
        assert_eq!(heap(r).1, Some(300 * MIB));
    }

    #[test]
    fn the_images_entrypoint_is_named_by_its_settings() {
        // args only: the entrypoint is the image's; its heap flags say which runtime.
        let r = spec(&[], &["-Xmx700m", "-jar", "app.jar"], &[], false);
        assert_eq!(
            heap(r),
            (Some(RuntimeName::Jvm), Some(700 * MIB), "-Xmx700m".into())
        );
        let r = spec(
            &[],
            &[],
            &[("JAVA_TOOL_OPTIONS", Some("-XX:MaxRAMPercentage=75"))],
            false,
        );
        assert_eq!(
            heap(r),
            (
                Some(RuntimeName::Jvm),
                Some(384 * MIB),
                "-XX:MaxRAMPercentage=75 (JAVA_TOOL_OPTIONS)".into()
            )
        );
        let r = spec(
            &["/docker-entrypoint.sh"],
            &[],
            &[("JAVA_OPTS", Some("-Xmx400m"))],
            false,
        );
        assert_eq!(
            heap(r).2,
            "-Xmx400m (JAVA_OPTS, which start scripts pass to java by convention)"
        );
        let r = spec(&[], &[], &[("GOMEMLIMIT", Some("450MiB"))], false);
        assert_eq!(
            heap(r),
            (
                Some(RuntimeName::Go),
                Some(450 * MIB),
                "GOMEMLIMIT=450MiB".into()
            )
        );
        let r = spec(
            &[],
            &[],
            &[("NODE_OPTIONS", Some("--max-old-space-size=600"))],
            false,
        );
        assert_eq!(heap(r).1, Some(600 * MIB));
        assert_eq!(
            spec(&[], &["-Xmx1g", "--max-old-space-size=1"], &[], false),
            None,
            "two runtimes: unknown"
        );
    }

    #[test]
    fn what_the_spec_does_not_resolve_is_unknown() {
        let r = spec(
            &["java", "-jar", "app.jar"],
            &[],
            &[("JAVA_TOOL_OPTIONS", None)],
            false,
        );
        assert_eq!(heap(r).1, None);
        let r = spec(&["java", "-Xmx300m", "-jar", "app.jar"], &[], &[], true);
        assert_eq!(
            heap(r).1,
            None,
            "envFrom may set _JAVA_OPTIONS, which beats -Xmx"
        );
        let r = spec(&[], &[], &[("GOMEMLIMIT", None)], false);
        assert_eq!(
            heap(r),
            (
                Some(RuntimeName::Go),
                None,
                "unknown (GOMEMLIMIT not readable)".into()
            )
        );
        assert_eq!(
            heap(spec(&["java", "-Xmx$(HEAP)", "Main"], &[], &[], false)).2,
            "unreadable (-Xmx$(HEAP))"
        );
    }

    #[test]
    fn the_last_of_a_name_wins_as_kubelet_sets_it() {
        let env = [("GOMEMLIMIT", Some("1GiB")), ("GOMEMLIMIT", Some("300MiB"))];
        assert_eq!(heap(spec(&[], &[], &env, false)).1, Some(300 * MIB));
    }
}
