//! The JVM's max heap from its flags and the limit, as HotSpot (JDK 11+) sizes it in
//! `Arguments::set_heap_size`, checked against `java -XX:+PrintFlagsFinal` of OpenJDK 17 in
//! memory cgroups of 128 MiB to 4 GiB.
//!
//! The flags are read in HotSpot's order, the last of each winning: JAVA_TOOL_OPTIONS, then
//! JDK_JAVA_OPTIONS (only the `java` launcher reads it), then the command line up to the main
//! class or `-jar`, then `_JAVA_OPTIONS`. `JAVA_OPTS` is read by no JVM: it counts only from a
//! pod spec, where a start script is presumed to pass it on, and the setting says so.
//!
//! -Xmx (or -XX:MaxHeapSize) beats every percentage. Without it the heap is MaxRAMPercentage
//! (25) of the limit (or of -XX:MaxRAM), but at least HotSpot's own default of 124.8 MiB,
//! and only MinRAMPercentage (50) of a limit under about 250 MiB; an -Xms above that raises
//! it. HotSpot rounds the result up to its heap alignment, 2 MiB here (G1 may round a large
//! heap up to its region size, by less than 0.1 %).
use super::{saturating_digits, split_options, with_origin, EnvVar, Found, Process, MIB};
use crate::model::{Ceiling, Knob, RuntimeSource};

/// HotSpot's MaxHeapSize default on 64-bit: 96 MiB scaled by 1.3, 8-byte aligned.
const DEFAULT_MAX_HEAP: u64 = 130_862_280;
/// HotSpot's MaxRAM default on 64-bit: the memory the default heap is a share of, at most.
const DEFAULT_MAX_RAM: u64 = 128 << 30;
const HEAP_ALIGNMENT: u64 = 2 * MIB;

/// Launcher options whose value is the next argument.
const VALUE_OPTIONS: &[&str] = &[
    "-cp",
    "-classpath",
    "--class-path",
    "-p",
    "--module-path",
    "--upgrade-module-path",
    "--add-modules",
    "--enable-native-access",
    "--limit-modules",
    "--add-exports",
    "--add-opens",
    "--add-reads",
    "--patch-module",
    "-d",
    "--describe-module",
    "--source",
];

/// The JVM options of a `java` command line: up to the main class, `-jar` or `-m`.
pub(super) fn launcher_options(argv: &[String]) -> impl Iterator<Item = &str> {
    super::leading_options(argv, VALUE_OPTIONS, |a| {
        let main = matches!(a, "-jar" | "-m" | "--module") || a.starts_with("--module=");
        !main && (a.starts_with('-') || a.starts_with('@'))
    })
}

/// What one option does to the heap size.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Flag {
    MaxHeap(u64),
    InitialHeap(u64),
    MaxRamPercentage(f64),
    MinRamPercentage(f64),
    MaxRamFraction(u64),
    MinRamFraction(u64),
    MaxRam(u64),
    ContainerSupport(bool),
    /// `@argfile`, `-XX:Flags=`, `-XX:VMOptionsFile=`, or an unreadable variable: options
    /// this cannot see.
    Opaque,
    /// A value HotSpot refuses (it would not have started).
    Invalid,
}

/// HotSpot's memory sizes: decimal or 0x-hex digits and one optional k, m, g or t
/// (either case). Saturates rather than wraps.
fn size(s: &str) -> Option<u64> {
    let (digits, radix) = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => (hex, 16u64),
        None => (s, 10),
    };
    let end = digits
        .find(|c: char| !c.is_digit(radix as u32))
        .unwrap_or(digits.len());
    let (num, suffix) = digits.split_at(end);
    if num.is_empty() {
        return None;
    }
    let shift = match suffix {
        "" => 0,
        "k" | "K" => 10,
        "m" | "M" => 20,
        "g" | "G" => 30,
        "t" | "T" => 40,
        _ => return None,
    };
    let n = num.chars().fold(0u64, |n, c| {
        n.saturating_mul(radix)
            .saturating_add(u64::from(c.to_digit(radix as u32).unwrap_or(0)))
    });
    Some(n.saturating_mul(1 << shift))
}

