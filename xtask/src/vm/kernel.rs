//! Guest kernels: Debian's `linux-image-*-amd64` packages, resolved through the
//! `linux-image-amd64` metapackage in a PRIVATE apt setup under the cache dir (own
//! sources.list, lists, package cache; the host's apt configuration is neither used for this nor
//! modified), downloaded with `apt-get download` and unpacked with `dpkg-deb -x`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context};

use super::Paths;

const SOURCES: &str = "\
# Written by `cargo xtask vm-test`: where guest kernels come from (private to vm-test).
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm-updates main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian-security bookworm-security main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm-backports main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bullseye main
";

/// The lists are refreshed at most this often (unless a series has no cached kernel).
const LISTS_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
const STAMP: &str = ".oomtrace-updated";
const COMPLETE: &str = ".oomtrace-complete";

#[derive(Debug, Clone)]
pub struct Kernel {
    /// "5.10", "6.1" or "6.12".
    pub series: String,
    /// Package actually unpacked, e.g. linux-image-6.1.0-57-amd64-unsigned.
    pub package: String,
    /// Debian version, e.g. 6.1.192-3.
    pub version: String,
    /// `uname -r`, e.g. 6.1.0-57-amd64.
    pub release: String,
    pub vmlinuz: PathBuf,
}

struct Apt {
    dir: PathBuf,
}

impl Apt {
    fn opts(&self) -> Vec<String> {
        let d = &self.dir;
        vec![
            format!(
                "-oDir::Etc::sourcelist={}",
                d.join("sources.list").display()
            ),
            "-oDir::Etc::sourceparts=-".into(),
            format!("-oDir::State::Lists={}", d.join("lists").display()),
            format!("-oDir::Cache={}", d.join("cache").display()),
            "-oDir::State::status=/dev/null".into(),
            "-oAPT::Get::List-Cleanup=0".into(),
            // Downloads go to our cache dir, which the _apt user may not be able to write.
            "-oAPT::Sandbox::User=root".into(),
        ]
    }

    fn cmd(&self, tool: &str) -> Command {
        let mut c = Command::new(tool);
        c.args(self.opts()).env("DEBIAN_FRONTEND", "noninteractive");
        c
    }

    fn setup(&self) -> anyhow::Result<()> {
        for sub in ["lists/partial", "cache/archives/partial"] {
            std::fs::create_dir_all(self.dir.join(sub))?;
        }
        let sources = self.dir.join("sources.list");
        if std::fs::read_to_string(&sources).ok().as_deref() != Some(SOURCES) {
            std::fs::write(&sources, SOURCES)?;
            let _ = std::fs::remove_file(self.dir.join("lists").join(STAMP));
        }
        Ok(())
    }

    fn lists_age(&self) -> Option<Duration> {
        let m = std::fs::metadata(self.dir.join("lists").join(STAMP)).ok()?;
        SystemTime::now().duration_since(m.modified().ok()?).ok()
    }

    fn update(&self) -> anyhow::Result<()> {
        eprintln!("vm-test: refreshing the private apt lists for guest kernels");
        let out = self
            .cmd("apt-get")
            .args(["update", "-qq"])
            .stdin(Stdio::null())
            .output()
            .context("running apt-get update")?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        // apt-get update exits 0 even when a source failed; it then prints W:/E: lines.
        if !out.status.success() || stderr.lines().any(|l| l.starts_with("E:")) {
            bail!("apt-get update (private lists) failed:\n{stderr}");
        }
        std::fs::write(self.dir.join("lists").join(STAMP), "")?;
        Ok(())
    }

