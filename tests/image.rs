//! The container image from the real Dockerfile, checked as a node receives it. No registry is
//! reachable here, so `hack/image.sh build` builds the Dockerfile's `prebuilt` target with buildah:
//! the runtime stage on a distroless cc-debian12 equivalent it makes from Debian packages, around
//! this test build's binary (the debug build, which `cargo test` has built anyway; the builder
//! stage, a cold release build, runs only by hand here: `hack/image.sh build --from-source`).
//! The tests read the docker-archive it writes (the file `ctr images import` takes): its config
//! with skopeo, its files unpacked with umoci, and run the binary inside it with runc, as the
//! image's user, on a read-only root without capabilities, with only the image's files.

mod common;

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

use common::*;
use serde_json::{Value, json};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const INSIDE: &str = "/usr/local/bin/mpu-sweeper";
const TOOLS: [&str; 4] = ["buildah", "skopeo", "umoci", "runc"];

/// The image hack/image.sh built around this test build's binary, and its unpacked bundle.
struct Image {
    archive: PathBuf,
    reference: String,
    size: u64,
    gzip_size: u64,
    /// umoci's bundle: `config.json` (the runtime config the image's config makes) and `rootfs/`.
    bundle: PathBuf,
}

static IMAGE: OnceLock<Image> = OnceLock::new();

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            dir.join(tool)
                .metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}

/// The image, built (or reused: hack/image.sh caches by binary, Dockerfile and base) once per
/// test binary; `None` (skip) when the tools are absent and the bed is not required.
fn image() -> Option<&'static Image> {
    let missing: Vec<&str> = TOOLS.into_iter().filter(|t| !on_path(t)).collect();
    if !missing.is_empty() {
        return absent(
            &format!("container image tools ({})", missing.join(", ")),
            "run hack/image.sh deps",
        );
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return absent(
            "root (buildah, umoci and runc run as root here)",
            "run the tests as root",
        );
    }
    Some(IMAGE.get_or_init(build_image))
}

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn succeed(program: &str, args: &[&str]) -> String {
    let output = run(program, args);
    assert!(
        output.status.success(),
        "{program} {args:?}: {}{}",
        text(&output.stdout),
        text(&output.stderr)
    );
    text(&output.stdout)
}

fn build_image() -> Image {
    let script = format!("{ROOT}/hack/image.sh");
    let out = succeed(
        &script,
        &["build", "--binary", env!("CARGO_BIN_EXE_mpu-sweeper")],
    );
    let fields: BTreeMap<&str, &str> = out.lines().filter_map(|l| l.split_once('=')).collect();
    let field = |key: &str| -> &str {
        fields
            .get(key)
            .unwrap_or_else(|| panic!("hack/image.sh printed no {key}=: {out}"))
    };
    let archive = PathBuf::from(field("archive"));
    let reference = field("ref").to_owned();
    let size = field("size").parse().expect("size=BYTES");
    let gzip_size = field("gzip_size").parse().expect("gzip_size=BYTES");

    // Unpacked once per image: the config digest names it (it changes with every binary).
    let manifest: Value = serde_json::from_str(&succeed(
        "tar",
        &["-xOf", archive.to_str().unwrap(), "manifest.json"],
    ))
    .expect("manifest.json");
    let config = manifest[0]["Config"].as_str().expect("Config").to_owned();
    let digest = config.trim_end_matches(".json");
    let unpacked = Path::new(env!("CARGO_TARGET_TMPDIR")).join("image");
    let dir = unpacked.join(digest);
    if !dir.join("bundle/config.json").exists() {
        std::fs::create_dir_all(&unpacked).unwrap();
        // Older images' bundles go; this one is unpacked beside, then moved into place.
        for old in std::fs::read_dir(&unpacked).unwrap() {
            std::fs::remove_dir_all(old.unwrap().path()).ok();
        }
        let part = unpacked.join(format!("{digest}.part-{}", std::process::id()));
        std::fs::create_dir_all(&part).unwrap();
        let layout = format!("{}:mpu-sweeper", part.join("oci").display());
        succeed(
            "skopeo",
            &[
                "copy",
                "--quiet",
                &format!("docker-archive:{}", archive.display()),
                &format!("oci:{layout}"),
            ],
        );
        succeed(
            "umoci",
            &[
                "unpack",
                "--image",
                &layout,
                part.join("bundle").to_str().unwrap(),
            ],
        );
        std::fs::remove_dir_all(part.join("oci")).unwrap();
        std::fs::rename(&part, &dir).unwrap();
    }
    println!(
        "image {reference}: {size} bytes ({:.1} MB) uncompressed, {gzip_size} bytes ({:.1} MB) gzipped; {}",
        size as f64 / 1e6,
        gzip_size as f64 / 1e6,
        archive.display()
    );
    Image {
        archive,
        reference,
        size,
        gzip_size,
        bundle: dir.join("bundle"),
    }
}

