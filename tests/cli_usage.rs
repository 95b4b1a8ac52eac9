//! Bad usage is refused with exit status 2 and a message saying what is accepted; none of
//! these reach a server.

use std::process::Command;

fn sweep(args: &[&str]) -> (i32, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_mpu-sweeper"))
        .arg("sweep")
        .args(args)
        .env("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
        .env("AWS_SECRET_ACCESS_KEY", "not-a-real-secret")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .expect("run mpu-sweeper");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

const BASE: [&str; 4] = ["--bucket", "b", "--endpoint", "http://127.0.0.1:9"];

fn with_base<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    BASE.iter().copied().chain(extra.iter().copied()).collect()
}

#[test]
fn bad_max_ages_are_usage_errors_that_show_the_syntax() {
    for bad in ["0s", "-1d", "7", "abc", "1.5h", ""] {
        let (status, stderr) = sweep(&with_base(&["--max-age", bad]));
        assert_eq!(status, 2, "--max-age {bad:?}: {stderr}");
        assert!(
            stderr.contains("for example 30s, 90m, 36h, 7d, 2w or 1d12h"),
            "{stderr}"
        );
    }
}

#[test]
fn out_of_range_numbers_and_unknown_choices_are_usage_errors() {
    for extra in [
        &["--concurrency", "0"][..],
        &["--concurrency", "257"],
        &["--page-size", "0"],
        &["--page-size", "1001"],
        &["--addressing-style", "sideways"],
        &["--output", "yaml"],
    ] {
        let mut args = with_base(&["--max-age", "7d"]);
        args.extend_from_slice(extra);
        let (status, stderr) = sweep(&args);
        assert_eq!(status, 2, "{extra:?}: {stderr}");
    }
}

#[test]
fn missing_required_flags_are_usage_errors() {
    let (status, stderr) = sweep(&["--max-age", "7d"]);
    assert_eq!(status, 2);
    assert!(stderr.contains("--bucket"), "{stderr}");
    let (status, stderr) = sweep(&["--bucket", "b"]);
    assert_eq!(status, 2);
    assert!(stderr.contains("--max-age"), "{stderr}");
}

#[test]
fn unusable_settings_are_usage_errors() {
    let (status, stderr) = sweep(&[
        "--bucket",
        "b",
        "--max-age",
        "7d",
        "--endpoint",
        "127.0.0.1:7480",
    ]);
    assert_eq!(status, 2, "{stderr}");
    assert!(stderr.contains("invalid endpoint"), "{stderr}");

    let (status, stderr) = sweep(&with_base(&[
        "--max-age",
        "7d",
        "--ca-bundle",
        "/nonexistent/ca.pem",
    ]));
    assert_eq!(status, 2, "{stderr}");
    assert!(
        stderr.contains("cannot read CA bundle /nonexistent/ca.pem"),
        "{stderr}"
    );
}