/// HotSpot's percentages: `digits[.digits]` within 0–100.
fn percentage(s: &str) -> Option<f64> {
    let (int, frac) = s.split_once('.').unwrap_or((s, "0"));
    saturating_digits(int)?;
    saturating_digits(frac)?;
    s.parse::<f64>().ok().filter(|p| (0.0..=100.0).contains(p))
}

/// Whether `opt` sizes the heap, or may (an options file).
pub(super) fn is_heap_flag(opt: &str) -> bool {
    flag(opt).is_some()
}

/// The heap-sizing meaning of one option, `None` when it has none.
fn flag(opt: &str) -> Option<Flag> {
    if opt.starts_with('@') {
        return Some(Flag::Opaque);
    }
    let or_invalid = |f: Option<Flag>| Some(f.unwrap_or(Flag::Invalid));
    if let Some(v) = opt.strip_prefix("-Xmx") {
        return or_invalid(size(v).map(Flag::MaxHeap));
    }
    if let Some(v) = opt.strip_prefix("-Xms") {
        return or_invalid(size(v).map(Flag::InitialHeap));
    }
    let xx = opt.strip_prefix("-XX:")?;
    match xx {
        "+UseContainerSupport" => return Some(Flag::ContainerSupport(true)),
        "-UseContainerSupport" => return Some(Flag::ContainerSupport(false)),
        _ => {}
    }
    let (name, v) = xx.split_once('=')?;
    match name {
        "MaxHeapSize" => or_invalid(size(v).map(Flag::MaxHeap)),
        "InitialHeapSize" => or_invalid(size(v).map(Flag::InitialHeap)),
        "MaxRAM" => or_invalid(size(v).map(Flag::MaxRam)),
        "MaxRAMPercentage" => or_invalid(percentage(v).map(Flag::MaxRamPercentage)),
        "MinRAMPercentage" => or_invalid(percentage(v).map(Flag::MinRamPercentage)),
        "MaxRAMFraction" => or_invalid(
            saturating_digits(v)
                .filter(|f| *f > 0)
                .map(Flag::MaxRamFraction),
        ),
        "MinRAMFraction" => or_invalid(
            saturating_digits(v)
                .filter(|f| *f > 0)
                .map(Flag::MinRamFraction),
        ),
        "Flags" | "VMOptionsFile" => Some(Flag::Opaque),
        _ => None,
    }
}

/// An option and the variable it came from (`None`: the command line).
struct Opt {
    text: String,
    var: Option<EnvVar>,
    /// A variable set but not readable (a pod spec's reference, an environ procfs refused).
    unread: bool,
}

/// The options in the order HotSpot applies them.
fn options(p: &Process, source: RuntimeSource) -> Vec<Opt> {
    let env = |var: EnvVar| -> Vec<Opt> {
        match p.env.get(var) {
            None => vec![],
            Some(None) => vec![Opt {
                text: format!("{} not readable", var.name()),
                var: None,
                unread: true,
            }],
            Some(Some(v)) => split_options(v)
                .into_iter()
                .map(|text| Opt {
                    text,
                    var: Some(var),
                    unread: false,
                })
                .collect(),
        }
    };
    // JDK_JAVA_OPTIONS is the `java` launcher's; a pod spec's unknown entrypoint is presumed
    // to end in it.
    let launcher = p
        .argv
        .first()
        .is_none_or(|a| a.rsplit('/').next() == Some("java"));
    let mut opts = env(EnvVar::JavaToolOptions);
    if launcher {
        opts.extend(env(EnvVar::JdkJavaOptions));
    }
    if source == RuntimeSource::PodSpec {
        opts.extend(env(EnvVar::JavaOpts));
    }
    opts.extend(launcher_options(&p.argv).map(|a| Opt {
        text: a.to_string(),
        var: None,
        unread: false,
    }));
    opts.extend(env(EnvVar::JavaOptions));
    opts
}