    /// (kernel image package, metapackage version) for `series`, the newest the lists know.
    fn resolve(&self, series: &str) -> anyhow::Result<(String, String)> {
        let out = self
            .cmd("apt-cache")
            .args(["show", "linux-image-amd64"])
            .stderr(Stdio::null())
            .output()
            .context("running apt-cache show")?;
        let text = String::from_utf8_lossy(&out.stdout);
        let prefix = format!("linux-image-{series}.");
        let mut best: Option<(String, String)> = None;
        for stanza in text.split("\n\n") {
            let field = |name: &str| {
                stanza
                    .lines()
                    .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
            };
            let (Some(version), Some(depends)) = (field("Version:"), field("Depends:")) else {
                continue;
            };
            let Some(pkg) = depends
                .split([',', '|'])
                .map(|d| d.split_whitespace().next().unwrap_or(""))
                .find(|d| d.starts_with(&prefix) && d.ends_with("-amd64"))
            else {
                continue;
            };
            let newer = match &best {
                None => true,
                Some((_, v)) => version_gt(&version, v),
            };
            if newer {
                best = Some((pkg.to_string(), version));
            }
        }
        best.with_context(|| {
            format!("no linux-image-amd64 depending on a {series} kernel in the private apt lists")
        })
    }

    /// Download `pkg`'s .deb into `dir`, returning its path and version.
    fn download(&self, pkg: &str, dir: &Path) -> anyhow::Result<PathBuf> {
        std::fs::create_dir_all(dir)?;
        let out = self
            .cmd("apt-get")
            .args(["download", "-qq", pkg])
            .current_dir(dir)
            .stdin(Stdio::null())
            .output()
            .context("running apt-get download")?;
        if !out.status.success() {
            bail!(
                "apt-get download {pkg} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let prefix = format!("{pkg}_");
        for e in std::fs::read_dir(dir)? {
            let name = e?.file_name().to_string_lossy().into_owned();
            if name.starts_with(&prefix) && name.ends_with("_amd64.deb") {
                return Ok(dir.join(name));
            }
        }
        bail!("apt-get download {pkg} left no .deb in {}", dir.display())
    }
}

fn version_gt(a: &str, b: &str) -> bool {
    Command::new("dpkg")
        .args(["--compare-versions", a, "gt", b])
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// A cached, completely unpacked kernel.
fn cached(kdir: &Path, series: &str, release: &str) -> Option<Kernel> {
    let dir = kdir.join(release);
    let info = std::fs::read_to_string(dir.join(COMPLETE)).ok()?;
    let mut lines = info.lines();
    let package = lines.next()?.to_string();
    let version = lines.next()?.to_string();
    let vmlinuz = dir.join("boot").join(format!("vmlinuz-{release}"));
    vmlinuz.exists().then(|| Kernel {
        series: series.to_string(),
        package,
        version,
        release: release.to_string(),
        vmlinuz,
    })
}

/// Releases of `series` in the cache, newest first.
fn cached_releases(kdir: &Path, series: &str) -> Vec<String> {
    let prefix = format!("{series}.");
    let mut v: Vec<String> = std::fs::read_dir(kdir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&prefix) && kdir.join(n).join(COMPLETE).exists())
        .collect();
    v.sort_by(|a, b| {
        if version_gt(a, b) {
            std::cmp::Ordering::Less
        } else {
            std::cmp::Ordering::Greater
        }
    });
    v
}

fn unpack(
    deb: &Path,
    kdir: &Path,
    release: &str,
    package: &str,
    version: &str,
) -> anyhow::Result<()> {
    let tmp = kdir.join(format!("{release}.partial"));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    let st = Command::new("dpkg-deb")
        .arg("-x")
        .arg(deb)
        .arg(&tmp)
        .status()?;
    if !st.success() {
        bail!("dpkg-deb -x {} failed", deb.display());
    }
    if !tmp.join("boot").join(format!("vmlinuz-{release}")).exists() {
        bail!("{} has no boot/vmlinuz-{release}", deb.display());
    }
    // Debian packages leave modules.dep to their postinst; vng needs it to load 9p & co.
    let depmod = xtask::sys::which("depmod").context("depmod not found")?;
    let st = Command::new(depmod)
        .arg("-a")
        .arg("-b")
        .arg(&tmp)
        .arg(release)
        .status()?;
    if !st.success() {
        bail!("depmod for {release} failed");
    }
    std::fs::write(tmp.join(COMPLETE), format!("{package}\n{version}\n"))?;
    let dest = kdir.join(release);
    let _ = std::fs::remove_dir_all(&dest);
    std::fs::rename(&tmp, &dest)?;
    Ok(())
}

pub fn ensure(paths: &Paths, series: &[&str], keep: bool) -> anyhow::Result<Vec<Kernel>> {
    let apt = Apt {
        dir: paths.cache.join("apt"),
    };
    apt.setup()?;
    let kdir = paths.cache.join("kernels");
    std::fs::create_dir_all(&kdir)?;
    let downloads = paths.cache.join("downloads");

    // Refresh at most once a day (the stamp is missing when the cache is new or was wiped).
    let mut updated = false;
    if apt.lists_age().is_none_or(|age| age > LISTS_MAX_AGE) {
        let have_all = series.iter().all(|s| !cached_releases(&kdir, s).is_empty());
        match apt.update() {
            Ok(()) => updated = true,
            Err(e) if have_all => {
                eprintln!(
                    "vm-test: warning: {e:#}\nvm-test: going on with the lists/kernels cached"
                )
            }
            Err(e) => return Err(e),
        }
    }

    let mut kernels = Vec::new();
    for &s in series {
        let mut res = fetch(&apt, &kdir, &downloads, s, keep);
        if let (Err(e), false) = (&res, updated) {
            // Lists younger than a day can still point at a package the archive has dropped
            // since: refresh them and try once more.
            eprintln!("vm-test: {e:#}; refreshing the lists and retrying");
            match apt.update() {
                Ok(()) => res = fetch(&apt, &kdir, &downloads, s, keep),
                Err(e) => eprintln!("vm-test: warning: {e:#}"),
            }
            updated = true;
        }
        let k = match res {
            Ok(k) => k,
            Err(e) => {
                // Offline: fall back to the newest cached kernel of the series, if any.
                let Some(k) = cached_releases(&kdir, s)
                    .first()
                    .and_then(|r| cached(&kdir, s, r))
                else {
                    return Err(e);
                };
                eprintln!("vm-test: warning: {e:#}; using the cached {}", k.release);
                k
            }
        };
        kernels.push(k);
    }
    Ok(kernels)
}

/// Resolve the newest kernel of `series` and make sure it is unpacked in `kdir`.
fn fetch(apt: &Apt, kdir: &Path, downloads: &Path, s: &str, keep: bool) -> anyhow::Result<Kernel> {
    let (meta_pkg, version) = apt.resolve(s)?;
    let release = meta_pkg.trim_start_matches("linux-image-").to_string();
    if let Some(k) = cached(kdir, s, &release) {
        eprintln!("vm-test: kernel {s}: {} {} (cached)", k.package, k.version);
        return Ok(k);
    }
    let t = std::time::Instant::now();
    // The -unsigned package holds the very same kernel without the Secure Boot signature
    // machinery; fall back to the signed one where there is no -unsigned.
    let mut got = None;
    let mut errors = Vec::new();
    for pkg in [format!("{meta_pkg}-unsigned"), meta_pkg.clone()] {
        match apt.download(&pkg, downloads) {
            Ok(deb) => {
                got = Some((pkg, deb));
                break;
            }
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    let Some((pkg, deb)) = got else {
        bail!("could not download the {s} kernel:\n{}", errors.join("\n"));
    };
    // The image package's own version, from the .deb's name (equal to the metapackage's).
    let pkg_version = deb
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.split('_').nth(1))
        .map(|v| v.replace("%3a", ":"))
        .unwrap_or(version);
    unpack(&deb, kdir, &release, &pkg, &pkg_version)?;
    if !keep {
        let _ = std::fs::remove_file(&deb);
    }
    let k = cached(kdir, s, &release).context("kernel vanished after unpacking")?;
    eprintln!(
        "vm-test: kernel {s}: {} {} (downloaded and unpacked in {:.1}s)",
        k.package,
        k.version,
        t.elapsed().as_secs_f64()
    );
    if !keep {
        for old in cached_releases(kdir, s) {
            if old != release {
                eprintln!("vm-test: removing superseded kernel {old}");
                let _ = std::fs::remove_dir_all(kdir.join(old));
            }
        }
    }
    Ok(k)
}