/// How a process runs in the image besides its arguments.
#[derive(Default)]
struct Run<'a> {
    env: &'a [(&'a str, &'a str)],
    /// Share the host's network namespace (to reach the test bed on 127.0.0.1).
    host_network: bool,
    /// A host directory mounted read-only on /tmp (which the image has).
    tmp: Option<&'a Path>,
}

/// Runs `args` in the image with runc, with the runtime config umoci derived from the image's
/// config (its user, working directory, environment), hardened as the chart's pod is: read-only
/// root file system, no capabilities, no new privileges.
fn run_in_image(image: &Image, args: &[&str], how: Run) -> Output {
    static RUNS: AtomicU32 = AtomicU32::new(0);
    let mut config: Value =
        serde_json::from_slice(&std::fs::read(image.bundle.join("config.json")).unwrap()).unwrap();
    let process = &mut config["process"];
    process["terminal"] = json!(false);
    process["args"] = json!(args);
    for (name, value) in how.env {
        process["env"]
            .as_array_mut()
            .unwrap()
            .push(json!(format!("{name}={value}")));
    }
    process["noNewPrivileges"] = json!(true);
    process["capabilities"] = json!({
        "bounding": [], "effective": [], "inheritable": [], "permitted": [], "ambient": []
    });
    config["root"] = json!({"path": image.bundle.join("rootfs"), "readonly": true});
    if how.host_network {
        config["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .retain(|ns| ns["type"] != "network");
    }
    if let Some(tmp) = how.tmp {
        config["mounts"].as_array_mut().unwrap().push(json!({
            "destination": "/tmp", "type": "bind", "source": tmp, "options": ["rbind", "ro"]
        }));
    }

    let id = format!(
        "mpu-sweeper-image-test-{}-{}",
        std::process::id(),
        RUNS.fetch_add(1, Ordering::Relaxed)
    );
    let dir = std::env::temp_dir().join(&id);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_vec(&config).unwrap(),
    )
    .unwrap();
    let state = dir.join("state");
    let output = run(
        "runc",
        &[
            "--root",
            state.to_str().unwrap(),
            "run",
            "--bundle",
            dir.to_str().unwrap(),
            &id,
        ],
    );
    std::fs::remove_dir_all(&dir).ok();
    output
}

#[test]
fn the_image_runs_the_controller_as_nonroot() {
    let Some(image) = image() else { return };
    let inspected = succeed(
        "skopeo",
        &[
            "inspect",
            "--config",
            &format!("docker-archive:{}", image.archive.display()),
        ],
    );
    let config: Value = serde_json::from_str(&inspected).unwrap();
    let config = &config["config"];
    assert_eq!(config["User"], "65532:65532", "{config}");
    // The chart and deploy/ pass the controller's flags only.
    assert_eq!(
        config["Entrypoint"],
        json!([INSIDE, "controller"]),
        "{config}"
    );
    assert!(config["Cmd"].is_null(), "{config}");
    assert!(config["ExposedPorts"]["8080/tcp"].is_object(), "{config}");
    assert_eq!(config["WorkingDir"], "/home/nonroot");

    // What the runtime makes of it: the same user, numerically (no /etc/passwd lookup needed).
    let runtime: Value =
        serde_json::from_slice(&std::fs::read(image.bundle.join("config.json")).unwrap()).unwrap();
    assert_eq!(
        runtime["process"]["user"],
        json!({"uid": 65532, "gid": 65532})
    );
    assert_eq!(runtime["process"]["args"], json!([INSIDE, "controller"]));

    // `ctr -n k8s.io images import` names the image after the archive's tag.
    let manifest: Value = serde_json::from_str(&succeed(
        "tar",
        &["-xOf", image.archive.to_str().unwrap(), "manifest.json"],
    ))
    .unwrap();
    assert!(
        manifest[0]["RepoTags"]
            .as_array()
            .unwrap()
            .contains(&json!(image.reference)),
        "{manifest}"
    );
    assert!(image.size > 0 && image.gzip_size > 0 && image.gzip_size < image.size);
}

/// Walks `dir` (without following symbolic links), calling `visit` with each path below it.
fn walk(dir: &Path, visit: &mut dyn FnMut(&Path, &std::fs::Metadata)) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        visit(&path, &meta);
        if meta.is_dir() {
            walk(&path, visit);
        }
    }
}