/// The last option of each kind, as HotSpot keeps them.
#[derive(Default)]
struct Flags<'a> {
    max_heap: Option<(u64, &'a Opt)>,
    /// An opaque option came after the last -Xmx (or there is no -Xmx): it may set the heap.
    opaque: Option<&'a Opt>,
    initial: Option<(u64, &'a Opt)>,
    max_pct: Option<(f64, &'a Opt)>,
    min_pct: Option<f64>,
    max_fraction: Option<(u64, &'a Opt)>,
    min_fraction: Option<u64>,
    max_ram: Option<(u64, &'a Opt)>,
    no_container_support: bool,
    invalid: Option<&'a Opt>,
}

impl<'a> Flags<'a> {
    fn of(opts: &'a [Opt]) -> Self {
        let mut f = Flags::default();
        for o in opts {
            let fl = if o.unread {
                Some(Flag::Opaque)
            } else {
                flag(&o.text)
            };
            match fl {
                Some(Flag::MaxHeap(b)) => {
                    f.max_heap = Some((b, o));
                    f.opaque = None;
                }
                Some(Flag::InitialHeap(b)) => f.initial = Some((b, o)),
                Some(Flag::MaxRamPercentage(p)) => f.max_pct = Some((p, o)),
                Some(Flag::MinRamPercentage(p)) => f.min_pct = Some(p),
                Some(Flag::MaxRamFraction(n)) => f.max_fraction = Some((n, o)),
                Some(Flag::MinRamFraction(n)) => f.min_fraction = Some(n),
                Some(Flag::MaxRam(b)) => f.max_ram = Some((b, o)),
                Some(Flag::ContainerSupport(on)) => f.no_container_support = !on,
                Some(Flag::Opaque) => f.opaque = Some(o),
                Some(Flag::Invalid) => f.invalid = Some(o),
                None => {}
            }
        }
        f
    }
}

fn align_up(b: u64) -> u64 {
    b.div_ceil(HEAP_ALIGNMENT).saturating_mul(HEAP_ALIGNMENT)
}

/// The knob an explicit or percentage setting is: its name and its value as written.
fn knob(o: &Opt) -> Knob {
    let (name, flag): (&'static str, &'static str) = match o.text.as_bytes() {
        [b'-', b'X', b'm', b'x', ..] => ("Xmx", "-Xmx"),
        [b'-', b'X', b'm', b's', ..] => ("Xms", "-Xms"),
        _ if o.text.starts_with("-XX:MaxHeapSize=") => ("MaxHeapSize", "-XX:MaxHeapSize"),
        _ if o.text.starts_with("-XX:MaxRAMFraction=") => ("MaxRAMFraction", "-XX:MaxRAMFraction"),
        _ => ("MaxRAMPercentage", "-XX:MaxRAMPercentage"),
    };
    let value = o
        .text
        .strip_prefix(flag)
        .map(|v| v.trim_start_matches('='))
        .unwrap_or_default();
    Knob {
        name,
        flag,
        value: value.to_string(),
    }
}

/// An explicit -Xmx for a heap the JVM sized itself: the way to bound it.
fn xmx_below(heap: u64) -> Knob {
    Knob {
        name: "Xmx",
        flag: "-Xmx",
        value: format!("{}m", heap / MIB),
    }
}

/// The JVM's max heap (see the module doc).
pub(super) fn ceiling(p: &Process, limit: Option<u64>, source: RuntimeSource) -> Found {
    let opts = options(p, source);
    let f = Flags::of(&opts);
    let set = |bytes: u64, setting: String, knob: Knob| Found {
        bytes: Some(align_up(bytes)),
        setting,
        ceiling: Ceiling::Set(knob),
    };
    if let Some(o) = f.invalid {
        return Found::unknown(format!("unreadable ({})", with_origin(&o.text, o.var)));
    }
    if let (Some((bytes, o)), None) = (f.max_heap, f.opaque) {
        return set(bytes, with_origin(&o.text, o.var), knob(o));
    }
    if let Some(o) = f.opaque {
        return Found::unknown(format!(
            "unknown (options this cannot read: {})",
            with_origin(&o.text, o.var)
        ));
    }
    let overridden = f.max_pct.is_some()
        || f.min_pct.is_some()
        || f.max_fraction.is_some()
        || f.min_fraction.is_some()
        || f.max_ram.is_some();
    let phys = match (f.max_ram, limit) {
        (Some((ram, _)), _) => ram,
        _ if f.no_container_support => {
            return Found::unknown("-XX:-UseContainerSupport (sized from the node's memory)")
        }
        (None, None) => return Found::unknown("default (of a limit not known)"),
        (None, Some(l)) if overridden => l,
        (None, Some(l)) => l.min(DEFAULT_MAX_RAM),
    };
    // A percentage beats a fraction whatever their order, as in HotSpot.
    let max_pct = f
        .max_pct
        .map(|(p, _)| p)
        .or(f.max_fraction.map(|(n, _)| 100.0 / n as f64))
        .unwrap_or(25.0);
    let min_pct = f
        .min_pct
        .or(f.min_fraction.map(|n| 100.0 / n as f64))
        .unwrap_or(50.0);
    let share = |pct: f64| (phys as f64 * pct / 100.0) as u64;
    let pct_opt = f.max_pct.map(|(_, o)| o).or(f.max_fraction.map(|(_, o)| o));
    let named = |what: &str| match pct_opt {
        Some(o) => format!("{what}; {} does not apply", with_origin(&o.text, o.var)),
        None => what.to_string(),
    };
    let (heap, setting, knob_now) = if share(min_pct) < DEFAULT_MAX_HEAP {
        let heap = share(min_pct);
        (
            heap,
            format!(
                "default ({})",
                named(&format!("{min_pct}% of a limit this small"))
            ),
            xmx_below(heap),
        )
    } else if share(max_pct) < DEFAULT_MAX_HEAP {
        (
            DEFAULT_MAX_HEAP,
            format!("default ({})", named("the JVM's minimum default heap")),
            xmx_below(DEFAULT_MAX_HEAP),
        )
    } else {
        let ram = f.max_ram.map(|(_, o)| with_origin(&o.text, o.var));
        let setting = match (pct_opt, ram) {
            (Some(o), None) => with_origin(&o.text, o.var),
            (Some(o), Some(r)) => format!("{} {r}", with_origin(&o.text, o.var)),
            (None, Some(r)) => format!("{r} (25% of it)"),
            (None, None) => "default (25% of the limit)".into(),
        };
        let k = pct_opt.map(knob).unwrap_or(Knob {
            name: "MaxRAMPercentage",
            flag: "-XX:MaxRAMPercentage",
            value: "25".into(),
        });
        (share(max_pct), setting, k)
    };
    match f.initial {
        Some((initial, o)) if initial > heap => set(
            initial,
            format!(
                "{} (the initial heap raises the max)",
                with_origin(&o.text, o.var)
            ),
            knob(o),
        ),
        _ => set(heap, setting, knob_now),
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::process;
    use super::*;

    /// The max heap and setting of `java <argv>` under `limit` MiB, from procfs.
    fn heap(limit_mib: u64, argv: &[&str], env: &[(&str, &str)]) -> (Option<u64>, String) {
        let mut full = vec!["java"];
        full.extend(argv);
        let f = ceiling(
            &process(&full, env),
            Some(limit_mib * MIB),
            RuntimeSource::Procfs,
        );
        (f.bytes, f.setting)
    }

    fn mib(limit_mib: u64, argv: &[&str]) -> u64 {
        heap(limit_mib, argv, &[]).0.expect("a known heap") / MIB
    }

    /// MaxHeapSize as `java -XX:+PrintFlagsFinal -version` printed it in memory cgroups with
    /// these limits (OpenJDK 17.0.15, Serial GC below 1792 MiB, G1 above).
    #[test]
    fn the_jvms_own_numbers() {
        for (limit, argv, want) in [
            (128, &[][..], 64),
            (128, &["-XX:MaxRAMPercentage=90"][..], 64),
            (128, &["-XX:MaxRAM=1g"][..], 256),
            (200, &[][..], 100),
            (200, &["-XX:MaxRAMPercentage=90"][..], 100),
            (256, &[][..], 126),
            (256, &["-XX:MaxRAMPercentage=90"][..], 232),
            (256, &["-XX:MaxRAMPercentage=90.5"][..], 232),
            (256, &["-Xmx100m", "-XX:MaxRAMPercentage=50"][..], 100),
            (512, &[][..], 128),
            (512, &["-XX:MaxRAMPercentage=90"][..], 462),
            (512, &["-XX:MaxRAMPercentage=90.5"][..], 464),
            (1024, &[][..], 256),
            (1024, &["-XX:MaxRAMPercentage=90"][..], 922),
            (1024, &["-XX:MaxRAMPercentage=90.5"][..], 928),
            (4096, &[][..], 1024),
            (4096, &["-XX:MaxRAMPercentage=90"][..], 3688),
            (4096, &["-XX:MaxRAMPercentage=90.5"][..], 3708),
            (24105, &["-Xmx101m"][..], 102),
            (24105, &["-Xmx0x6400000"][..], 100),
            (24105, &["-XX:MaxRAM=100000000"][..], 48),
            (24105, &["-XX:MaxRAMPercentage=0"][..], 126),
            (24105, &["-Xmx1000001k"][..], 978),
            (24105, &["-XX:MaxHeapSize=200M"][..], 200),
        ] {
            assert_eq!(mib(limit, argv), want, "{limit} MiB {argv:?}");
        }
    }

    #[test]
    fn xmx_beats_percentages_and_the_last_flag_wins() {
        assert_eq!(mib(1024, &["-XX:MaxRAMPercentage=90", "-Xmx300m"]), 300);
        assert_eq!(mib(1024, &["-Xmx300m", "-XX:MaxRAMPercentage=90"]), 300);
        assert_eq!(mib(1024, &["-Xmx100M", "-XX:MaxHeapSize=200m"]), 200);
        assert_eq!(mib(1024, &["-Xmx200m", "-Xmx100m"]), 100);
        assert_eq!(
            mib(
                1024,
                &["-XX:MaxRAMPercentage=10", "-XX:MaxRAMPercentage=50"]
            ),
            512
        );
        assert_eq!(mib(1024, &["-XX:MaxRAMFraction=2"]), 512);
        assert_eq!(
            mib(1024, &["-XX:MaxRAMPercentage=40", "-XX:MaxRAMFraction=2"]),
            410,
            "the percentage beats the fraction"
        );
        assert_eq!(
            mib(1024, &["-Xms600m"]),
            600,
            "the initial heap raises the max"
        );
        assert_eq!(mib(1024, &["-Xms100m"]), 256);
    }

    #[test]
    fn variables_in_hotspots_order() {
        let tool = ("JAVA_TOOL_OPTIONS", "-Xmx100m");
        let jdk = ("JDK_JAVA_OPTIONS", "-Xmx300m");
        let late = ("_JAVA_OPTIONS", "-Xmx400m");
        assert_eq!(
            heap(1024, &["-Xmx200m"], &[tool]).0,
            Some(200 * MIB),
            "the command line beats JAVA_TOOL_OPTIONS"
        );
        assert_eq!(
            heap(1024, &["-Xmx200m"], &[jdk]).0,
            Some(200 * MIB),
            "and JDK_JAVA_OPTIONS"
        );
        assert_eq!(
            heap(1024, &["-Xmx200m"], &[late]).0,
            Some(400 * MIB),
            "_JAVA_OPTIONS beats it"
        );
        assert_eq!(
            heap(1024, &[], &[tool, jdk]),
            (Some(300 * MIB), "-Xmx300m (JDK_JAVA_OPTIONS)".into())
        );
        assert_eq!(
            heap(
                1024,
                &["-XX:MaxRAMPercentage=10"],
                &[("JAVA_TOOL_OPTIONS", "-Xmx100m -XX:MaxRAMPercentage=90")]
            ),
            (Some(100 * MIB), "-Xmx100m (JAVA_TOOL_OPTIONS)".into())
        );
        assert_eq!(
            heap(1024, &[], &[("JAVA_TOOL_OPTIONS", "'-Xmx100m'")]).0,
            Some(100 * MIB),
            "quoted"
        );
        // JDK_JAVA_OPTIONS is the `java` launcher's, and JAVA_OPTS no JVM's.
        let other = process(&["/opt/app/bin/launcher"], &[jdk]);
        assert_eq!(
            ceiling(&other, Some(1 << 30), RuntimeSource::Procfs).bytes,
            Some(256 * MIB)
        );
        assert_eq!(
            heap(1024, &[], &[("JAVA_OPTS", "-Xmx700m")]).0,
            Some(256 * MIB),
            "procfs: the JVM never read it"
        );
    }

    #[test]
    fn the_launcher_stops_at_the_main_class() {
        for argv in [
            &["-jar", "app.jar", "-Xmx100m"][..],
            &["Main", "-Xmx100m"][..],
            &["-m", "app/app.Main", "-Xmx100m"][..],
            &["--module=app/app.Main", "-Xmx100m"][..],
            &["Main.java", "-Xmx100m"][..],
        ] {
            assert_eq!(
                mib(1024, argv),
                256,
                "{argv:?}: the program's argument, not the JVM's"
            );
        }
        assert_eq!(
            mib(1024, &["-cp", "-Xmx1g", "-Xmx100m", "Main"]),
            100,
            "-cp takes the next argument"
        );
        assert_eq!(
            mib(
                1024,
                &[
                    "--add-opens",
                    "java.base/java.lang=ALL-UNNAMED",
                    "-Xmx100m",
                    "Main"
                ]
            ),
            100
        );
    }

    #[test]
    fn defaults_say_which_rule_sized_them() {
        assert_eq!(heap(1024, &[], &[]).1, "default (25% of the limit)");
        assert_eq!(heap(200, &[], &[]).1, "default (50% of a limit this small)");
        assert_eq!(
            heap(200, &["-XX:MaxRAMPercentage=90"], &[]).1,
            "default (50% of a limit this small; -XX:MaxRAMPercentage=90 does not apply)"
        );
        assert_eq!(
            heap(512, &["-XX:MaxRAMPercentage=10"], &[]).1,
            "default (the JVM's minimum default heap; -XX:MaxRAMPercentage=10 does not apply)"
        );
        assert_eq!(
            heap(128, &["-XX:MaxRAM=1g"], &[]).1,
            "-XX:MaxRAM=1g (25% of it)"
        );
        assert_eq!(
            heap(1024, &["-Xms600m"], &[]).1,
            "-Xms600m (the initial heap raises the max)"
        );
        let f = ceiling(
            &process(&["java", "-XX:MaxRAMPercentage=90", "Main"], &[]),
            Some(512 * MIB),
            RuntimeSource::Procfs,
        );
        assert_eq!(
            f.ceiling,
            Ceiling::Set(Knob {
                name: "MaxRAMPercentage",
                flag: "-XX:MaxRAMPercentage",
                value: "90".into()
            })
        );
        let f = ceiling(
            &process(&["java", "-Xmx300m", "Main"], &[]),
            None,
            RuntimeSource::Procfs,
        );
        assert_eq!(
            f.ceiling,
            Ceiling::Set(Knob {
                name: "Xmx",
                flag: "-Xmx",
                value: "300m".into()
            })
        );
        let f = ceiling(
            &process(&["java", "Main"], &[]),
            Some(200 * MIB),
            RuntimeSource::Procfs,
        );
        assert_eq!(
            f.ceiling,
            Ceiling::Set(Knob {
                name: "Xmx",
                flag: "-Xmx",
                value: "100m".into()
            })
        );
    }

    #[test]
    fn what_cannot_be_read_is_unknown() {
        let unknown = |argv: &[&str], env: &[(&str, &str)], limit: Option<u64>| {
            let mut full = vec!["java"];
            full.extend(argv);
            let f = ceiling(&process(&full, env), limit, RuntimeSource::Procfs);
            assert_eq!(
                (f.bytes, &f.ceiling),
                (None, &Ceiling::Unknown),
                "{argv:?} {env:?}: {}",
                f.setting
            );
            f.setting
        };
        assert_eq!(
            unknown(&["Main"], &[], None),
            "default (of a limit not known)"
        );
        assert_eq!(
            unknown(&["-XX:-UseContainerSupport", "Main"], &[], Some(MIB << 10)),
            "-XX:-UseContainerSupport (sized from the node's memory)"
        );
        assert_eq!(
            unknown(&["@/app/jvm.args", "Main"], &[], Some(MIB << 10)),
            "unknown (options this cannot read: @/app/jvm.args)"
        );
        unknown(
            &["-Xmx100m", "@/app/jvm.args", "Main"],
            &[],
            Some(MIB << 10),
        );
        unknown(
            &["-XX:VMOptionsFile=/app/vm.opts", "Main"],
            &[],
            Some(MIB << 10),
        );
        for bad in [
            "-Xmx",
            "-Xmx100mb",
            "-Xmx1.5g",
            "-Xmx-1g",
            "-XX:MaxRAMPercentage=101",
            "-XX:MaxRAMPercentage=.5",
            "-XX:MaxRAMPercentage=5.",
            "-XX:MaxRAMPercentage=+5",
            "-XX:MaxRAMPercentage=1e1",
            "-XX:MaxRAMPercentage=NaN",
            "-XX:MaxRAMFraction=0",
            "-XX:MaxRAM=lots",
        ] {
            let s = unknown(&[bad, "Main"], &[], Some(MIB << 10));
            assert!(s.starts_with("unreadable ("), "{s}");
        }
        // An options file before -Xmx cannot undo it.
        assert_eq!(mib(1024, &["@/app/jvm.args", "-Xmx100m"]), 100);
        assert_eq!(mib(1024, &["-XX:-UseContainerSupport", "-Xmx100m"]), 100);
    }

    #[test]
    fn hostile_sizes_saturate() {
        assert_eq!(
            heap(1024, &["-Xmx99999999999999999999g"], &[]).0,
            Some(u64::MAX)
        );
        assert_eq!(heap(1024, &["-Xmx16777216t"], &[]).0, Some(u64::MAX));
        assert_eq!(
            heap(1024, &["-XX:MaxRAM=0xffffffffffffffffffff"], &[]).0,
            Some(1 << 62),
            "25% of all of it"
        );
        assert_eq!(size("0x"), None);
        assert_eq!(size("12kk"), None);
        assert_eq!(size("1T"), Some(1 << 40));
    }

    #[test]
    fn java_opts_counts_from_a_pod_spec_and_says_so() {
        let p = process(&["java"], &[("JAVA_OPTS", "-Xmx700m")]);
        let f = ceiling(&p, Some(1 << 30), RuntimeSource::PodSpec);
        assert_eq!(f.bytes, Some(700 * MIB));
        assert_eq!(
            f.setting,
            "-Xmx700m (JAVA_OPTS, which start scripts pass to java by convention)"
        );
        // Set from a reference: unseen options, so unknown.
        let mut p = process(&["java"], &[]);
        p.env.keep("JAVA_TOOL_OPTIONS", None);
        let f = ceiling(&p, Some(1 << 30), RuntimeSource::PodSpec);
        assert_eq!(
            (f.bytes, f.setting.as_str()),
            (
                None,
                "unknown (options this cannot read: JAVA_TOOL_OPTIONS not readable)"
            )
        );
    }
}