#[test]
fn the_image_has_no_shell_and_no_package_manager() {
    let Some(image) = image() else { return };
    let rootfs = image.bundle.join("rootfs");
    const FORBIDDEN: [&str; 21] = [
        "sh", "bash", "dash", "ash", "zsh", "ksh", "mksh", "csh", "tcsh", "fish", "busybox",
        "toybox", "apt", "apt-get", "dpkg", "dpkg-deb", "rpm", "apk", "yum", "dnf", "microdnf",
    ];
    let mut forbidden = Vec::new();
    let mut programs = Vec::new();
    let mut scripts = Vec::new();
    walk(&rootfs, &mut |path, meta| {
        let name = path.file_name().unwrap().to_str().unwrap();
        let inside = Path::new("/").join(path.strip_prefix(&rootfs).unwrap());
        if !meta.is_dir() && FORBIDDEN.contains(&name) {
            forbidden.push(inside.clone());
        }
        if meta.is_file() && meta.permissions().mode() & 0o111 != 0 {
            let mut head = Vec::new();
            std::fs::File::open(path)
                .unwrap()
                .take(128)
                .read_to_end(&mut head)
                .unwrap();
            if head.starts_with(b"\x7fELF") && !name.contains(".so") {
                programs.push(inside);
            } else if let Some(line) = head.strip_prefix(b"#!") {
                let interpreter = text(line).split_whitespace().next().unwrap().to_owned();
                scripts.push((inside, interpreter));
            }
        }
    });
    assert_eq!(
        forbidden,
        Vec::<PathBuf>::new(),
        "shells or package managers"
    );
    assert!(
        std::fs::symlink_metadata(rootfs.join("bin/sh")).is_err(),
        "/bin/sh"
    );
    // The only program is mpu-sweeper (the rest are shared libraries and the dynamic loader).
    assert_eq!(programs, vec![PathBuf::from(INSIDE)]);
    // base-files ships a script or two (as distroless has them); nothing could run them.
    for (script, interpreter) in &scripts {
        assert!(
            std::fs::symlink_metadata(rootfs.join(interpreter.trim_start_matches('/'))).is_err(),
            "{} runs with {interpreter}, which the image has",
            script.display()
        );
    }
    // And the runtime agrees: there is no shell to start.
    let shell = run_in_image(image, &["/bin/sh", "-c", "true"], Run::default());
    assert!(!shell.status.success(), "/bin/sh ran in the image");
}

#[test]
fn mpu_sweeper_runs_in_the_image_with_its_libraries_only() {
    let Some(image) = image() else { return };
    let version = run_in_image(image, &[INSIDE, "--version"], Run::default());
    assert!(version.status.success(), "{}", text(&version.stderr));
    assert_eq!(
        text(&version.stdout),
        format!("mpu-sweeper {}\n", env!("CARGO_PKG_VERSION"))
    );

    // Every library the binary needs is in the image, found by the image's own loader.
    let listed = run_in_image(
        image,
        &["/lib64/ld-linux-x86-64.so.2", "--list", INSIDE],
        Run::default(),
    );
    let libraries = text(&listed.stdout);
    assert!(listed.status.success(), "{}", text(&listed.stderr));
    assert!(!libraries.contains("not found"), "{libraries}");
    assert!(libraries.contains("libc.so.6"), "{libraries}");

    let crd = run_in_image(image, &[INSIDE, "crd"], Run::default());
    assert!(crd.status.success(), "{}", text(&crd.stderr));
    assert_eq!(text(&crd.stdout), mpu_sweeper::api::crd_yaml());
}

/// A real sweep from inside the image, over TLS to the bed's SeaweedFS: rustls, the AWS SDK and
/// the CA handling work with the image's files, as its user, on a read-only root.
#[test]
fn the_image_sweeps_a_bucket_over_tls() {
    let Some(image) = image() else { return };
    let Some(servers) = bed() else { return };
    let seaweed = servers
        .into_iter()
        .find(|s| s.kind == ServerKind::SeaweedFs)
        .unwrap();
    let https = std::env::var("MPU_TEST_SEAWEEDFS_HTTPS_ENDPOINT").unwrap();
    let ca = std::env::var("MPU_TEST_SEAWEEDFS_CA_BUNDLE").unwrap();
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(&ca, tmp.path().join("ca.crt")).unwrap();
    std::fs::set_permissions(
        tmp.path().join("ca.crt"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (s3, bucket) = runtime.block_on(async {
        let s3 = seaweed.client().await;
        let bucket = create_bucket(&s3, "image").await;
        create_uploads(&s3, &bucket, &keys("old/", 3)).await;
        (s3, bucket)
    });
    std::thread::sleep(AGE_WAIT);
    let sweep = run_in_image(
        image,
        &[
            INSIDE,
            "sweep",
            "--bucket",
            &bucket,
            "--max-age",
            MAX_AGE,
            "--endpoint",
            &https,
            "--addressing-style",
            "path",
            "--ca-bundle",
            "/tmp/ca.crt",
            "--output",
            "json",
            "--quiet",
        ],
        Run {
            env: &[
                ("AWS_ACCESS_KEY_ID", &seaweed.access_key),
                ("AWS_SECRET_ACCESS_KEY", &seaweed.secret_key),
                ("AWS_EC2_METADATA_DISABLED", "true"),
            ],
            host_network: true,
            tmp: Some(tmp.path()),
        },
    );
    assert!(
        sweep.status.success(),
        "{}{}",
        text(&sweep.stdout),
        text(&sweep.stderr)
    );
    let summary: Value = serde_json::from_slice(&sweep.stdout).unwrap();
    assert_eq!(summary["bucket"], bucket);
    assert_eq!(summary["aborted"].as_u64(), Some(3), "{summary}");
    let remaining = runtime.block_on(remaining_uploads(&s3, &bucket));
    assert_eq!(remaining, vec![]);
}
